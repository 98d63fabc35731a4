"""``python -m lightning_viz``: the ``lightning-viz`` command."""

from lightning_viz.command import main

if __name__ == "__main__":
    main()
