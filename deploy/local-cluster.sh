#!/usr/bin/env bash
# A gemmashard cluster on this machine: one coordinator plus N engines of T ranks each
# (every engine is its own `mpirun -np T gemmashard-worker --coordinator ...` job).
#
#   deploy/local-cluster.sh --model DIR [--served-name NAME] [--engines N] [--model DIR ...] [--tp T] [--cp C]
#       [--http HOST:PORT] [--grpc HOST:PORT] [--engine-listen HOST:PORT] [--api-key-file FILE]
#       [--build DIR] [--threads N] [--ctx N] [--kv-mem MiB] [--max-seqs N] [--prefix-cache on|off] [--cluster-certs DIR]
#       [--mpi-if IFACE [--hostfile FILE]]
#       [--tls-cert FILE --tls-key FILE [--tls-ca FILE]
#        [--tls-client-ca FILE --tls-client-cert FILE --tls-client-key FILE]] [-- COMMAND ...]
#
# --tls-*: clients reach gRPC and HTTPS over TLS (the coordinator's --tls-cert, --tls-key and
# --tls-client-ca). With a client CA every client needs a certificate, this script's readiness
# check too: --tls-client-cert/--tls-client-key. The CA that issued --tls-cert must be in the
# system trust store, or be given as --tls-ca FILE (used for the readiness check only).
#
# The engine link is mutual TLS 1.3: the coordinator and every engine get the certificates in
# --cluster-certs DIR (default .cache/cluster-certs/, made once by deploy/make-cluster-certs.sh
# when missing). Open MPI is kept on this host: shared memory between ranks, out-of-band
# traffic over loopback.
#
# Engines across hosts: --mpi-if IFACE (or GS_MPI_IF) puts MPI on that interface (the TCP
# transport between hosts and mpirun's out-of-band traffic; UCX_NET_DEVICES too), and
# --hostfile FILE (mpirun's) says where the ranks go; --engine-listen must then be an address
# the leaders can reach. Either way a lost peer is fatal within seconds: Open MPI's out-of-band
# keepalive (5 s idle, 3 probes 2 s apart) ends a job whose daemon is unreachable, and each
# rank's watchdog (gemmashard-worker --collective-timeout, 10 s) ends a rank stuck on a peer.
#
# Context parallelism: --cp C (default 1) makes every engine C groups of T ranks, one
# `mpirun -np T*C gemmashard-worker --cp C ...` job; a long sequence's global-layer KV is spread
# over the groups, so the engine serves up to C times the context one group's KV pool holds
# (gemmashard-worker --help; CPU devices, no prefix cache).
#
# Several models behind the one coordinator: repeat --model DIR. --served-name NAME and
# --engines N after a --model apply to that model; given before any --model they are the
# default of every model. E.g. a text model on two engines and an image model on one:
#   deploy/local-cluster.sh --model gemma-27b --engines 2 --model medgemma-4b --served-name medgemma
# Requests then name the model ("model": "gemma-27b"); engines are numbered engine-0, engine-1, ...
# across the models, in order.
#
# Waits until every engine has registered (GET /health), prints the endpoints, then either
# runs COMMAND (after `--`; the cluster stops when it ends, with its exit status) or serves
# until interrupted. Whatever it started is stopped when it exits or is signalled.
# Logs: $GS_CLUSTER_LOGS (default .cache/cluster-logs/).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

models=() names=() neng=() engines=1 served="" tp=2 cp=1 http="127.0.0.1:8000" grpc="127.0.0.1:50051" elisten="127.0.0.1:50061"
api_key_file="" build="$here/build" threads="" ctx="" kv_mem="" max_seqs="" prefix_cache="" cmd=()
mpi_if=${GS_MPI_IF:-} hostfile=""
tls_cert="" tls_key="" tls_client_ca="" tls_client_cert="" tls_client_key="" tls_ca=""
certs="$here/.cache/cluster-certs"
while [ $# -gt 0 ]; do
  case "$1" in
    --model) models+=("$2"); names+=(""); neng+=(""); shift 2 ;;
    --engines) if [ ${#models[@]} -eq 0 ]; then engines=$2; else neng[${#models[@]}-1]=$2; fi; shift 2 ;;
    --tp) tp=$2; shift 2 ;;
    --cp) cp=$2; shift 2 ;;
    --http) http=$2; shift 2 ;;
    --grpc) grpc=$2; shift 2 ;;
    --engine-listen) elisten=$2; shift 2 ;;
    --api-key-file) api_key_file=$2; shift 2 ;;
    --api-key) echo "local-cluster: --api-key is gone (a key in argv is visible to every local user):" \
                    "put it in a file of mode 600 (lines \"NAME KEY\" or \"KEY\") and give --api-key-file FILE" >&2
               exit 2 ;;
    --served-name) if [ ${#models[@]} -eq 0 ]; then served=$2; else names[${#models[@]}-1]=$2; fi; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --ctx) ctx=$2; shift 2 ;;
    --kv-mem) kv_mem=$2; shift 2 ;;
    --max-seqs) max_seqs=$2; shift 2 ;;
    --prefix-cache) prefix_cache=$2; shift 2 ;;
    --cluster-certs) certs=$2; shift 2 ;;
    --mpi-if) mpi_if=$2; shift 2 ;;
    --hostfile) hostfile=$2; shift 2 ;;
    --) shift; cmd=("$@"); break ;;
    --tls-cert) tls_cert=$2; shift 2 ;;
    --tls-key) tls_key=$2; shift 2 ;;
    --tls-client-ca) tls_client_ca=$2; shift 2 ;;
    --tls-client-cert) tls_client_cert=$2; shift 2 ;;
    --tls-client-key) tls_client_key=$2; shift 2 ;;
    --tls-ca) tls_ca=$2; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "local-cluster: unknown option $1" >&2; exit 2 ;;
  esac
