"""Pure rendering functions: plain data in, matplotlib Figure out; never pyplot state."""

from lightning_viz.render._figure import close_figure, new_figure, open_figure_count

__all__ = ["close_figure", "new_figure", "open_figure_count"]
