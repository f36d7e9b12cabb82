#!/usr/bin/env bash
# One lent-GPU session in one script: install what the machine lacks, then run the named stages,
# each printing its rows as it goes and logging to $OUT (or bench/results) so a crash keeps them.
#   bash bench/gpu_session.sh setup parity tests      # from the repo root, on a CUDA machine
# Stages: setup, parity, probes, tests, train_tests, smoke, speed, profile, profile_lowmem, quality, mixture, mixture_large, scaling, sparsity. Offline machines need the wheels in .carry/whl (`bash bench/make_carry.sh` builds .carry)
# (jsonschema and friends, hatchling and editables, nox, pytest-xdist and execnet) and ../shared/data copied to .carry/shared/data.
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
  timeout 200 python3 bench/probes/ste_autograd_function_probe.py 2>&1 | tee "$logs/ste_probe.log"
  timeout 300 python3 bench/compile_parity.py --steps 40 --layers 2 --formats int8,int4,ternary,binary 2>&1 | tee "$logs/parity.log"
}

stage_probes() {  # one-process before/after timings: the fused loss's fp32 dW sum, Muon's stacked step (about a minute)
  timeout 150 python3 bench/probes/linear_ce_accumulate_probe.py 2>&1 | grep -E "ms|Error" | tee "$logs/accumulate_probe.log"
  for size in 124M 1558M; do
    timeout 120 python3 bench/probes/muon_step_probe.py --size "$size" 2>&1 | grep -E "ms|Error" | tee -a "$logs/muon_probe.log"
  done
}

stage_tests() {
  timeout "${KOI_TEST_TIMEOUT:-420}" python3 -m nox -s gpu -- -q -rf --timeout 240 ${KOI_TEST_ARGS:-} 2>&1 | tee "$logs/tests.log" \
    | grep -E "passed|failed|error|FAILED|ERROR|Session" | tail -40
}

stage_train_tests() {  # koi-train's suite alone on the card (the longest; nox -s gpu runs all five)
  # KOI_TEST_WORKERS=N spreads the tests over N processes (pytest-xdist, carried in .carry/whl). On the
  # card 8 workers were slower than one process (2026-12-03: not done in 250 s against 270 s), so 1 is the default.
  local spread=""
  [ "${KOI_TEST_WORKERS:-1}" -gt 1 ] && spread="-n ${KOI_TEST_WORKERS}"
  TRITON_INTERPRET=0 timeout "${KOI_TEST_TIMEOUT:-480}" python3 -m pytest -q -p no:cacheprovider -rf --timeout 240 $spread \
    packages/koi-train/tests ${KOI_TEST_ARGS:-} 2>&1 | tee "$logs/train_tests.log" | grep -E "passed|failed|error|FAILED|ERROR" | tail -40
}

stage_smoke() {
  timeout "${KOI_SMOKE_TIMEOUT:-480}" python3 bench/smoke_matrix.py --per-gpu "${KOI_SMOKE_PER_GPU:-6}" \
    ${KOI_SMOKE_ONLY:+--only "$KOI_SMOKE_ONLY"} 2>&1 | tee "$logs/smoke.log"
}

stage_speed() {
  local sides="${KOI_SPEED_SIDES:-reference koi koi-fp8 koi-fp8-fused koi-fp8-tile koi-int4 koi-ternary}"
  # about 100 s a side on a fresh H100 (start, compile, 2 x 40 steps at 124M): 7 sides outran 440 s
  local count; count=$(wc -w <<< "$sides")
  local budget=$(( 60 + 110 * count < 580 ? 60 + 110 * count : 580 ))
  timeout "${KOI_SPEED_TIMEOUT:-$budget}" python3 bench/train_throughput.py --steps "${KOI_SPEED_STEPS:-30}" \
    $(printf -- "--side %s " $sides) 2>&1 | tee "$logs/speed.log"
}

