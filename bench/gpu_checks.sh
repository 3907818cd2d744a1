#!/usr/bin/env bash
# The GPU figures, as one prepared run for a lent GPU machine (the device tool's `run`, under
# 10 minutes): extraction against the bf16 roofline, then fractional-GPU trial packing.
#   bash bench/gpu_checks.sh            # logs to $OUT (the device tool's folder) or /tmp
# Packages missing there travel in .whl/ (see the device tool's README): wheels, and
# site-packages archives (*.tar.xz) of wheels too large to travel whole (ray without its
# jars, rllib and serve), unpacked first. Each bench runs even if the one before it failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}"
if compgen -G ".whl/*" >/dev/null; then
  mkdir -p /tmp/site
  for archive in .whl/*.tar.xz; do tar xJf "$archive" -C /tmp/site; done
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import ray, torch; print('ray', ray.__version__, 'torch', torch.__version__)"
# Extraction: the Ray Data pipeline against a plain PyTorch loop, and the bf16 roofline share.
timeout 150 python3 bench/extract.py --frames 2048 --batch-size 256 --repeats 3 2>&1 \
  | tee "$out/extract.txt"
# Packing: four trials a GPU, 3 seeds of a 100 s ASHA search each (in the 30 s searches of
# 2026-12-04 most trials had not passed their start: docs/results.md#on-a-gpu).
timeout 380 python3 bench/search.py --gpus-per-trial 0.25 --budget 100 --repeats 3 \
  --corpus embedded --tasks va --arms tpe-asha --num-cpus 16 2>&1 | tee "$out/search.txt"
