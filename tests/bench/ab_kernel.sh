#!/usr/bin/env bash
# A/B of a CPU matmul kernel file between two revisions, alternated matrix by matrix in one
# process (tests/bench/ab_matmul.c): the way to see a 5-10% change on a machine whose memory
# bandwidth moves by 2x within seconds. Needs a configured build (the kernel and core libraries).
#   bash tests/bench/ab_kernel.sh bf16|fp32 REV_A REV_B [M N K NW ROUNDS]
# REV: a git revision, or WORK for the working tree. bf16: kernels/cpu/matmul_bf16dp.c (the bf16
# mode); fp32: kernels/cpu/matmul_avx512.c (the fp32 mode's AVX-512 path). Default shape: decode
# of one row over 64 gate-projection-sized matrices of the 1B shape (1 GiB of weights).
# Example: bash tests/bench/ab_kernel.sh bf16 HEAD~1 WORK 16 6912 1152 64 6
# A-vs-A control (REV_A = REV_B) on the development VM: B/A 0.97-1.03.
# Both revisions compile against the working tree's matmul_impl.h: for bf16, revisions from
# c130d9b on (the block rule gs_mm_bf_kb replaced GS_MM_BF_KB there).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$#" -ne 3 ] && [ "$#" -ne 8 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
mode=$1 ra=$2 rb=$3
shift 3
args=("${@:-}")
[ "$#" -eq 5 ] || args=(1 6912 1152 64 10)
build=${GS_BUILD_DIR:-build}
case $mode in
  bf16) src=kernels/cpu/matmul_bf16dp.c
        flags=(-O3 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -DAB_BF16)
        syms=(gs_mm_bf_range_avx512bf16 gs_round_bf16_avx512 gs_dpbf16_loop_avx512bf16) ;;
  fp32) src=kernels/cpu/matmul_avx512.c
        flags=(-O3 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c)
        syms=(gs_mm_range_avx512 gs_sum_avx512 gs_fma_loop_avx512) ;;
  *) echo "ab_kernel: mode bf16 or fp32, not '$mode'" >&2; exit 2 ;;
esac
for lib in "$build/kernels/libgs_kernels.a" "$build/core/libgs_core.a"; do
  [ -f "$lib" ] || { echo "ab_kernel: $lib missing: build first (cmake --build $build)" >&2; exit 2; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
inc=(-Ikernels -Ikernels/cpu -Icore -D_GNU_SOURCE -std=gnu17)
for v in A B; do
  rev=$ra
  [ "$v" = B ] && rev=$rb
  if [ "$rev" = WORK ]; then cp "$src" "$tmp/k$v.c"; else git show "$rev:$src" > "$tmp/k$v.c"; fi
  ren=("-D${syms[0]}=range_$v" "-D${syms[1]}=${syms[1]}_$v" "-D${syms[2]}=${syms[2]}_$v")
  # both revisions compile against the working tree's headers (matmul_impl.h)
  gcc "${flags[@]}" "${inc[@]}" "${ren[@]}" -c "$tmp/k$v.c" -o "$tmp/k$v.o"
done
drv=(-O2 "${inc[@]}")
[ "$mode" = bf16 ] && drv+=(-DAB_BF16)
gcc "${drv[@]}" tests/bench/ab_matmul.c "$tmp/kA.o" "$tmp/kB.o" "$build/kernels/libgs_kernels.a" \
  "$build/core/libgs_core.a" -lm -lpthread -o "$tmp/ab_matmul"
echo "A = $ra, B = $rb ($src)"
"$tmp/ab_matmul" "${args[@]}"
