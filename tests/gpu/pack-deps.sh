#!/usr/bin/env bash
# Packs what the GPU bundle build (tests/gpu/standalone with .gpu-deps) needs from this
# machine's Debian packages into .gpu-deps/ (git-ignored, ~200 KB), for a bare GPU machine that
# has nvcc, CMake and Python/numpy but not cJSON, protobuf-c (runtime and protoc-c) or MPI:
#   include/cjson/cJSON.h, include/protobuf-c/protobuf-c.h,
#   lib/libcjson.so{,.1}, lib/libprotobuf-c.so{,.1}  (glibc >= 2.14 only),
#   gen/*.pb-c.{c,h}                                  (protoc-c output of proto/*.proto).
# Carry it with the tokenizer to the device: carry [".gpu-deps", ".cache/tokenizer/tokenizer.json"],
# then `bash tests/gpu/run.sh` there builds the worker, the engine benchmark, the device-path
# test and `gemmashard logits` (T = 1, no MPI) besides the kernels.
#   bash tests/gpu/pack-deps.sh [OUT_DIR]     (default .gpu-deps in the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-.gpu-deps}
lib=/usr/lib/x86_64-linux-gnu
for f in /usr/include/cjson/cJSON.h /usr/include/protobuf-c/protobuf-c.h "$lib/libcjson.so.1" \
	"$lib/libprotobuf-c.so.1"; do
	[ -e "$f" ] || { echo "pack-deps: missing $f (run deploy/install-deps.sh first)" >&2; exit 1; }
done
command -v protoc-c >/dev/null || { echo "pack-deps: protoc-c not found" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/include/cjson" "$out/include/protobuf-c" "$out/lib" "$out/gen"
cp /usr/include/cjson/cJSON.h "$out/include/cjson/"
cp /usr/include/protobuf-c/protobuf-c.h "$out/include/protobuf-c/"
# real files under both names: a link would travel as a link
for l in cjson protobuf-c; do
	cp -L "$lib/lib$l.so.1" "$out/lib/lib$l.so.1"
	cp -L "$lib/lib$l.so.1" "$out/lib/lib$l.so"
done
for p in engine.proto gemmashard/v1/inference.proto grpc/health/v1/health.proto; do
	protoc-c -Iproto --c_out="$out/gen" "proto/$p"
done
du -sh "$out"
