#!/usr/bin/env python3
"""Context parallelism (--cp C, ARCHITECTURE.md §4) with real mpirun ranks.

parity_gqa / parity_mqa: a 2-4K-token prompt on a generated model whose sliding window (8) is far
shorter than the sequence, at (T, C) in (1,2), (2,2), (1,3), (1,4) against (1, 1): logits of every
position within 1e-5 relative L2, and within 1e-4 of the independent float64 reference; 256 greedy
tokens identical. The prompt length is a multiple of neither the block (16), the placement unit
(64) nor C; the prompt is fed in 256-token chunks, so later chunks read history held by every
group.

engine: the serving engine (--batch) at T = 1, C = 2 with a KV pool (--kv-mem) too small for the
long request on one group:
  - mixed load: the long request spread over both groups, decoding beside short requests in the
    same steps, gives the same output as each request alone at C = 2 (batch invariance);
  - every rank's pool is checked after every step and found whole at the end (GS_KV_CHECK=1);
  - capacity: with the same --kv-mem, C = 1 refuses the long request at once (context_length_
    exceeded) and still serves the others; C = 2 serves it;
  - the device code path (--device cpu-staged) at T = 2, C = 2 answers as the CPU path does;
  - bad input: --cp 0 and --cp 3 with 4 ranks are refused with their reason; with C = 2, a request
    of exactly the longest servable length is accepted and one token more is refused.

usage: test_cp.py CASE GEMMASHARD WORKER MPIRUN PYTHON_REF TOKENIZER SCRATCH"""
import json
import os
import re
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from tp_common import make_model, mpirun, rel_l2_rows  # noqa: E402

CASE, GS, WORKER, MPIRUN, REF, TOK, SCRATCH = sys.argv[1:8]
BASE = ["--preset", "tiny", "--vocab", "4099", "--window", "8", "--seed", "11", "--max-pos", "16384"]
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def parity(flags, n_tokens):
    d = make_model(GS, TOK, os.path.join(SCRATCH, CASE), *BASE, *flags)
    rng = np.random.default_rng(7)
    ids = [2] + [int(x) for x in rng.integers(3, 4099, size=n_tokens - 1)]
    toks = ",".join(map(str, ids))
    ref_path = os.path.join(SCRATCH, f"{CASE}.ref.f64")
    p = subprocess.run([sys.executable, REF, "--model", d, "--tokens", toks, "--out", ref_path],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"reference failed: {p.stderr}")
    ref = np.fromfile(ref_path, dtype=np.float64).reshape(n_tokens, -1)
    logits, gens = {}, {}
    for T, C in ((1, 1), (1, 2), (2, 2), (1, 3), (1, 4)):
        out = os.path.join(SCRATCH, f"{CASE}.t{T}c{C}.f32")
        rc, so, se, secs = mpirun(MPIRUN, T * C, [WORKER, "--model", d, "--tokens", toks, "--dump-logits", out,
                                                  "--generate", "256", "--threads", "1", "--cp", str(C)],
                                  timeout=600)
        if rc != 0:
            check(False, f"(T,C)=({T},{C}): rc={rc}\n{se[-3000:]}")
            continue
        lg = np.fromfile(out, dtype=np.float32).reshape(n_tokens, -1).astype(np.float64)
        logits[(T, C)], gens[(T, C)] = lg, so.split()
        e = rel_l2_rows(lg, ref).max()
        check(e <= 1e-4, f"(T,C)=({T},{C}): max rel L2 vs float64 reference {e:.3e} <= 1e-4 ({secs:.1f} s)")
        check(len(gens[(T, C)]) == 256, f"(T,C)=({T},{C}): {len(gens[(T, C)])} greedy tokens of 256")
    base = logits.get((1, 1))
    for (T, C), lg in logits.items():
        if (T, C) == (1, 1) or base is None:
            continue
        e = rel_l2_rows(lg, base).max()
        check(e <= 1e-5, f"(T,C)=({T},{C}): max rel L2 vs (1,1) {e:.3e} <= 1e-5")
        check(gens[(T, C)] == gens[(1, 1)], f"(T,C)=({T},{C}): 256 greedy tokens equal to (1,1)")
    check(len(logits) == 5, f"{len(logits)} of 5 grids produced logits")


