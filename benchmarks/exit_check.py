"""Clean exits of distributed runs through the ``lightning-viz`` command:
``python -m benchmarks.exit_check [N] [STRATEGY_CONFIG]``.

Runs ``lightning-viz fit --config configs/quickstart.yaml --config configs/ddp.yaml`` (2 CPU processes,
gloo; ``configs/fsdp.yaml`` or another overlay when named) N times with the callbacks and N times without (``--trainer.callbacks=[] --viz_defaults=false``),
alternating, each for one epoch of 6 batches in a fresh temporary directory, and counts the runs that did not
exit cleanly: a non-zero exit status, or "terminate called" on stderr (a rank that aborted at exit). It
prints one line per run and the counts, and exits 1 when any run failed. Not part of ``make test`` (about 20
seconds a run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def arms(overlay: str = "ddp.yaml") -> dict[str, list[str]]:
    """The command's arguments with the callbacks and without, for the strategy config ``overlay``."""
    base = ["fit", "--config", str(REPO / "configs" / "quickstart.yaml")]
    base += ["--config", str(REPO / "configs" / overlay), "--trainer.max_epochs=1"]
    base += ["--trainer.limit_train_batches=6", "--trainer.limit_val_batches=2"]
    return {
        "with callbacks": base,
        "without callbacks": [*base, "--trainer.callbacks=[]", "--viz_defaults=false"],
    }


def one_run(args: list[str]) -> tuple[bool, str]:
    """Whether one run exited cleanly, and why not."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="lvexit-") as cwd:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "lightning_viz", *args],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
        except subprocess.TimeoutExpired:
            return False, "timed out after 600 s"
    if done.returncode != 0:
        return False, f"exit status {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
    if "terminate called" in done.stderr:
        return False, "exit status 0, but a rank aborted: 'terminate called' on stderr"
    return True, ""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 50
    runs = arms(*args[1:2])
    failed = {arm: 0 for arm in runs}
    for i in range(n):
        for arm, run_args in runs.items():
            ok, why = one_run(run_args)
            failed[arm] += not ok
            print(f"run {i + 1}/{n} {arm}: {'clean' if ok else 'FAILED, ' + why}", flush=True)
    for arm, count in failed.items():
        print(f"{arm}: {count} of {n} runs did not exit cleanly")
    return 1 if any(failed.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
