#!/usr/bin/env python3
"""ctest driver: corpus -> HF reference (node) -> C comparison. Exit 77 (ctest skip) with a
clear SKIPPED line when node or the tokenizers module is missing; any mismatch fails."""
import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--node-modules", required=True)
    ap.add_argument("--parity", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()

    node = shutil.which("node")
    module = os.path.join(a.node_modules, "@anush008", "tokenizers")
    if not node or not os.path.isdir(module):
        print("SKIPPED: tokenizer parity needs node and %s (deploy/install-deps.sh)" % module)
        return 77
    if not os.path.isfile(a.tokenizer):
        print("FAILED: tokenizer.json not found at %s" % a.tokenizer)
        return 1
    os.makedirs(a.workdir, exist_ok=True)
    corpus = os.path.join(a.workdir, "corpus.jsonl")
    cases = os.path.join(a.workdir, "decode_cases.jsonl")
    ref = os.path.join(a.workdir, "ref.jsonl")
    dref = os.path.join(a.workdir, "decode_ref.jsonl")
    for p in (ref, dref):
        if os.path.exists(p):
            os.remove(p)
    subprocess.check_call([sys.executable, os.path.join(HERE, "gen_corpus.py"), a.tokenizer, corpus, cases])
    env = dict(os.environ, NODE_PATH=a.node_modules)
    subprocess.check_call([node, os.path.join(HERE, "hf_ref.js"), a.tokenizer, corpus, ref, cases, dref], env=env)
    return subprocess.call([a.parity, a.tokenizer, corpus, ref, cases, dref])


if __name__ == "__main__":
    sys.exit(main())
