#!/usr/bin/env bash
# Tensor-parallel benchmark on this machine, both configurations in one run:
#   TP=1: 1 rank x N threads   vs   TP=2: 2 ranks x N/2 threads  (same cores)
# and the ratio TP2/TP1 of time per token (decode) and per prompt (prefill).
# usage: tests/bench/bench_tp.sh [BUILD_DIR] [SHAPE] [ROUNDS]
set -euo pipefail
build=${1:-build}; shape=${2:-1b}; rounds=${3:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
cores=$(nproc)
half=$(( cores / 2 > 0 ? cores / 2 : 1 ))
w="$build/worker/gemmashard-worker"
args=(--synthetic "$shape" --bench --decode-steps 16 --prompt-tokens 512)
for r in $(seq "$rounds"); do
  mpirun --bind-to none -np 1 "$w" "${args[@]}" --threads "$cores" 2>/dev/null | grep '^bench'
  mpirun --bind-to none -np 2 "$w" "${args[@]}" --threads "$half" 2>/dev/null | grep '^bench'
done | tee /tmp/gs_bench_tp.$$ 
awk '/TP=1/ {p1+=$(NF-8); d1+=$(NF-3); n1++} /TP=2/ {p2+=$(NF-8); d2+=$(NF-3); n2++}
     END { if (n1 && n2) printf "ratio TP2/TP1 (time, mean of %d rounds): decode %.3f, prefill %.3f\n", n1, (d2/n2)/(d1/n1), (p2/n2)/(p1/n1) }' /tmp/gs_bench_tp.$$
rm -f /tmp/gs_bench_tp.$$
