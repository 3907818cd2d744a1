#!/usr/bin/env bash
# The GPU figures, as one prepared run for a lent GPU machine (the device tool's `run`, about
# 10 minutes): extraction against the bf16 roofline, then fractional-GPU trial packing.
#   bash bench/gpu_checks.sh            # logs to $OUT (the device tool's folder) or /tmp
# Wheels missing there travel in .whl/ (see the device tool's README) and are installed first.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:.:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
# Extraction: the Ray Data pipeline against a plain PyTorch loop, and the bf16 roofline share.
timeout 240 python3 bench/extract.py --frames 4096 --batch-size 256 --repeats 3 2>&1 \
  | tee "$out/extract.txt"
# Packing: four trials a GPU, ASHA against none, 3 seeds of a 60 s budget each.
timeout 420 python3 bench/search.py --gpus-per-trial 0.25 --budget 60 --repeats 3 \
  --num-cpus 16 2>&1 | tee "$out/search.txt"
