#!/usr/bin/env bash
# ctest gpu_bundle_build: the GPU bundle (tests/gpu/pack-deps.sh + tests/gpu/standalone) still
# configures, builds and works, so that a session lent a bare GPU machine can use it:
#   - every bundle target builds (sm_90 only, to stay short);
#   - the binaries take cJSON and protobuf-c from the bundle, not from this machine's packages;
#   - engine_device_path passes in it (the device path on the staged CPU backend);
#   - a --device cpu worker bench runs at T = 1 without mpirun, and the no-MPI build refuses
#     a launch of 2 ranks; `gemmashard generate` says it has no gRPC client, and the worker
#     that it has no TLS for --cluster-*.
#   check_bundle.sh SCRATCH
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
scratch=$1
rm -rf "$scratch"
mkdir -p "$scratch"
fail() { echo "FAIL: $*"; exit 1; }

bash "$root/tests/gpu/pack-deps.sh" "$scratch/deps" >/dev/null
cmake -S "$root/tests/gpu/standalone" -B "$scratch/build" -DGS_GPU_DEPS="$scratch/deps" \
	-DCMAKE_CUDA_ARCHITECTURES=90 >"$scratch/configure.log" 2>&1 || { cat "$scratch/configure.log"; fail configure; }
grep -q "gemmashard GPU build: ON bundle" "$scratch/configure.log" || fail "the bundle was not recognised"
cmake --build "$scratch/build" -j"$(nproc)" --target gemmashard gemmashard-worker test_device_path bench_engine \
	test_cuda_ops bench_cuda >"$scratch/build.log" 2>&1 || { tail -30 "$scratch/build.log"; fail build; }
echo "ok   bundle built"
b=$scratch/build
for exe in "$b/tools/gemmashard" "$b/worker/gemmashard-worker"; do
	for lib in libcjson.so.1 libprotobuf-c.so.1; do
		where=$(ldd "$exe" | awk -v l="$lib" '$1 == l { print $3 }')
		case "$where" in
		"$scratch/deps/lib/$lib") ;;
		*) fail "$(basename "$exe") takes $lib from '$where', not the bundle" ;;
		esac
	done
	ldd "$exe" | grep -qE "libmpi|libgrpc" && fail "$(basename "$exe") links MPI or gRPC"
done
echo "ok   cJSON and protobuf-c from the bundle; no MPI, no gRPC"
(cd "$b" && ctest -R engine_device_path --output-on-failure) >"$scratch/ctest.log" 2>&1 ||
	{ cat "$scratch/ctest.log"; fail engine_device_path; }
echo "ok   engine_device_path in the bundle"
out=$("$b/worker/gemmashard-worker" --synthetic tiny --bench --prompt-tokens 32 --decode-steps 2 --threads 1 2>&1) ||
	fail "worker bench: $out"
grep -q "^bench synthetic:tiny TP=1" <<<"$out" || fail "worker bench printed: $out"
echo "ok   worker bench at T = 1 without mpirun"
if out=$(OMPI_COMM_WORLD_SIZE=2 "$b/worker/gemmashard-worker" --synthetic tiny --bench 2>&1); then
	fail "a 2-rank launch of the no-MPI worker ran: $out"
fi
grep -q "this build has no MPI: it runs one rank (T = 1), not 2" <<<"$out" || fail "2-rank refusal said: $out"
echo "ok   a 2-rank launch is refused: $(tail -1 <<<"$out")"
if out=$("$b/worker/gemmashard-worker" --synthetic tiny --coordinator 127.0.0.1:1 --cluster-ca ca.crt \
	--cluster-cert engine.crt --cluster-key engine.key 2>&1); then
	fail "the no-TLS worker accepted --cluster-*: $out"
fi
grep -q "this build has no TLS" <<<"$out" || fail "--cluster-* refusal said: $out"
echo "ok   --cluster-* is refused without OpenSSL: $(grep -m1 "no TLS" <<<"$out")"
rc=0
out=$("$b/tools/gemmashard" generate hello 2>&1) || rc=$?
[ "$rc" -eq 2 ] && grep -q "no gRPC client" <<<"$out" || fail "gemmashard generate: rc $rc: $out"
echo "ok   gemmashard generate: $out"
