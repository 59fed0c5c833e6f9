#!/usr/bin/env python3
"""Prefix-caching figures through a real cluster (coordinator + one engine, HTTP streaming):

  1. time to first token of a request whose ~4K-token prefix is cached vs the same request cold
     (a prefix nobody sent before), median of N each;
  2. the hit rate of a multi-turn chat run: C conversations of K turns over /v1/chat/completions,
     each turn's messages = the previous ones + the answer + a new user message; hit / queried
     prompt tokens from /metrics.

usage: bench_prefix_cache.py BUILD TOKENIZER SCRATCH [--preset small] [--tp 1] [--n 5]
                             [--prefix-cache on|off] [--threads N]
Not a ctest (timings); prints the figures."""
import argparse
import json
import os
import random
import statistics
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tp"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))
from tp_common import make_model  # noqa: E402
from cluster import Cluster  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("build")
ap.add_argument("tokenizer")
ap.add_argument("scratch")
ap.add_argument("--preset", default="small")
ap.add_argument("--tp", type=int, default=1)
ap.add_argument("--n", type=int, default=5)
ap.add_argument("--prefix-cache", default="on")
ap.add_argument("--threads", default="")
ap.add_argument("--conversations", type=int, default=4)
ap.add_argument("--turns", type=int, default=6)
a = ap.parse_args()

os.makedirs(a.scratch, exist_ok=True)
gs = os.path.join(a.build, "tools", "gemmashard")
model = make_model(gs, a.tokenizer, os.path.join(a.scratch, "model"), "--preset", a.preset, "--max-pos", "8192",
                   "--seed", "1")
rnd = random.Random(7)
words = ("the patient was seen in clinic today with a history of chest pain shortness of breath and fatigue "
         "over two weeks blood pressure heart rate normal labs pending plan follow up").split()


def text(n):
    return " ".join(rnd.choice(words) for _ in range(n))


def ttft(cl, body):
    """Seconds to the first streamed content chunk."""
    req = urllib.request.Request(cl.url(body.pop("_path")), data=json.dumps(dict(body, stream=True)).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.time()
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if line.startswith(b"data: {"):
                return time.time() - t0
    raise RuntimeError("no chunk")


def complete(cl, path, body):
    req = urllib.request.Request(cl.url(path), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


eng = ["--ctx", "6000", "--max-seqs", "4", "--prefix-cache", a.prefix_cache]
if a.threads:
    eng += ["--threads", a.threads]
with Cluster(a.build, model, engines=1, tp=a.tp, engine_args=eng, logdir=os.path.join(a.scratch, "logs")) as cl:
    # warm up (first-touch of weights and buffers)
    complete(cl, "/v1/completions", {"model": "model", "prompt": text(50), "max_tokens": 2, "temperature": 0})
    cold, warm = [], []
    for i in range(a.n):
        prefix = f"case {i} " + text(4040)  # ~4K tokens, never sent before
        cold.append(ttft(cl, {"_path": "/v1/completions", "model": "model", "prompt": prefix + "\nQ: first?",
                              "max_tokens": 1, "temperature": 0}))
        warm.append(ttft(cl, {"_path": "/v1/completions", "model": "model", "prompt": prefix + "\nQ: second one?",
                              "max_tokens": 1, "temperature": 0}))
    n_tok = complete(cl, "/v1/completions", {"model": "model", "prompt": prefix + "\nQ: first?", "max_tokens": 1,
                                             "temperature": 0})["usage"]["prompt_tokens"]
    mc, mw = statistics.median(cold), statistics.median(warm)
    print(f"TTFT, {n_tok}-token prompt, prefix-cache {a.prefix_cache}, preset {a.preset}, T={a.tp}: "
          f"cold median {mc * 1e3:.1f} ms, cached-prefix median {mw * 1e3:.1f} ms, ratio {mw / mc:.3f}")
    print(f"  cold {[round(x * 1e3, 1) for x in cold]}\n  cached {[round(x * 1e3, 1) for x in warm]}")

    m0 = cl.metrics()
    system = {"role": "system", "content": "You are a careful clinical assistant. " + text(400)}
    convs = [[system] for _ in range(a.conversations)]
    for t in range(a.turns):
        for c in convs:
            c.append({"role": "user", "content": f"Turn {t}: " + text(60)})
            r = complete(cl, "/v1/chat/completions", {"model": "model", "messages": c, "max_tokens": 24,
                                                      "temperature": 0.7, "seed": t})
            c.append({"role": "assistant", "content": r["choices"][0]["message"]["content"]})
    time.sleep(0.6)  # a heartbeat or two
    m1 = cl.metrics()
    key = '{engine="engine-0"}'
    hit = m1.get("gemmashard_prefix_cache_hit_tokens_total" + key, 0) - m0.get(
        "gemmashard_prefix_cache_hit_tokens_total" + key, 0)
    query = m1.get("gemmashard_prefix_cache_query_tokens_total" + key, 0) - m0.get(
        "gemmashard_prefix_cache_query_tokens_total" + key, 0)
    ev = m1.get("gemmashard_prefix_cache_evictions_total" + key, 0)
    print(f"multi-turn chat ({a.conversations} conversations x {a.turns} turns, shared system prompt): "
          f"{hit:.0f} of {query:.0f} prompt tokens hit ({100 * hit / max(query, 1):.1f} %), {ev:.0f} evictions")
