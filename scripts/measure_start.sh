#!/usr/bin/env bash
# How long README's `serve run serve_config.yaml` takes to answer: seconds from the command to /ready answering 200 and
# to the quick start's first chat answer, then how long Ctrl-C takes to stop it (and whether any Ray process is left).
#   scripts/measure_start.sh [PORT] [HOME]     # HOME: an empty directory measures a first start (model conversion)
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:-8000}
export HOME=${2:-$HOME} RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_AUTH_MODE=disabled PYTHONPATH=$PWD
config=$(mktemp --suffix=.yaml)
sed "s/port: 8000/port: $port/" serve_config.yaml > "$config"
elapsed() { echo "$(date +%s.%N) - $t0" | bc; }
t0=$(date +%s.%N)
# Started in a session of its own with SIGINT at its default, so that it takes Ctrl-C as it does in a terminal.
setsid python -c "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp('serve', sys.argv[1:])" \
    serve run "$config" > "${config%.yaml}.log" 2>&1 &
pid=$!
until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "127.0.0.1:$port/ready")" = 200 ]; do
    kill -0 $pid 2>/dev/null || { echo "serve run ended; its log: ${config%.yaml}.log"; exit 1; }
    sleep 0.5
done
echo "/ready 200 after $(elapsed) s"
curl -s "127.0.0.1:$port/v1/chat/completions" -H 'content-type: application/json' \
     -d '{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0}'
echo; echo "first answer after $(elapsed) s"
t0=$(date +%s.%N)
kill -INT $pid
while kill -0 $pid 2>/dev/null; do sleep 0.5; done
echo "Ctrl-C stopped it in $(elapsed) s; Ray processes of its session left: $(ps -eo args | grep -c "[s]ession_.*_$pid" || true)"
