#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, -DGS_FUZZ=ON: ASan + UBSan, UBSan halts) in
# build-fuzz-clang and runs each for GS_FUZZ_SECONDS (default 60) seconds, GS_FUZZ_JOBS
# (default 2) at a time, each from a copy of its seed corpus (tests/fuzz/corpus/<target>) in a
# scratch directory, so the committed seeds never change. Fails, naming the input that
# crashed, leaked, hung or broke an invariant, when any target finds something; prints the
# executions of every target at the end.
#   bash tests/fuzz/run.sh [TARGET...]    (default: every tests/fuzz/fuzz_*.c target)
#   GS_FUZZ_BUILD_DIR (default build-fuzz-clang), GS_FUZZ_OUT (default $GS_FUZZ_BUILD_DIR/fuzz-run)
# Reproduce a finding: build-fuzz-clang/tests/fuzz/fuzz_X PATH_OF_THE_INPUT
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${GS_FUZZ_SECONDS:-60}
jobs=${GS_FUZZ_JOBS:-2}
dir=${GS_FUZZ_BUILD_DIR:-build-fuzz-clang}
out=${GS_FUZZ_OUT:-$dir/fuzz-run}
t_start=$(date +%s)

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(grep -l '^int LLVMFuzzerTestOneInput' tests/fuzz/fuzz_*.c | xargs -n1 basename | sed 's/\.c$//')
fi

CC=${GS_FUZZ_CC:-clang} CXX=${GS_FUZZ_CXX:-clang++} cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGS_FUZZ=ON -DGS_CUDA=OFF >/dev/null
cmake --build "$dir" -j"$(nproc)" --target "${targets[@]}" >/dev/null
t_built=$(date +%s)

rm -rf "$out"
mkdir -p "$out"
# leaks are findings too; UBSan halts at its first report (-fno-sanitize-recover=all as well)
export ASAN_OPTIONS=${GS_FUZZ_ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export TMPDIR=$PWD/$out # the targets' scratch files

run_one() {
  local t=$1 w=$out/$1 dict=()
  mkdir -p "$w/corpus" "$w/artifacts"
  cp tests/fuzz/corpus/"$t"/* "$w/corpus/"
  case $t in
    fuzz_http_server) dict=(-dict=tests/fuzz/http.dict) ;;
    fuzz_config|fuzz_tokenizer_json|fuzz_batch_*|fuzz_http_body|fuzz_safetensors|fuzz_grammar) dict=(-dict=tests/fuzz/json.dict) ;;
  esac
  local rc=0
  "$dir/tests/fuzz/$t" -max_total_time="$secs" -timeout=25 -rss_limit_mb=3072 -print_final_stats=1 \
    -artifact_prefix="$w/artifacts/" "${dict[@]}" "$w/corpus" >"$w/log" 2>&1 || rc=$?
  echo "$rc" >"$w/rc"
}

running=0
for t in "${targets[@]}"; do
  if [ ! -d "tests/fuzz/corpus/$t" ]; then
    echo "fuzz: no seed corpus tests/fuzz/corpus/$t" >&2
    exit 2
  fi
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

failed=0
total=0
printf '%-22s %12s %9s %8s  %s\n' target executions exec/s corpus result
for t in "${targets[@]}"; do
  w=$out/$t
  rc=$(cat "$w/rc" 2>/dev/null || echo 99)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$w/log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$w/log" | tail -1)
  units=$(find "$w/corpus" -type f | wc -l)
  found=$(find "$w/artifacts" -type f | head -1)
  if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
    result="FAIL (rc $rc) ${found:-no input saved; see $w/log}"
    failed=1
  else
    result=ok
  fi
  printf '%-22s %12s %9s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$units" "$result"
  total=$((total + ${execs:-0}))
done
t_end=$(date +%s)
echo "fuzz: ${#targets[@]} targets, ${secs} s each, $jobs at a time: $total fuzz executions; build $((t_built - t_start)) s, total $((t_end - t_start)) s"
if [ "$failed" -ne 0 ]; then
  for t in "${targets[@]}"; do
    w=$out/$t
    if [ "$(cat "$w/rc" 2>/dev/null || echo 99)" -ne 0 ] || [ -n "$(find "$w/artifacts" -type f)" ]; then
      echo "---- $t ($w/log) ----"
      grep -E "ERROR: |SUMMARY: |runtime error|invariant broken|Test unit written to|^==[0-9]+==" "$w/log" | head -20
    fi
  done
  exit 1
fi
