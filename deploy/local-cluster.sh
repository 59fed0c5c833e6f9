#!/usr/bin/env bash
# A gemmashard cluster on this machine: one coordinator plus N engines of T ranks each
# (every engine is its own `mpirun -np T gemmashard-worker --coordinator ...` job).
#
#   deploy/local-cluster.sh --model DIR [--engines N] [--tp T] [--http HOST:PORT]
#       [--grpc HOST:PORT] [--engine-listen HOST:PORT] [--api-key KEY] [--served-name NAME]
#       [--build DIR] [--threads N] [--ctx N] [--max-seqs N] [-- COMMAND ...]
#
# Waits until every engine has registered (GET /health), prints the endpoints, then either
# runs COMMAND (after `--`; the cluster stops when it ends, with its exit status) or serves
# until interrupted. Whatever it started is stopped when it exits or is signalled.
# Logs: $GS_CLUSTER_LOGS (default .cache/cluster-logs/).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

model="" engines=1 tp=2 http="127.0.0.1:8000" grpc="127.0.0.1:50051" elisten="127.0.0.1:50061"
api_key="" served="" build="$here/build" threads="" ctx="" max_seqs="" cmd=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --engines) engines=$2; shift 2 ;;
    --tp) tp=$2; shift 2 ;;
    --http) http=$2; shift 2 ;;
    --grpc) grpc=$2; shift 2 ;;
    --engine-listen) elisten=$2; shift 2 ;;
    --api-key) api_key=$2; shift 2 ;;
    --served-name) served=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --ctx) ctx=$2; shift 2 ;;
    --max-seqs) max_seqs=$2; shift 2 ;;
    --) shift; cmd=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "local-cluster: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$model" ] || { echo "local-cluster: --model DIR is required" >&2; exit 2; }
[ -f "$model/config.json" ] || { echo "local-cluster: $model/config.json not found" >&2; exit 2; }
case "$engines$tp" in *[!0-9]*) echo "local-cluster: --engines and --tp must be integers" >&2; exit 2 ;; esac
[ "$engines" -ge 1 ] && [ "$tp" -ge 1 ] || { echo "local-cluster: --engines and --tp must be >= 1" >&2; exit 2; }
for b in coordinator/gemmashard-coordinator worker/gemmashard-worker; do
  [ -x "$build/$b" ] || { echo "local-cluster: $build/$b not built (cmake --build $build)" >&2; exit 2; }
done

logs=${GS_CLUSTER_LOGS:-$here/.cache/cluster-logs}
mkdir -p "$logs"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none

pids=()
stop_all() {
  trap - EXIT INT TERM
  local p
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  # ranks sit in process groups of their own: take down each job's whole session
  for p in "${pids[@]}"; do
    pkill -KILL -s "$p" 2>/dev/null || true
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

coord_args=(--model "$model" --http "$http" --grpc "$grpc" --engine-listen "$elisten")
[ -n "$api_key" ] && coord_args+=(--api-key "$api_key")
[ -n "$served" ] && coord_args+=(--served-name "$served")
setsid "$build/coordinator/gemmashard-coordinator" "${coord_args[@]}" >"$logs/coordinator.log" 2>&1 &
pids+=($!)

eng_args=(--model "$model" --coordinator "$elisten")
[ -n "$served" ] && eng_args+=(--served-name "$served")
[ -n "$threads" ] && eng_args+=(--threads "$threads")
[ -n "$ctx" ] && eng_args+=(--ctx "$ctx")
[ -n "$max_seqs" ] && eng_args+=(--max-seqs "$max_seqs")
for i in $(seq 0 $((engines - 1))); do
  setsid mpirun --oversubscribe --bind-to none -np "$tp" "$build/worker/gemmashard-worker" \
    "${eng_args[@]}" --engine-id "engine-$i" >"$logs/engine-$i.log" 2>&1 &
  pids+=($!)
done

auth=()
[ -n "$api_key" ] && auth=(-H "Authorization: Bearer $api_key")
healthy=0
for _ in $(seq 1 1800); do
  kill -0 "${pids[0]}" 2>/dev/null || { echo "local-cluster: the coordinator exited:" >&2; tail -20 "$logs/coordinator.log" >&2; exit 1; }
  n=$(curl -s --max-time 2 "http://$http/health" 2>/dev/null | sed -n 's/.*"engines":[ ]*\([0-9]*\).*/\1/p' || true)
  if [ "${n:-0}" -ge "$engines" ]; then healthy=1; break; fi
  sleep 0.1
done
if [ $healthy != 1 ]; then
  echo "local-cluster: engines did not become healthy in 180 s; logs in $logs" >&2
  tail -20 "$logs/engine-0.log" >&2
  exit 1
fi

name=${served:-$(basename "$(cd "$model" && pwd)")}
cat >&2 <<EOF
local-cluster: model "$name", $engines engine(s) x $tp rank(s) healthy
  HTTP (OpenAI API)  http://$http/v1   (GET /health, GET /metrics)
  gRPC               $grpc   (gemmashard.v1.Inference, grpc.health.v1.Health)
  engines connect to $elisten; logs in $logs
EOF

if [ ${#cmd[@]} -gt 0 ]; then
  set +e
  "${cmd[@]}"
  rc=$?
  set -e
  exit $rc
fi
echo "local-cluster: serving; Ctrl-C stops everything" >&2
wait "${pids[0]}"
