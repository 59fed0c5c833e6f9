#!/usr/bin/env bash
# The README's first command: install dependencies, build, generate the tiny test model
# (random weights, real Gemma 3 tokenizer), start a coordinator with one 2-rank
# tensor-parallel engine (deploy/local-cluster.sh), send it one gRPC request (the
# `gemmashard generate` client) and one OpenAI-style HTTP chat request (curl), print both
# answers and the endpoints, then stop the cluster. `--serve` keeps it running instead.
# The engine link is mutual TLS with certificates made once into .cache/cluster-certs/
# (deploy/make-cluster-certs.sh), and Open MPI stays on loopback (deploy/local-cluster.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
serve=0
[ "${1:-}" = "--serve" ] && serve=1
bash deploy/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
model=models/tiny
if [ ! -f "$model/config.json" ]; then
  ./build/tools/gemmashard make-test-model --out "$model" --tokenizer .cache/tokenizer/tokenizer.json \
    --preset tiny --seed 1
fi
certs=.cache/cluster-certs
bash deploy/make-cluster-certs.sh "$certs"

demo() {
  echo "== gRPC: gemmashard generate (random weights: the text is gibberish by design)"
  ./build/tools/gemmashard generate --addr 127.0.0.1:50051 --max-tokens 32 --temperature 0 \
    "Summarise: 64-year-old with chest pain, troponin negative."
  echo "== HTTP: POST /v1/chat/completions"
  curl -sS --max-time 60 http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model": "tiny", "max_tokens": 32, "seed": 7,
         "messages": [{"role": "system", "content": "You are a careful clinical assistant."},
                      {"role": "user", "content": "What does a negative troponin mean?"}]}'
  echo
  echo "== endpoints: HTTP http://127.0.0.1:8000/v1 (/health, /metrics), gRPC 127.0.0.1:50051"
  echo "   (deploy/local-cluster.sh --model $model starts this cluster again)"
}

if [ $serve = 1 ]; then
  exec deploy/local-cluster.sh --model "$model" --engines 1 --tp 2 --threads 1 --cluster-certs "$certs"
fi
export -f demo
export model
deploy/local-cluster.sh --model "$model" --engines 1 --tp 2 --threads 1 --cluster-certs "$certs" -- bash -c demo