stage_quality() {  # recipe Q per format and seed (issue 19); about 5 runs at a time per card, over KOI_GPUS
  timeout "${KOI_QUALITY_TIMEOUT:-580}" python3 bench/recipe_q.py --formats "${KOI_FORMATS:-bf16,int8,int4,ternary,binary}" \
    --seeds "${KOI_SEEDS:-1}" --optimizer "${KOI_OPTIMIZER:-muon}" --model "${KOI_MODEL:-gpt2}" --gpus "${KOI_GPUS:-0}" \
    --parallel "${KOI_PARALLEL:-5}" $(for v in ${KOI_VARIANTS:-}; do printf -- "--variant %s " "$v"; done) \
    2>&1 | tee -a "$logs/recipe_q.log"
}

stage_profile() {  # issue 20: wall vs GPU-kernel time per step, host reads, top kernels (about 2 minutes)
  timeout "${KOI_PROFILE_TIMEOUT:-300}" python3 bench/profile_step.py --side reference --side koi --warmup 15 --steps 10 2>&1 \
    | grep -v USDT | tee "$logs/profile.log"
}

stage_mixture() {  # issue 24: full depth against 2 and 4 experts (pso, pso_ga), equal tokens then equal wall time
  # Both budgets outlast one call: KOI_MIXTURE_BUDGET=tokens first, then KOI_MIXTURE_BUDGET=time with
  # KOI_MIXTURE_RATES=<the first call's mixture.jsonl, copied into the repo> (it travels with the tree).
  timeout "${KOI_MIXTURE_TIMEOUT:-580}" python3 bench/mixture.py --budget "${KOI_MIXTURE_BUDGET:-tokens}" \
    ${KOI_MIXTURE_RATES:+--rates-from "$KOI_MIXTURE_RATES"} --parallel "${KOI_PARALLEL:-5}" 2>&1 | tee -a "$logs/mixture.log"
}

stage_mixture_large() {  # issue 24 at 1558M total: full depth against 2 and 4 experts, equal wall time, memory levers on
  # (about 2.5 minutes of compile twice, then KOI_MIXTURE_MINUTES of training, all runs sharing the card)
  timeout "${KOI_MIXTURE_TIMEOUT:-580}" python3 bench/mixture.py --size 1558M --methods "${KOI_MIXTURE_METHODS:-pso}" \
    --minutes "${KOI_MIXTURE_MINUTES:-3}" 2>&1 | tee -a "$logs/mixture_large.log"
}

stage_profile_lowmem() {  # issue 21: where the 1558M low-memory step loses its time (about 8 minutes, three compiles)
  timeout "${KOI_PROFILE_TIMEOUT:-560}" python3 bench/profile_step.py --case 1558M-remat --side reference --side koi-remat \
    --side koi-lowmem --warmup 5 --steps 3 2>&1 | grep -v USDT | tee "$logs/profile_lowmem.log"
}

stage_scaling() {  # issue 20 on an x2 / x4: Koi's DDP job against the reference's DDP job, 1 / 2 / all GPUs (about 8 minutes at 124M)
  # KOI_SCALING_CASE=1558M-remat KOI_SCALING_SIDES="reference-remat koi-remat-fsdp" for FSDP2 at 1558M
  local sides="${KOI_SCALING_SIDES:-reference koi}"
  timeout "${KOI_SCALING_TIMEOUT:-580}" python3 bench/scaling.py --case "${KOI_SCALING_CASE:-124M}" --steps "${KOI_SCALING_STEPS:-30}" \
    $(printf -- "--side %s " $sides) 2>&1 | tee -a "$logs/scaling.log"
}

stage_sparsity() {  # issue 27: 2:4 matmuls, gathered MLPs, whole steps with sparse sides (about 6 minutes)
  # KOI_SPARSITY_ONLY="gather" for the gathered-MLP and decode-block table alone (about a minute)
  timeout "${KOI_SPARSITY_TIMEOUT:-580}" python3 bench/sparsity.py ${KOI_SPARSITY_ONLY:+--only $KOI_SPARSITY_ONLY} 2>&1 \
    | tee -a "$logs/sparsity.log"
}

for stage in "$@"; do
  echo "== $stage =="
  "stage_$stage"
done
