#!/usr/bin/env bash
# The experiment harness on one GPU, both modes in turn: launch_server.py on S-LoRA's S1 setting (Llama-7B
# shapes, random weights, rank-8 adapters), then run_exp.py's Fair-SLoRA suite and a rate sweep against it.
# Usage (GPU machine, repository root, Ray from .ray-pack as in gpu_check.sh):
#   HARNESS_SCALE=0.1 HARNESS_SUITE_ARGS="--num-adapters 100" bash benchmarks/harness/gpu_harness.sh [fair slora]
# HARNESS_SCALE shortens every trace (run_exp.py --duration-scale); HARNESS_SWEEP_ALPHAS ("0.1 1" by default;
# empty: no sweep), HARNESS_SWEEP_ARGS (e.g. "--req-rates 8": where the doubling starts; probes last at least
# run_exp.py's --sweep-probe-s, 60 s, whatever the scale); HARNESS_SETTING,
# HARNESS_SERVER_ARGS and HARNESS_ADAPTERS change the server (a CPU dry run: Demo, "--device cpu", 8).
# Results: $OUT/all_results_<mode>.jsonl, $OUT/harness_<mode>.log and the server's log.
set -uo pipefail
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
out=${OUT:-/tmp/fair_lora_gpu}; mkdir -p "$out"
scale=${HARNESS_SCALE:-0.1}
setting=${HARNESS_SETTING:-S1}
server_args=${HARNESS_SERVER_ARGS:---dummy --device cuda --dtype bfloat16}
sweep_alphas=${HARNESS_SWEEP_ALPHAS-0.1 1}
modes=("$@"); [ ${#modes[@]} -eq 0 ] && modes=(fair slora)
cd benchmarks
for mode in "${modes[@]}"; do
  flag=""; [ "$mode" = fair ] && flag=--fair_strategy
  echo "== harness $mode $(date +%T)"
  python launch_server.py $flag --num-adapter ${HARNESS_ADAPTERS:-100} --model-setting $setting $server_args \
    --cache-dir /tmp/fair_lora_assets > "$out/harness_server_$mode.log" 2>&1 &
  server=$!
  for _ in $(seq 600); do
    grep -q "server ready" "$out/harness_server_$mode.log" && break
    kill -0 $server 2>/dev/null || break
    sleep 1
  done
  grep "server ready\|memory plan\|warm-up" "$out/harness_server_$mode.log" | tail -3
  if grep -q "server ready" "$out/harness_server_$mode.log"; then
    python run_exp.py --fair --model-setting $setting --duration-scale "$scale" ${HARNESS_SUITE_ARGS:-} \
      --output "$out/all_results_$mode.jsonl" 2>&1 | tee "$out/harness_$mode.log" | grep -v '%|' | tail -14
    if [ -n "$sweep_alphas" ]; then
      python run_exp.py --suite rate-sweep --alphas $sweep_alphas --model-setting $setting --duration-scale "$scale" \
        --sweep-refine ${HARNESS_SWEEP_REFINE:-1} ${HARNESS_SWEEP_ARGS:-} --output "$out/all_results_$mode.jsonl" --append 2>&1 \
        | tee -a "$out/harness_$mode.log" | grep -v '%|' | tail -14
    fi
  else
    echo "server for $mode did not start"; tail -30 "$out/harness_server_$mode.log"
  fi
  kill -INT $server 2>/dev/null; wait $server
done
