"""One-line configuration errors: the callback, the argument, the value, the valid choices or closest names.

A callback's own checks raise ``ValueError("`every_n_steps` must be an integer >= 1; got -5")``. The base
class turns each into a :class:`VizConfigError` that starts with the callback's name, both in ``__init__``
(wrapped by :func:`named_init`) and in ``setup``. The ``lightning-viz`` command prints such an error as one
line and exits with status 2 instead of showing a traceback; in Python code it is an ordinary
``ValueError``.

jsonargparse catches the ``ValueError`` raised while it instantiates a callback and raises its own error
(a union of every way it tried, with a dump of the configuration). So each error is also recorded here when
it is raised, and the command looks it up with :func:`raised_since`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_raised: list[VizConfigError] = []


class VizConfigError(ValueError):
    """A lightning-viz callback cannot use an argument it was given; the message is one line that names the
    callback, the argument, the value and the valid choices or closest names."""


def named(owner: str, err: ValueError) -> VizConfigError:
    """``err`` as a :class:`VizConfigError` that starts with ``owner`` (a callback's class name), recorded."""
    if isinstance(err, VizConfigError):
        return err
    text = " ".join(str(err).split())  # one line, whatever the check wrote
    out = VizConfigError(text if text.startswith(owner) else f"{owner}: {text}")
    _raised.append(out)  # a handful per process at most: each ends a run or a test
    return out


def named_init(owner: str, init: F) -> F:
    """``init`` (a callback's ``__init__``) raising :class:`VizConfigError` where it raised ``ValueError``."""

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except VizConfigError:
            raise
        except ValueError as err:
            raise named(owner, err) from err

    return wrapper  # type: ignore[return-value]


def mark() -> int:
    """A position in the record, for :func:`raised_since`."""
    return len(_raised)


def raised_since(position: int, err: BaseException) -> VizConfigError | None:
    """The configuration error behind ``err``: ``err`` itself or one of its causes, else the first one
    recorded since ``position`` (jsonargparse's error does not chain ours), else None."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        if isinstance(e, VizConfigError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    recent = _raised[position:]
    return recent[0] if recent else None


# ---------------------------------------------------------------------- the checks the callbacks make
def check_int(name: str, value: Any, minimum: int = 1, *, optional: bool = False) -> None:
    """Raise ``ValueError`` naming the argument unless ``value`` is an int >= minimum (or None if optional)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or null" if optional else "")
        raise ValueError(f"`{name}` must be {allowed}; got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` naming the argument unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; got {value!r}")


def check_scheduled(every_n_steps: Any, every_n_epochs: Any) -> None:
    """Raise ``ValueError`` when neither ``every_n_steps`` nor ``every_n_epochs`` is set (nothing would run)."""
    if every_n_steps is None and every_n_epochs is None:
        raise ValueError(
            "at least one of `every_n_steps` and `every_n_epochs` must be set; got every_n_steps=None, "
            "every_n_epochs=None"
        )


def check_patterns(name: str, value: Any, default: str, example: str, *, empty: bool = False) -> None:
    """Raise ``ValueError`` naming the argument unless ``value`` is null or a list of glob patterns (a
    non-empty one unless ``empty``); ``default`` says what null means, ``example`` shows a list."""
    if value is None:
        return
    if isinstance(value, str) or (not value and not empty) or not all(isinstance(p, str) for p in value):
        kind = "a list" if empty else "a non-empty list"
        raise ValueError(
            f"`{name}` must be null ({default}) or {kind} of glob patterns such as {example}; got {value!r}"
        )


def check_names(name: str, value: Any, example: str = '["cat", "dog"]') -> list[str] | None:
    """``value`` (null or a list of strings, such as class names by index) as a list; else raise
    ``ValueError`` naming the argument."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
        raise ValueError(f"`{name}` must be a list of strings, e.g. {example}; got {value!r}")
    return list(value)