done
[ ${#models[@]} -gt 0 ] || { echo "local-cluster: --model DIR is required" >&2; exit 2; }
total=0
for k in "${!models[@]}"; do
  [ -f "${models[$k]}/config.json" ] || { echo "local-cluster: ${models[$k]}/config.json not found" >&2; exit 2; }
  [ -n "${names[$k]}" ] || names[$k]=${served:-$(basename "$(cd "${models[$k]}" && pwd)")}
  [ -n "${neng[$k]}" ] || neng[$k]=$engines
  case "${neng[$k]}$tp$cp" in *[!0-9]*|"") echo "local-cluster: --engines, --tp and --cp must be integers" >&2; exit 2 ;; esac
  [ "${neng[$k]}" -ge 1 ] && [ "$tp" -ge 1 ] && [ "$cp" -ge 1 ] ||
    { echo "local-cluster: --engines, --tp and --cp must be >= 1" >&2; exit 2; }
  total=$((total + neng[k]))
done
if [ -n "$tls_cert$tls_key" ] && { [ -z "$tls_cert" ] || [ -z "$tls_key" ]; }; then
  echo "local-cluster: --tls-cert and --tls-key go together (give both, or neither)" >&2; exit 2
fi
if [ -n "$tls_client_ca" ] && { [ -z "$tls_cert" ] || [ -z "$tls_client_cert" ] || [ -z "$tls_client_key" ]; }; then
  echo "local-cluster: --tls-client-ca needs --tls-cert/--tls-key, and --tls-client-cert/--tls-client-key" \
       "(a client certificate from that CA, for the readiness check)" >&2; exit 2
fi
if [ -n "$hostfile" ] && [ -z "$mpi_if" ]; then
  echo "local-cluster: --hostfile needs --mpi-if IFACE (the interface MPI uses between the hosts)" >&2; exit 2
fi
if [ -n "$mpi_if" ] && ! [ -e "/sys/class/net/$mpi_if" ]; then
  echo "local-cluster: --mpi-if $mpi_if: no such network interface here (ip link)" >&2; exit 2
fi
for f in "$tls_cert" "$tls_key" "$tls_client_ca" "$tls_client_cert" "$tls_client_key" "$tls_ca" "$hostfile"; do
  [ -z "$f" ] || [ -r "$f" ] || { echo "local-cluster: $f: no such readable file" >&2; exit 2; }
done
for b in coordinator/gemmashard-coordinator worker/gemmashard-worker; do
  [ -x "$build/$b" ] || { echo "local-cluster: $build/$b not built (cmake --build $build)" >&2; exit 2; }
done

# The engine link's certificates (made once; what exists is kept). The coordinator's names
# 127.0.0.1, localhost and ::1, and the --engine-listen host when it is another one.
ehost=${elisten%:*}; ehost=${ehost#[}; ehost=${ehost%]}
case "$ehost" in 127.0.0.1|localhost|::1|"") hosts=() ;; *) hosts=(--hosts "$ehost") ;; esac
bash "$here/deploy/make-cluster-certs.sh" "$certs" ${hosts[@]+"${hosts[@]}"} ||
  { echo "local-cluster: cannot make the cluster certificates in $certs" >&2; exit 1; }
for f in ca.crt coordinator.crt coordinator.key engine.crt engine.key; do
  [ -r "$certs/$f" ] || { echo "local-cluster: $certs/$f: no such readable file" >&2; exit 2; }
done

logs=${GS_CLUSTER_LOGS:-$here/.cache/cluster-logs}
mkdir -p "$logs"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
# One host: ranks talk over shared memory (no TCP or libfabric transport listening on every
# interface) and to mpirun over loopback. Across hosts: TCP on --mpi-if only.
if [ -z "$mpi_if" ]; then
  export OMPI_MCA_btl=self,vader OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
