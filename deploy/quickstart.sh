#!/usr/bin/env bash
# The README's first command: install dependencies, build, generate the tiny test model
# (random weights, real Gemma 3 tokenizer) and stream an answer from it with `gemmashard run`.
# Later issues turn this into a 2-rank tensor-parallel engine behind the coordinator.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
model=models/tiny
if [ ! -f "$model/config.json" ]; then
  ./build/tools/gemmashard make-test-model --out "$model" --tokenizer .cache/tokenizer/tokenizer.json \
    --preset tiny --seed 1
fi
echo "== gemmashard run --model $model --chat ... (random weights: the text is gibberish by design)"
./build/tools/gemmashard run --model "$model" --system "You are a careful clinical assistant." \
  --chat "Summarise: 64-year-old with chest pain, troponin negative." --max-tokens 48 --seed 7
echo "== the same model split over 2 MPI ranks (tensor parallel), 16 greedy token ids"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
ids=$(./build/tools/gemmashard tokenize --model "$model" --text "Summarise: troponin negative." | tr ' ' ',')
mpirun --bind-to none -np 2 ./build/worker/gemmashard-worker --model "$model" --tokens "$ids" --generate 16 --threads 1
echo "== inspect"
./build/tools/gemmashard inspect --model "$model" --no-tensors
