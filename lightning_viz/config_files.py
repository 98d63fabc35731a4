"""The example configs that ship with lightning-viz, by name: ``lightning-viz configs``.

Usage::

    lightning-viz configs                        # list them, with the first line of each
    lightning-viz configs copy quickstart        # copy quickstart.yaml here, to edit
    lightning-viz configs copy loggers/mlflow my_mlflow.yaml
    lightning-viz fit --config quickstart        # run one by name (a path works as always)

In a clone they are the files under ``configs/``; an installed wheel carries the same files as
``lightning_viz/configs/``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from difflib import get_close_matches
from pathlib import Path

import lightning_viz


def config_dir() -> Path:
    """Where the shipped configs are: ``lightning_viz/configs`` in a wheel, ``configs/`` in a clone."""
    package = Path(lightning_viz.__file__).resolve().parent
    inside = package / "configs"
    return inside if inside.is_dir() else package.parent / "configs"


def names() -> list[str]:
    """Every shipped config, as the name ``--config`` takes: ``quickstart``, ``loggers/mlflow``, ..."""
    root = config_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def find(name: str) -> Path | None:
    """The shipped config called ``name`` (with or without ``.yaml``, or as ``configs/<name>``), or None."""
    stem = name.removesuffix(".yaml").removesuffix(".yml").removeprefix("configs/")
    path = config_dir() / f"{stem}.yaml"
    return path if stem in names() and path.is_file() else None


def resolve_config_args(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config NAME`` / ``-c NAME`` / ``--config=NAME`` that is not a file but names a
    shipped config replaced by that config's path."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in ("--config", "-c") and i + 1 < len(out):
            out[i + 1] = _resolved(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + _resolved(arg.split("=", 1)[1])
    return out


def _resolved(value: str) -> str:
    if Path(value).exists():
        return value
    found = find(value)
    return str(found) if found is not None else value


def _headline(path: Path) -> str:
    for line in path.read_text().splitlines():
        text = line.lstrip("#").strip()
        if text:
            text = text.removeprefix("lightning-viz").strip(" :")
            return text if len(text) <= 90 else text[:89].rsplit(" ", 1)[0] + " ..."
    return ""


def _fail(message: str) -> int:
    print(f"lightning-viz configs: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """``lightning-viz configs [copy NAME [DEST]]``: list the shipped configs, or copy one to edit."""
    parser = argparse.ArgumentParser(
        prog="lightning-viz configs",
        description="List the example configs that ship with lightning-viz, or copy one to edit. "
        "Run one by name with: lightning-viz fit --config NAME",
    )
    sub = parser.add_subparsers(dest="action")
    copy = sub.add_parser("copy", help="copy a shipped config (to ./NAME.yaml unless DEST is given)")
    copy.add_argument("name", help="a name from `lightning-viz configs`, e.g. quickstart or loggers/mlflow")
    copy.add_argument("dest", nargs="?", help="file or folder to copy to (default: the current folder)")
    args = parser.parse_args(argv)
    if args.action is None:
        width = max(map(len, names()), default=0)
        for name in names():
            print(f"{name:<{width}}  {_headline(config_dir() / f'{name}.yaml')}")
        print("\nrun one: lightning-viz fit --config NAME    copy one: lightning-viz configs copy NAME")
        return 0
    source = find(args.name)
    if source is None:
        close = get_close_matches(args.name, names(), n=3, cutoff=0.4)
        return _fail(f"no shipped config {args.name!r}; closest: {close or names()}")
    dest = Path(args.dest) if args.dest else Path(source.name)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists():
        return _fail(f"{dest} exists; give another DEST or remove it first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    print(f"lightning-viz: copied {args.name} to {dest}; run it with: lightning-viz fit --config {dest}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
