#!/usr/bin/env bash
# The certificates of a gemmashard cluster's engine link (mutual TLS 1.3; ARCHITECTURE.md §7
# "Security"), made with the openssl CLI:
#
#   deploy/make-cluster-certs.sh DIR [--hosts h1,h2,...] [--engines name1,name2,...] [--days N] [--force]
#
#   DIR/ca.crt, ca.key                 the cluster CA (ca.key signs everything else: keep it
#                                      off the serving machines once the certificates exist)
#   DIR/coordinator.crt, .key          role coordinator: extendedKeyUsage serverAuth only,
#                                      OU=coordinator, subjectAltName localhost, 127.0.0.1, ::1
#                                      and every --hosts entry (DNS names and IP addresses)
#   DIR/engine.crt, .key               role engine: clientAuth only, OU=engine, shared by engines
#   DIR/engine-NAME.crt, .key          one per --engines name (CN=NAME), when engines should not
#                                      share a key
#
# Pass them as --cluster-ca DIR/ca.crt --cluster-cert DIR/coordinator.crt --cluster-key
# DIR/coordinator.key to gemmashard-coordinator, and the engine pair to every
# gemmashard-worker --coordinator. DIR is mode 700, keys 600. What exists is kept (a second
# run only adds what is missing, signed by the same CA); --force remakes the coordinator and
# engine certificates (not the CA). Keys are EC P-256.
set -euo pipefail

usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }
dir="" hosts="" engines="" days=825 force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --hosts) hosts=${2:?--hosts needs a value}; shift 2 ;;
    --engines) engines=${2:?--engines needs a value}; shift 2 ;;
    --days) days=${2:?--days needs a value}; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "make-cluster-certs: unknown option $1" >&2; exit 2 ;;
    *) [ -z "$dir" ] || { echo "make-cluster-certs: one DIR only (got '$dir' and '$1')" >&2; exit 2; }
       dir=$1; shift ;;
  esac
done
[ -n "$dir" ] || { usage >&2; exit 2; }
case "$days" in ''|*[!0-9]*) echo "make-cluster-certs: --days must be a positive integer" >&2; exit 2 ;; esac
[ "$days" -ge 1 ] || { echo "make-cluster-certs: --days must be >= 1" >&2; exit 2; }
command -v openssl >/dev/null || { echo "make-cluster-certs: openssl not found (apt-get install openssl)" >&2; exit 1; }

# subjectAltName: always the loopback names, then each --hosts entry as an IP or a DNS name.
san="DNS:localhost,IP:127.0.0.1,IP:::1"
IFS=, read -r -a host_list <<<"$hosts"
for h in "${host_list[@]+"${host_list[@]}"}"; do
  h=${h// /}
  [ -n "$h" ] || continue
  case "$h" in
    *[!0-9A-Za-z.:_-]*) echo "make-cluster-certs: bad host name '$h'" >&2; exit 2 ;;
  esac
  if [[ "$h" =~ ^[0-9.]+$ || "$h" == *:* ]]; then san="$san,IP:$h"; else san="$san,DNS:$h"; fi
done

IFS=, read -r -a engine_list <<<"$engines"
for e in "${engine_list[@]+"${engine_list[@]}"}"; do
  case "${e// /}" in *[!0-9A-Za-z._-]*) echo "make-cluster-certs: bad engine name '$e'" >&2; exit 2 ;; esac
done

umask 077
mkdir -p "$dir"
chmod 700 "$dir"
tmp=$(mktemp -d "$dir/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }
serial() { echo "0x$(openssl rand -hex 16)"; }

if [ ! -s "$dir/ca.crt" ] || [ ! -s "$dir/ca.key" ]; then
  [ ! -e "$dir/ca.crt" ] && [ ! -e "$dir/ca.key" ] ||
    { echo "make-cluster-certs: $dir has only one of ca.crt and ca.key; remove it or complete it" >&2; exit 1; }
  newkey "$tmp/ca.key"
  openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days $((days + 365)) -set_serial "$(serial)" \
    -subj "/O=gemmashard/OU=cluster-ca/CN=gemmashard cluster CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" -out "$tmp/ca.crt"
  mv "$tmp/ca.key" "$dir/ca.key"
  mv "$tmp/ca.crt" "$dir/ca.crt"
  chmod 644 "$dir/ca.crt"
  echo "make-cluster-certs: new cluster CA $dir/ca.crt" >&2
fi

# leaf NAME ROLE CN [SAN]: NAME.crt/.key for ROLE (coordinator: serverAuth; engine: clientAuth)
leaf() {
  local name=$1 role=$2 cn=$3 alt=${4:-} eku
  if [ -s "$dir/$name.crt" ] && [ -s "$dir/$name.key" ] && [ $force = 0 ]; then return; fi
  case "$role" in coordinator) eku=serverAuth ;; engine) eku=clientAuth ;; esac
  {
    echo "[v3]"
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=critical,$eku"
    echo "subjectKeyIdentifier=hash"
    echo "authorityKeyIdentifier=keyid"
    [ -n "$alt" ] && echo "subjectAltName=$alt"
  } >"$tmp/$name.ext"
  newkey "$tmp/$name.key"
  openssl req -new -key "$tmp/$name.key" -subj "/O=gemmashard/OU=$role/CN=$cn" -out "$tmp/$name.csr"
  openssl x509 -req -in "$tmp/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -set_serial "$(serial)" \
    -sha256 -days "$days" -extfile "$tmp/$name.ext" -extensions v3 -out "$tmp/$name.crt" 2>/dev/null
  openssl verify -CAfile "$dir/ca.crt" -purpose "$([ "$role" = coordinator ] && echo sslserver || echo sslclient)" \
    "$tmp/$name.crt" >/dev/null
  mv "$tmp/$name.key" "$dir/$name.key"
  mv "$tmp/$name.crt" "$dir/$name.crt"
  chmod 644 "$dir/$name.crt"
  echo "make-cluster-certs: $dir/$name.crt ($role${alt:+; $alt})" >&2
}

leaf coordinator coordinator gemmashard-coordinator "$san"
leaf engine engine gemmashard-engine
for e in "${engine_list[@]+"${engine_list[@]}"}"; do
  e=${e// /}
  [ -n "$e" ] || continue
  leaf "engine-$e" engine "$e"
done
