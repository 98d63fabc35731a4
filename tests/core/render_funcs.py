"""Render functions the render process can import (module level, no torch), for tests/core/test_renderer.py."""

from __future__ import annotations

from typing import Any

from lightning_viz.render._figure import new_figure


def bars(data: dict[str, Any]) -> Any:
    fig = new_figure(3, 2)
    ax = fig.add_subplot()
    ax.bar(range(len(data["values"])), data["values"])
    ax.set_title(data.get("title", "bars"))
    return fig


def chatty(data: dict[str, Any]) -> Any:
    print("a render function that prints to stdout")  # must not corrupt the replies
    return bars(data)


def broken(data: dict[str, Any]) -> Any:
    raise ValueError(f"no picture for {data['values']!r}")
