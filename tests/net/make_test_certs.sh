#!/usr/bin/env bash
# Test certificates for the engine link, made at test time with the openssl CLI (never
# committed):
#   OUT/cluster/   deploy/make-cluster-certs.sh: ca, coordinator, engine, engine-e0, engine-e1;
#                  plus, signed by the same CA:
#                  engine-expired  an engine certificate valid in January 2020 only (openssl ca)
#                  engine-both     OU=engine with extendedKeyUsage serverAuth AND clientAuth
#   OUT/other/     a second, unrelated cluster (another CA) made by the same script
#   make_test_certs.sh OUT
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$1
rm -rf "$out"
mkdir -p "$out"
bash "$root/deploy/make-cluster-certs.sh" "$out/cluster" --engines e0,e1 2>/dev/null
bash "$root/deploy/make-cluster-certs.sh" "$out/other" 2>/dev/null
c=$out/cluster
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
touch "$tmp/index.txt"
echo 1000 >"$tmp/serial"
cat >"$tmp/ca.cnf" <<CNF
[ca]
default_ca = cd
[cd]
database = $tmp/index.txt
new_certs_dir = $tmp
serial = $tmp/serial
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
organizationName = optional
organizationalUnitName = optional
[expired]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
[both]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
CNF
for name in expired both; do
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$c/engine-$name.key" 2>/dev/null
	chmod 600 "$c/engine-$name.key"
	openssl req -new -key "$c/engine-$name.key" -subj "/O=gemmashard/OU=engine/CN=engine-$name" -out "$tmp/$name.csr"
	dates=(-days 30)
	[ $name = expired ] && dates=(-startdate 20200101000000Z -enddate 20200201000000Z)
	openssl ca -batch -config "$tmp/ca.cnf" -cert "$c/ca.crt" -keyfile "$c/ca.key" -in "$tmp/$name.csr" \
		-out "$c/engine-$name.crt" -extensions "$name" -notext "${dates[@]}" 2>/dev/null
done
