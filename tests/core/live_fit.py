"""A fit whose every core trains, for ``test_live_pictures``: run as ``python -m tests.core.live_fit DIR``.

The process pins itself to one core and trains with one torch thread before anything starts, so the render
process (started in ``setup``) inherits the pinning: every core it may use is busy training, as on a machine
whose training uses all its cores. The four core callbacks at their default settings, a TensorBoard logger.
"""

from __future__ import annotations

import os
import sys
import warnings


def main(out: str, epochs: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from lightning_viz import (
        ActivationMapCallback,
        CurvePlotCallback,
        ModelSummaryCallback,
        WeightHistogramCallback,
    )
    from tests.helpers import RandomImages, TinyCNN, make_trainer

    callbacks = [
        ModelSummaryCallback(),
        WeightHistogramCallback(),
        ActivationMapCallback(),
        CurvePlotCallback(),
    ]
    trainer = make_trainer(out, callbacks, max_epochs=epochs)
    trainer.fit(TinyCNN(), RandomImages(n=2400, batch_size=16))  # 150 steps per epoch
    print(trainer.logger.log_dir)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
