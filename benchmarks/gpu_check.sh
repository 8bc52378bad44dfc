#!/usr/bin/env bash
# One device call: the GPU tests, the correction kernels alone, and step profiles. Logs go to $OUT.
# Usage (on the GPU machine, repository root): bash benchmarks/gpu_check.sh [tests|kernels|sweep|merge|profile]...
# (no argument: tests kernels profile). The engine benchmark is its own call: python -m benchmarks.engine_bench.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
out=${OUT:-/tmp/fair_lora_gpu}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv,noheader
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(tests kernels profile)
for part in "${parts[@]}"; do
  case $part in
    tests) python -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.log" | tail -6 ;;
    kernels) python -m benchmarks.correction_bench 2>&1 | tee "$out/correction_bench.log" | grep '^|' ;;
    sweep)  # the grouped expand's tiling (~2 min): pick from the per-step summary at the end
      python -m benchmarks.correction_bench --batches 32,128 --mixes 1,2 --iters 30 \
        --vary lora_expand.MAX_BLOCKS_PER_PROGRAM=2,4 --vary lora_expand.BLOCK_N=64,128 2>&1 \
        | tee "$out/expand_sweep.log" | sed -n '/correction per step/,$p' ;;
    merge) python -m benchmarks.merge_bench 2>&1 | tee "$out/merge_bench.log" | tail -8 ;;
    profile)
      for case in "1 slora" "32 base" "32 slora" "32 cold" "32 hot"; do
        set -- $case
        python -m benchmarks.profile_step --batch "$1" --mix "$2" > "$out/profile_b$1_$2.txt" 2>&1
        echo "== B=$1 $2"; sed -n '/^{/,/^}/p' "$out/profile_b$1_$2.txt"
      done ;;
  esac
done