def run_batch(d, lines, tag, np_, cp, extra=()):
    inp, out = os.path.join(SCRATCH, f"{tag}.in.jsonl"), os.path.join(SCRATCH, f"{tag}.out.jsonl")
    with open(inp, "w") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))
    if os.path.exists(out):
        os.remove(out)
    env_prefix = ["env", "GS_KV_CHECK=1", "GS_LOG_LEVEL=info"]
    rc, so, se, secs = mpirun(MPIRUN, np_, env_prefix + [WORKER, "--model", d, "--batch", inp, "--out", out,
                                                         "--threads", "1", "--cp", str(cp), *extra], timeout=600)
    recs = {}
    if os.path.exists(out):
        with open(out) as f:
            for ln in f:
                r = json.loads(ln)
                recs[r.get("id") or r.get("custom_id")] = r
    return rc, se, recs, secs


def answer(r):
    """The part of a record that must not depend on the batch: text, tokens counted, finish."""
    if not r or r.get("error"):
        return ("error", (r or {}).get("error"))
    resp = r.get("response", {}).get("body", r.get("response", r))
    ch = resp.get("choices", [{}])
    return json.dumps([(c.get("text", c.get("message")), c.get("finish_reason")) for c in ch]) + \
        json.dumps(resp.get("usage"))


