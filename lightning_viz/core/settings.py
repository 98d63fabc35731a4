"""The settings the suite reads from environment variables, checked with a one-line error that names them."""

from __future__ import annotations

import os

REDRAW_EVERY_S = 6.0  # a cumulative figure is redrawn at most this often (per key), and at fit end
REDRAW_ENV = "LIGHTNING_VIZ_REDRAW_S"


def env_float(name: str, default: float, upper: float | None = None) -> float:
    """The number in environment variable ``name`` (``default`` when unset or empty).

    Raises:
        ValueError: not a number from 0 to ``upper`` (names the variable and the value).
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and (upper is None or value <= upper)):
        allowed = f"a number from 0 to {upper:g}" if upper is not None else "a number of seconds >= 0"
        raise ValueError(f"environment variable {name} must be {allowed}; got {raw!r}")
    return value


def redraw_every_s() -> float:
    """Seconds between two drawings of one cumulative figure (``LIGHTNING_VIZ_REDRAW_S``, default 6).

    Raises:
        ValueError: the variable is not a number >= 0 (names the variable and the value).
    """
    return env_float(REDRAW_ENV, REDRAW_EVERY_S)
