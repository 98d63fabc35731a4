"""Trains 40 epochs with every callback drawing on every step; the kill test SIGKILLs it mid-write.

Training outruns drawing here (figures wait in temporary files while the render process is behind), so most
pictures are drawn by the fit-end flush, which the test interrupts; the length keeps the number of data files
that ``lightning-viz render`` then redraws small.

Usage: python -m tests.reliability.kill_worker <out_dir>
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
warnings.filterwarnings("ignore")

from lightning_viz import (  # noqa: E402
    ActivationMapCallback,
    CurvePlotCallback,
    ModelSummaryCallback,
    WeightHistogramCallback,
)
from tests.helpers import RandomImages, TinyCNN, make_trainer  # noqa: E402


def main(out: Path) -> None:
    viz = out / "viz"
    callbacks = [
        ModelSummaryCallback(output_dir=str(viz / "model_summary")),
        WeightHistogramCallback(every_n_steps=1, bins=32, output_dir=str(viz / "weight_histogram")),
        ActivationMapCallback(every_n_steps=1, sample_size=4, output_dir=str(viz / "activation_map")),
        CurvePlotCallback(every_n_steps=1, output_dir=str(viz / "curves")),
    ]
    trainer = make_trainer(out, callbacks, max_epochs=40, logger=False)
    print("training", flush=True)
    trainer.fit(TinyCNN(), RandomImages(n=32, batch_size=16))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
