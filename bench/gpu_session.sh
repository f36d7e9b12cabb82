#!/usr/bin/env bash
# One lent-GPU session in one script: install what the machine lacks, then run the named stages,
# each printing its rows as it goes and logging to $OUT (or bench/results) so a crash keeps them.
#   bash bench/gpu_session.sh setup parity tests      # from the repo root, on a CUDA machine
# Stages: setup, parity, tests, smoke, speed. Offline machines need the wheels in .carry/whl
# (jsonschema and friends, hatchling and editables, nox) and ../shared/data copied to .carry/shared/data.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export KOI_SHARED_DATA="${KOI_SHARED_DATA:-$(pwd)/.carry/shared/data}"
[ -d "$KOI_SHARED_DATA" ] || KOI_SHARED_DATA="$(pwd)/../shared/data"
logs="${OUT:-bench/results}"
mkdir -p "$logs"

stage_setup() {
  if [ -d .carry/whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile .carry/whl/*.whl 2>&1 | grep -v "^WARNING"
  fi
  python3 -m pip install -q --no-deps --no-build-isolation -e packages/koi-tokenizer -e packages/koi-quant \
    -e packages/koi-kernels -e packages/koi-eval -e packages/koi-train 2>&1 | grep -iE "error|Error" | head
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())"
  git rev-parse --short HEAD 2>/dev/null || true
}

stage_parity() {
  timeout 300 python3 bench/compile_parity.py --steps 40 --layers 2 --formats bf16,int4,ternary 2>&1 | tee "$logs/parity.log"
  TORCHINDUCTOR_MIX_ORDER_REDUCTION=0 timeout 120 python3 bench/compile_parity.py --steps 40 --layers 2 --formats int4 \
    2>&1 | tee -a "$logs/parity.log"
}

stage_tests() {
  timeout "${KOI_TEST_TIMEOUT:-420}" python3 -m nox -s gpu -- -q -rf --timeout 240 2>&1 | tee "$logs/tests.log" \
    | grep -E "passed|failed|error|FAILED|ERROR|Session" | tail -40
}

for stage in "$@"; do
  echo "== $stage =="
  "stage_$stage"
done
