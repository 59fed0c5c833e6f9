#!/usr/bin/env python3
"""Automatic prefix caching at T = 2 (real mpirun ranks, the worker's --batch mode): a clinical
note of ~1.5K tokens asked four questions (plus one asked twice) and a ~900-token system prompt
with four user messages, on a model whose sliding window (64) is far shorter than the prefix.
The outputs -- texts and every token's logprob, bit for bit -- with --prefix-cache on equal
those with it off; so do those of a pool of one sequence, where cached blocks are evicted under
pressure. The worker's closing line must report hits (and, for the small pool, evictions).
Then a real cluster (coordinator + one T = 2 engine): three completions over HTTP that share the
note, and /metrics must count their hit and queried prompt tokens.
T = 1 and the in-process checks (chat turns, forced hash collisions, the pool whole at the end)
are in test_engine.c.

usage: test_prefix_cache_tp.py GEMMASHARD WORKER MPIRUN TOKENIZER SCRATCH"""
import json
import os
import random
import re
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tp"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))
from tp_common import make_model, mpirun  # noqa: E402
from cluster import Cluster  # noqa: E402

GS, WORKER, MPIRUN, TOK, SCRATCH = sys.argv[1:6]
os.makedirs(SCRATCH, exist_ok=True)
model = make_model(GS, TOK, os.path.join(SCRATCH, "model"), "--preset", "tiny", "--window", "64",
                   "--max-pos", "8192", "--seed", "3")

rnd = random.Random(5)
words = ("the patient was seen in clinic today with a history of chest pain shortness of breath and "
         "fatigue over two weeks blood pressure heart rate normal labs pending plan follow up").split()


def text(n):
    return " ".join(rnd.choice(words) for _ in range(n))


note, system = text(1500), text(900)
questions = ["What is the diagnosis?", "List the medications.", "Summarize the plan.", "What was the blood pressure?"]
lines = [{"id": f"n{i}", "prompt": note + "\nQuestion: " + q, "max_tokens": 8, "temperature": 0, "logprobs": True}
         for i, q in enumerate(questions)]
lines += [{"id": f"s{i}", "prompt": system + "\nUser: " + q, "max_tokens": 8, "temperature": 0.7, "seed": 11 + i,
           "repetition_penalty": 1.2, "logprobs": True} for i, q in enumerate(questions)]
lines.append(dict(lines[0], id="dup"))
inp = os.path.join(SCRATCH, "in.jsonl")
with open(inp, "w") as f:
    f.writelines(json.dumps(x) + "\n" for x in lines)


def run(name, *flags):
    out = os.path.join(SCRATCH, f"out-{name}.jsonl")
    if os.path.exists(out):
        os.remove(out)
    rc, _, err, secs = mpirun(MPIRUN, 2, [WORKER, "--model", model, "--batch", inp, "--out", out, *flags])
    if rc != 0:
        sys.exit(f"FAIL {name}: worker exit {rc}\n{err[-3000:]}")
    with open(out) as f:
        res = {r["id"]: r for r in map(json.loads, f)}
    m = re.search(r"prefix cache: (\d+) of (\d+) prompt tokens hit, (\d+) blocks evicted", err)
    stats = tuple(map(int, m.groups())) if m else None
    print(f"{name}: {secs:.1f} s, prefix cache {stats}")
    return res, stats


fails = []
ref, st_off = run("off", "--max-seqs", "2", "--ctx", "6000", "--prefix-cache", "off")
if st_off is not None:
    fails.append(f"--prefix-cache off still reports a cache: {st_off}")
if len(ref) != len(lines) or any(r.get("finish_reason") != "length" for r in ref.values()):
    fails.append(f"reference run incomplete: {sorted(ref)}")
for name, flags in (("on", ["--max-seqs", "2", "--ctx", "6000"]),
                    ("on-small-pool", ["--max-seqs", "1", "--ctx", "1600", "--prefix-cache", "on"])):
    got, st = run(name, *flags)
    diff = [k for k in ref if got.get(k) != ref[k]]
    if diff:
        fails.append(f"{name}: {len(diff)} of {len(ref)} outputs differ from the cache off: {diff}")
    if st is None or st[0] < 3 * 1400:  # three more questions on the note at least
        fails.append(f"{name}: too few prefix-cache hits: {st}")
    if name == "on-small-pool" and (st is None or st[2] == 0):
        fails.append(f"{name}: no eviction in a pool of one sequence: {st}")

# ---- /metrics through a real cluster -------------------------------------------------------
build = os.path.dirname(os.path.dirname(os.path.abspath(WORKER)))
with Cluster(build, model, engines=1, tp=2, engine_args=["--ctx", "4096", "--max-seqs", "4", "--threads", "1"],
             logdir=os.path.join(SCRATCH, "logs")) as cl:
    n_prompt = 0
    for q in questions[:3]:
        body = json.dumps({"model": "model", "prompt": note + "\nQuestion: " + q, "max_tokens": 2,
                           "temperature": 0}).encode()
        req = urllib.request.Request(cl.url("/v1/completions"), data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            n_prompt += json.loads(r.read())["usage"]["prompt_tokens"]
    m, t0 = {}, time.time()
    while time.time() - t0 < 10:  # heartbeats every 0.2 s carry the counters
        m = cl.metrics()
        if m.get('gemmashard_prefix_cache_query_tokens_total{engine="engine-0"}', 0) >= n_prompt:
            break
        time.sleep(0.2)
    hit = m.get('gemmashard_prefix_cache_hit_tokens_total{engine="engine-0"}', -1)
    query = m.get('gemmashard_prefix_cache_query_tokens_total{engine="engine-0"}', -1)
    print(f"/metrics: {hit:.0f} of {query:.0f} prompt tokens hit ({n_prompt} sent)")
    if query != n_prompt or not 2 * 1400 <= hit < query:
        fails.append(f"/metrics: prefix cache hit {hit}, query {query}, {n_prompt} prompt tokens sent")
    if m.get('gemmashard_prefix_cache_enabled{engine="engine-0"}') != 1 or \
            'gemmashard_prefix_cache_evictions_total{engine="engine-0"}' not in m:
        fails.append("/metrics: no prefix_cache_enabled 1 / evictions for engine-0")

for f_ in fails:
    print("FAIL", f_)
print(f"{len(fails)} failures")
sys.exit(1 if fails else 0)
