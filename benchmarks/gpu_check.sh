#!/usr/bin/env bash
# One device call: the GPU tests, serving checks and benchmarks, kernels alone, step profiles. Logs go to $OUT.
# Usage (on the GPU machine, repository root): bash benchmarks/gpu_check.sh [PART]...
#   tests       every GPU test (pytest -m gpu)
#   serve       benchmarks/serving/gpu_serve_check.py: the presets served with random weights (needs .ray-pack, see below)
#   servebench  benchmarks/serving/bench.py: HTTP against the engine (needs .ray-pack)
#   e2e         benchmarks/e2e/bench.py: the engine end to end through generate() (E2E_ARGS: its flags)
#   harness     benchmarks/harness/gpu_harness.sh: launch_server.py + run_exp.py, fair then slora (needs .ray-pack)
#   multigpu    benchmarks/multi_gpu/bench.py on every GPU of the host (MULTI_GPU_ARGS: its flags; needs .ray-pack)
#   kernels | sweep | merge | profile   the correction kernels alone, the expand's tiling, the merge, step profiles
# (no argument: tests kernels profile). The step benchmark is its own call: python -m benchmarks.engine.bench.
# Ray is not on the GPU machine: ../shared/tools/pack-ray.sh makes .ray-pack/raysite.tgz; carry .ray-pack.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
out=${OUT:-/tmp/fair_lora_gpu}; mkdir -p "$out"
if [ -f .ray-pack/raysite.tgz ] && [ ! -d /tmp/raysite/ray ]; then
  mkdir -p /tmp/raysite && tar xzf .ray-pack/raysite.tgz -C /tmp/raysite
fi
with_ray=$PWD; [ -d /tmp/raysite/ray ] && with_ray=$PWD:/tmp/raysite  # only for the parts that start Ray: the
# test collection must not see Ray there, or it collects the Ray tests, whose HTTP clients the machine lacks
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv,noheader
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(tests kernels profile)
for part in "${parts[@]}"; do
  echo "== $part $(date +%T)"
  case $part in
    tests) python -m pytest -m gpu -q -p no:cacheprovider --durations=12 tests 2>&1 | tee "$out/gpu_tests.log" | tail -40 ;;
    serve) PYTHONPATH=$with_ray python -m benchmarks.serving.gpu_serve_check ${SERVE_CHECK_ARGS:-} 2>&1 | tee "$out/gpu_serve_check.log" | grep -v '^{' | tail -12 ;;
    servebench) PYTHONPATH=$with_ray python -m benchmarks.serving.bench --out "$out" ${SERVE_BENCH_ARGS:-} 2>&1 | tee "$out/serve_bench.log" | grep '^  \|^|' ;;
    e2e) python -m benchmarks.e2e.bench --out "$out" ${E2E_ARGS:-} 2>&1 | tee "$out/e2e_bench.log" | tail -30 ;;
    harness) PYTHONPATH=$with_ray bash benchmarks/harness/gpu_harness.sh ;;
    multigpu) PYTHONPATH=$with_ray python -m benchmarks.multi_gpu.bench --out "$out" ${MULTI_GPU_ARGS:-} 2>&1 \
      | tee "$out/multi_gpu.log" | grep -v ' sent ' | tail -40 ;;
    kernels) python -m benchmarks.ops.correction 2>&1 | tee "$out/correction_bench.log" | grep '^|' ;;
    sweep)  # the grouped expand's tiling (~2 min): pick from the per-step summary at the end
      python -m benchmarks.ops.correction --batches 32,128 --mixes 1,2 --iters 30 \
        --vary lora.expand.MAX_BLOCKS_PER_PROGRAM=2,4 --vary lora.expand.BLOCK_N=64,128 2>&1 \
        | tee "$out/expand_sweep.log" | sed -n '/correction per step/,$p' ;;
    merge) python -m benchmarks.ops.merge 2>&1 | tee "$out/merge_bench.log" | tail -8 ;;
    profile)
      for case in "1 slora" "32 base" "32 slora" "32 cold" "32 hot"; do
        set -- $case
        python -m benchmarks.engine.profile_step --batch "$1" --mix "$2" > "$out/profile_b$1_$2.txt" 2>&1
        echo "== B=$1 $2"; sed -n '/^{/,/^}/p' "$out/profile_b$1_$2.txt"
      done ;;
  esac
done