def engine():
    # the real tokenizer's vocabulary (text prompts)
    d = make_model(GS, TOK, os.path.join(SCRATCH, "engine"), *[a for a in BASE if a not in ("--vocab", "4099")])
    pool = ["--kv-mem", "1", "--max-seqs", "8", "--max-batch-tokens", "96", "--prefix-cache", "off"]
    long_req = {"id": "long", "prompt": "Discharge summary. " + " ".join(f"w{i % 97}" for i in range(1700)),
                "max_tokens": 40, "temperature": 0}
    shorts = [{"id": f"s{i}", "prompt": f"Clinical note {i}: chest pain, troponin pending. Plan:",
               "max_tokens": 24 + i, **({"temperature": 0} if i % 2 else {"temperature": 0.9, "seed": 77 + i})}
              for i in range(5)]
    # all at once at C = 2: the long one spread over both groups, the short ones beside it
    rc, se, together, secs = run_batch(d, [long_req] + shorts, "mixed", 2, 2, pool)
    check(rc == 0, f"C=2 mixed batch ran (rc {rc}, {secs:.1f} s){'' if rc == 0 else se[-2000:]}")
    check("spread over 2 context-parallel groups" in se, "the long request was spread over 2 groups")
    check("KV check: the pool is whole on all 2 ranks" in se, "GS_KV_CHECK: pool consistent every step, whole at the end")
    lr = together.get("long")
    check(bool(lr) and not lr.get("error"), f"C=2 serves the long request: {str(lr)[:300]}")
    m = re.search(r'"prompt_tokens": ?(\d+)', json.dumps(lr)) if lr else None
    n_long = int(m.group(1)) if m else 0
    print(f"long request: {n_long} prompt tokens")
    # each alone, same grid
    for req in [long_req] + shorts:
        rc, se2, alone, _ = run_batch(d, [req], f"alone-{req['id']}", 2, 2, pool)
        check(rc == 0 and answer(alone.get(req["id"])) == answer(together.get(req["id"])),
              f"{req['id']}: the same answer alone as beside the others at C=2")
    # the device code path without a GPU (--device cpu-staged: device-side candidates, uploads) at
    # T = 2, C = 2 gives the CPU path's answers at the same grid
    # (T = 2 halves the KV per rank, so a longer request is the one that needs both groups)
    longer = dict(long_req, id="longer", prompt="Discharge summary. " + " ".join(f"w{i % 89}" for i in range(2500)))
    rc, se5, cpu22, _ = run_batch(d, [longer] + shorts, "cpu22", 4, 2, pool)
    rc2, se6, st22, _ = run_batch(d, [longer] + shorts, "staged22", 4, 2, pool + ["--device", "cpu-staged"])
    check(rc == 0 and rc2 == 0 and len(cpu22) == 6 and
          all(answer(st22.get(k)) == answer(cpu22.get(k)) for k in cpu22) and "spread over 2" in se6,
          "T=2, C=2: --device cpu-staged answers equal the CPU path's (the long one spread)")
    # OpenAI's n at C = 2 (the slots of all n reserved at once): each choice equals the single
    # request with seed + i
    nreq = {"prompt": "Clinical note: sepsis bundle started. Assessment:", "max_tokens": 6, "temperature": 0.9,
            "top_k": 40}
    rc, _, nrec, _ = run_batch(d, [{"id": "n3", "n": 3, "seed": 4000, **nreq}] +
                               [{"id": f"n3-s{i}", "seed": 4000 + i, **nreq} for i in range(3)], "n3", 2, 2,
                               pool[:2] + ["--max-seqs", "3"])
    got = [c.get("text") for c in (nrec.get("n3") or {}).get("choices", [])]
    check(rc == 0 and len(got) == 3 and got == [(nrec.get(f"n3-s{i}") or {}).get("text") for i in range(3)],
          f"n = 3 at C = 2: each choice equals the single request with its seed ({got})")
    # C = 1 with the same pool: the long one refused at once, the others served
    rc, se1, one, _ = run_batch(d, [long_req] + shorts, "c1", 1, 1, pool)
    r = one.get("long") or {}
    check(rc == 0 and bool(r.get("error")) and "context" in json.dumps(r),
          f"C=1 refuses the long request with its reason: {json.dumps(r)[:300]}")
    check(all(answer(one.get(s["id"])) == answer(together.get(s["id"])) for s in shorts if s.get("temperature") == 0),
          "C=1 serves the short greedy requests with the same answers as C=2")
    # the longest servable length at C = 2 and one more, from the refusal of an impossible request:
    # "can never fit: P prompt + M max_tokens tokens exceed the engine's context of N tokens"
    def never_fit(np_, cp):
        rc, _, rec, _ = run_batch(d, [{"id": "probe", "prompt": long_req["prompt"], "max_tokens": 10 ** 6}],
                                  f"probe{cp}", np_, cp, pool)
        m = re.search(r"(\d+) prompt \+ \d+ max_tokens tokens exceed the engine's context of (\d+)", json.dumps(rec))
        return (int(m.group(1)), int(m.group(2))) if rc == 0 and m else (0, 0)
    _, c1_ctx = never_fit(1, 1)
    n_probe, c2_ctx = never_fit(2, 2)
    print(f"longest servable: C=1 {c1_ctx}, C=2 {c2_ctx} positions")
    check(c1_ctx > 0 and c2_ctx >= 2 * c1_ctx - 64, f"C=2 serves about twice C=1's context ({c2_ctx} vs {c1_ctx})")
    check(c1_ctx < n_long + 40 <= c2_ctx, f"the long request ({n_long} + 40) lies between the two")
    # positions = prompt + max_tokens - 1: exactly the longest accepted, one more refused
    exact = {"id": "exact", "prompt": long_req["prompt"], "max_tokens": c2_ctx - n_probe + 1, "ignore_eos": True,
             "temperature": 0}
    rc, se4, rec, secs = run_batch(d, [exact, dict(exact, id="over", max_tokens=c2_ctx - n_probe + 2)], "exact", 2, 2,
                                   pool)
    ex = rec.get("exact") or {}
    check(rc == 0 and not ex.get("error") and f'"completion_tokens": {c2_ctx - n_probe + 1}' in json.dumps(ex),
          f"exactly {c2_ctx} positions accepted and generated ({secs:.1f} s): {json.dumps(ex)[-200:]}")
    check(bool((rec.get("over") or {}).get("error")), f"{c2_ctx + 1} positions refused: {json.dumps(rec.get('over'))[:200]}")
    # bad grids
    for np_, cp, want in ((2, 0, "--cp wants"), (4, 3, "does not divide the 4 ranks")):
        rc, so, se, _ = mpirun(MPIRUN, np_, [WORKER, "--model", d, "--tokens", "2,3", "--cp", str(cp)])
        check(rc != 0 and want in se, f"-np {np_} --cp {cp} refused: {want!r} (rc {rc})")


def main():
    os.makedirs(SCRATCH, exist_ok=True)
    if CASE == "parity_gqa":
        parity(["--heads", "4", "--kv-heads", "2"], 2051)
    elif CASE == "parity_mqa":
        parity(["--heads", "4", "--kv-heads", "1", "--head-dim", "24", "--qpas", "30"], 3001)
    elif CASE == "engine":
        engine()
    else:
        raise SystemExit(f"unknown case {CASE}")
    for f in failures:
        print("FAIL", f.splitlines()[0])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
