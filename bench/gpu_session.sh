#!/usr/bin/env bash
# One GPU session in one script (the device time is short): install, check the kernels on the card,
# then time everything side by side with its baseline and print the tables last.
#   bash bench/gpu_session.sh            # from the repo root, on a CUDA machine
# Needs ../shared/data copied into the repo's git-ignored .carry/shared/data when ../shared is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
export KOI_SHARED_DATA="${KOI_SHARED_DATA:-$(pwd)/.carry/shared/data}"
[ -d "$KOI_SHARED_DATA" ] || KOI_SHARED_DATA="$(pwd)/../shared/data"
export NCCL_NVLS_ENABLE=0
log=bench/results/gpu_session.log
mkdir -p bench/results
python3 -m pip install -q --no-deps -e packages/koi-tokenizer -e packages/koi-quant -e packages/koi-kernels \
  -e packages/koi-eval -e packages/koi-train 2>&1 | tail -2
python3 -m pip install -q tokenizers jsonschema safetensors matplotlib pytest hypothesis 2>&1 | tail -2 || true
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$log"
git rev-parse --short HEAD | tee -a "$log"
python3 -m pytest -q packages/koi-kernels/tests 2>&1 | tail -3 | tee -a "$log"
python3 bench/kernels.py 2>&1 | tee -a "$log" | tail -16 > /tmp/koi_kernels_table.txt
python3 bench/train_throughput.py --side reference --side koi --side koi-fp8 --side koi-lowmem 2>&1 | tee -a "$log" \
  | tail -10 > /tmp/koi_train_table.txt
python3 bench/train_throughput.py --case 1558M-remat --steps 8 --warmup 3 --side reference --side koi-lowmem 2>&1 \
  | tee -a "$log" | tail -4 > /tmp/koi_1558_table.txt
echo "== kernels =="; cat /tmp/koi_kernels_table.txt
echo "== training throughput =="; cat /tmp/koi_train_table.txt; cat /tmp/koi_1558_table.txt
