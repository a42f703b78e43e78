#!/usr/bin/env bash
# The GPU checks of a session that is lent a device, in one call (about 8 minutes on one H200), from the repo root:
#   device run: bash benchmarks/device_session.sh          (timeout_s 590; no install: metadino runs from src/)
#   here, a smoke run of the same commands:  DEVICE=cpu PY=.venv/bin/python SUITE_ARGS=--quick bash benchmarks/device_session.sh
# Writes $OUT/cuda_check.json, $OUT/gpu_suite.json and their logs (the device tool brings $OUT back) and prints both.
set -u
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}  # the device's python3 holds torch; here: PY=.venv/bin/python
OUT=${OUT:-/tmp/metadino_device}
mkdir -p "$OUT"
"$PY" -c "import sys, torch, metadino; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" || exit 1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout "${CHECK_S:-180}" "$PY" benchmarks/cuda_check.py --device "$DEVICE" >"$OUT/cuda_check.json" 2>"$OUT/cuda_check.log"
echo "cuda_check exit $?"
# shellcheck disable=SC2086  # SUITE_ARGS holds several arguments
timeout "${SUITE_S:-380}" "$PY" benchmarks/gpu_suite.py --device "$DEVICE" --steps 5 ${SUITE_ARGS:-} \
    >"$OUT/gpu_suite.json" 2>"$OUT/gpu_suite.log"
echo "gpu_suite exit $? (each configuration as it finished: $OUT/gpu_suite.log)"
cat "$OUT/cuda_check.json" "$OUT/gpu_suite.json"