else
  export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include="$mpi_if" OMPI_MCA_oob_tcp_if_include="$mpi_if"
  export UCX_NET_DEVICES="$mpi_if"
fi
# A daemon that stops answering ends its job in about 11 s, not the default 8 minutes.
export OMPI_MCA_oob_tcp_keepalive_time=5 OMPI_MCA_oob_tcp_keepalive_intvl=2 OMPI_MCA_oob_tcp_keepalive_probes=3

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

coord_args=()
for k in "${!models[@]}"; do coord_args+=(--model "${models[$k]}" --served-name "${names[$k]}"); done
coord_args+=(--http "$http" --grpc "$grpc" --engine-listen "$elisten"
            --cluster-ca "$certs/ca.crt" --cluster-cert "$certs/coordinator.crt" --cluster-key "$certs/coordinator.key")
[ -n "$api_key_file" ] && coord_args+=(--api-key-file "$api_key_file")
[ -n "$tls_cert" ] && coord_args+=(--tls-cert "$tls_cert" --tls-key "$tls_key")
[ -n "$tls_client_ca" ] && coord_args+=(--tls-client-ca "$tls_client_ca")
setsid "$build/coordinator/gemmashard-coordinator" "${coord_args[@]}" >"$logs/coordinator.log" 2>&1 &
pids+=($!)

eng_args=(--coordinator "$elisten"
          --cluster-ca "$certs/ca.crt" --cluster-cert "$certs/engine.crt" --cluster-key "$certs/engine.key")
[ -n "$threads" ] && eng_args+=(--threads "$threads")
[ -n "$ctx" ] && eng_args+=(--ctx "$ctx")
[ -n "$kv_mem" ] && eng_args+=(--kv-mem "$kv_mem")
[ -n "$max_seqs" ] && eng_args+=(--max-seqs "$max_seqs")
[ -n "$prefix_cache" ] && eng_args+=(--prefix-cache "$prefix_cache")
[ "$cp" -gt 1 ] && eng_args+=(--cp "$cp")
i=0
for k in "${!models[@]}"; do
  for _ in $(seq 1 "${neng[$k]}"); do
    setsid mpirun --oversubscribe --bind-to none ${hostfile:+--hostfile "$hostfile"} -np "$((tp * cp))" "$build/worker/gemmashard-worker" \
      --model "${models[$k]}" --served-name "${names[$k]}" "${eng_args[@]}" --engine-id "engine-$i" \
      >"$logs/engine-$i.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
  done
done

scheme=http probe=()
if [ -n "$tls_cert" ]; then
  scheme=https
  [ -n "$tls_ca" ] && probe+=(--cacert "$tls_ca")
  [ -n "$tls_client_cert" ] && probe+=(--cert "$tls_client_cert" --key "$tls_client_key")
fi
healthy=0
for _ in $(seq 1 1800); do
  kill -0 "${pids[0]}" 2>/dev/null || { echo "local-cluster: the coordinator exited:" >&2; tail -20 "$logs/coordinator.log" >&2; exit 1; }
  rc=0; body=$(curl -s --max-time 2 ${probe[@]+"${probe[@]}"} "$scheme://$http/health" 2>/dev/null) || rc=$?
  if [ "$rc" = 60 ] || [ "$rc" = 77 ]; then
    echo "local-cluster: curl does not trust the coordinator's certificate: pass --tls-ca FILE (the CA that issued --tls-cert)" >&2; exit 1
  fi
  n=$(printf '%s' "$body" | sed -n 's/.*"engines":[ ]*\([0-9]*\).*/\1/p')
  if [ "${n:-0}" -ge "$total" ]; then healthy=1; break; fi
  sleep 0.1
done
if [ $healthy != 1 ]; then
  echo "local-cluster: engines did not become healthy in 180 s; logs in $logs" >&2
  tail -20 "$logs/engine-0.log" >&2
  exit 1
fi

grid="$tp rank(s)"
[ "$cp" -gt 1 ] && grid="$cp context-parallel groups x $tp rank(s)"
for k in "${!models[@]}"; do
  echo "local-cluster: model \"${names[$k]}\", ${neng[$k]} engine(s) x $grid healthy" >&2
done
cat >&2 <<EOF
  HTTP (OpenAI API)  $scheme://$http/v1   (GET /health, GET /metrics)
  gRPC               $grpc   (gemmashard.v1.Inference, grpc.health.v1.Health${tls_cert:+, TLS: gemmashard generate --tls-ca CA})
  engines connect to $elisten (mutual TLS, certificates in $certs); logs in $logs
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
