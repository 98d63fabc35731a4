#!/usr/bin/env bash
# `make gpu-check` on a bare GPU machine (no network, python3 with torch, Lightning and the rest preinstalled),
# in one call. From the repository root there:
#
#   bash benchmarks/gpu_device_run.sh
#
# The Python packages that machine lacks travel as wheels in .whl/ (torchinfo, wandb and what wandb needs;
# docs/performance.md#gpu-check says how to fetch them): they are installed into /tmp/site, ahead of the
# machine's own packages on PYTHONPATH. Then `make gpu-check PY=python3` runs (python3 -m benchmarks.gpu_check
# where there is no make), its output also written to $OUT/gpu_check.log, and benchmarks/RESULTS.md and
# benchmarks/results.json are copied to $OUT to bring back. Exits with the check's status.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 3
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl || { echo "gpu_device_run: installing the wheels of $WHEELS failed"; exit 3; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
python3 -c "import torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__)"
if command -v make >/dev/null; then
    make --no-print-directory gpu-check PY=python3
else
    python3 -m benchmarks.gpu_check
fi 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
cp benchmarks/RESULTS.md benchmarks/results.json "$OUT"/ 2>/dev/null
exit "$rc"
