"""Coordinator overhead benchmark: what the coordinator adds on top of the engine's own steps.

A local cluster (coordinator + one engine of T ranks, real mpirun) serves S concurrent
streaming requests, R rounds, through gRPC (grpcio) and through HTTP server-sent events
(http.client); every chunk's arrival is timestamped at the client. The engine's own step
time comes from its heartbeats (/metrics: gemmashard_engine_step_seconds_total and
_steps_total), measured over the same window. Reported per API:

  requests/s, tokens/s;
  client inter-token gap p50 / p99 (seconds per token, chunk gaps divided by the tokens in
  the chunk) and the engine's mean step time in the same window;
  added latency per token = gap - step time, p50 / p99;
  overhead = 1 - (engine step time x steps) / wall time of the round: the share of the
  end-to-end time not spent inside engine steps (coordinator, link, engine loop, client);
  coordinator CPU time (user + system, all threads, from /proc) per request.

Target (issue 5): overhead < 5% at 64 concurrent streams.

--tls: a second, identical cluster serves gRPC and HTTPS over TLS (--tls-cert/--tls-key, a test
CA made with the openssl CLI in SCRATCH); the rounds alternate between the two clusters, so both
see the same machine, and the ratios TLS / plaintext of requests/s and tokens/s are printed per
API. gRPC keeps one connection (one handshake); every HTTP request opens its own, so HTTPS pays a
full handshake per request.

usage: bench_coordinator.py BUILD_DIR TOKENIZER_JSON SCRATCH [--streams 64] [--tokens 64]
       [--rounds 3] [--tp 2] [--preset tiny] [--min-ok-fraction 1.0] [--tls]
Exit status 1 only if requests fail (the figures are for reading, not asserting).
"""
import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from cluster import Cluster  # noqa: E402
from test_grpc import compile_protos  # noqa: E402
from test_tls import make_certs  # noqa: E402

import grpc  # noqa: E402


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def engine_counters(cl):
    m = cl.metrics()
    steps = sum(v for k, v in m.items() if k.startswith("gemmashard_engine_steps_total"))
    secs = sum(v for k, v in m.items() if k.startswith("gemmashard_engine_step_seconds_total"))
    return steps, secs


def wait_heartbeat(cl, prev, timeout=3.0):
    """Counters as of a heartbeat newer than the end of the round (heartbeats come every
    250 ms; wait until they stop moving)."""
    t0 = time.time()
    last = prev
    while time.time() - t0 < timeout:
        time.sleep(0.3)
        cur = engine_counters(cl)
        if cur == last:
            return cur
        last = cur
    return last


def coord_cpu(cl):
    """CPU seconds (user + system) the coordinator process has used so far."""
    with open(f"/proc/{cl.coord.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_round(kind, cl, stub, pb, streams, tokens, seed0):
    """kind "grpc" (stub) or "http" (a connection per request; HTTPS when cl.tls)."""
    gaps, ok, ntok = [], [0], [0]
    lock = threading.Lock()

    def one_grpc(i):
        q = pb.GenerateRequest(prompt=f"Case {i}: the patient", max_tokens=tokens, temperature=0.9,
                               seed=seed0 + i)
        last = time.perf_counter()
        g, n = [], 0
        try:
            for c in stub.GenerateStream(q, timeout=300):
                now = time.perf_counter()
                k = len(c.token_ids)
                if k and n:
                    g.append((now - last) / k)
                if k:
                    last = now
                n += k
        except grpc.RpcError:
            return
        with lock:
            gaps.extend(g)
            ok[0] += 1
            ntok[0] += n

    def one_http(i):
        body = json.dumps({"model": "bench", "prompt": f"Case {i}: the patient", "max_tokens": tokens,
                           "temperature": 0.9, "seed": seed0 + i, "stream": True})
        conn = (http.client.HTTPSConnection("127.0.0.1", cl.http_port, timeout=300, context=cl.ssl_context())
                if cl.tls else http.client.HTTPConnection("127.0.0.1", cl.http_port, timeout=300))
        try:
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            if r.status != 200:
                return
            last = time.perf_counter()
            g, n, done = [], 0, False
            while True:
                line = r.readline()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    done = True
                    break
                now = time.perf_counter()
                d = json.loads(line[6:])
                # one SSE event per token batch; tokens are counted from usage at the end
                if d.get("choices") and d["choices"][0].get("text"):
                    if n:
                        g.append(now - last)
                    last = now
                    n += 1
        finally:
            conn.close()
        if done:
            with lock:
                gaps.extend(g)
                ok[0] += 1
                ntok[0] += n

    fn = one_grpc if kind == "grpc" else one_http
    c0 = engine_counters(cl)
    cpu0 = coord_cpu(cl)
    t0 = time.perf_counter()
    th = [threading.Thread(target=fn, args=(i,)) for i in range(streams)]
    for x in th:
        x.start()
    for x in th:
        x.join()
    wall = time.perf_counter() - t0
    cpu = coord_cpu(cl) - cpu0
    c1 = wait_heartbeat(cl, c0)
    steps, step_s = c1[0] - c0[0], c1[1] - c0[1]
    return {"ok": ok[0], "wall": wall, "tokens": ntok[0], "gaps": gaps, "steps": steps, "step_s": step_s,
            "cpu": cpu}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("tokenizer")
    ap.add_argument("scratch")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--min-ok-fraction", type=float, default=1.0)
    ap.add_argument("--tls", action="store_true", help="also a TLS cluster; print TLS / plaintext ratios")
    a = ap.parse_args()

    shutil.rmtree(a.scratch, ignore_errors=True)
    os.makedirs(a.scratch)
    repo = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    compile_protos(repo, os.path.join(a.scratch, "py"))
    import gemmashard.v1.inference_pb2 as pb
    import gemmashard.v1.inference_pb2_grpc as pbg

    gs = os.path.join(a.build, "tools", "gemmashard")
    model = os.path.join(a.scratch, "bench")
    p = subprocess.run([gs, "make-test-model", "--out", model, "--tokenizer", a.tokenizer, "--preset", a.preset],
                       capture_output=True, text=True)
    if p.returncode:
        print(p.stderr)
        return 2
    ctx = a.tokens + 32
    total_ok = total = 0
    engine_args = ["--ctx", str(ctx), "--max-seqs", str(a.streams), "--threads", "1",
                   "--max-batch-tokens", str(max(256, a.streams * 2))]
    modes = [("", None)]
    if a.tls:
        c = make_certs(os.path.join(a.scratch, "certs"))
        modes.append(("+tls", {"cert": c["server.pem"], "key": c["server.key"], "ca": c["ca.pem"]}))
    with contextlib.ExitStack() as stack:
        runs = {}
        for suffix, tls in modes:
            cl = stack.enter_context(Cluster(a.build, model, engines=1, tp=a.tp, engine_args=engine_args, tls=tls,
                                             logdir=os.path.join(a.scratch, "logs" + suffix)))
            target = f"127.0.0.1:{cl.grpc_port}"
            ch = (grpc.secure_channel(target, grpc.ssl_channel_credentials(open(tls["ca"], "rb").read()))
                  if tls else grpc.insecure_channel(target))
            stack.callback(ch.close)
            stub = pbg.InferenceStub(ch)
            run_round("grpc", cl, stub, pb, min(8, a.streams), 8, 1)  # warm-up
            runs[suffix] = (cl, stub)
        print(f"bench_coordinator: {a.preset} model, 1 engine x T={a.tp}, {a.streams} concurrent streams x "
              f"{a.tokens} tokens, {a.rounds} rounds per API" +
              (" (plaintext and TLS clusters, rounds alternating)" if a.tls else ""))
        print(f"{'api':9} {'req/s':>7} {'tok/s':>8} {'gap p50':>9} {'gap p99':>9} {'step':>9} "
              f"{'added p50':>10} {'added p99':>10} {'overhead':>9} {'cpu/req':>8}")
        rates = {}
        for kind in ("grpc", "http"):
            rs = {suffix: [] for suffix, _ in modes}
            for r in range(a.rounds):
                for suffix, _ in modes:
                    cl, stub = runs[suffix]
                    rs[suffix].append(run_round(kind, cl, stub, pb, a.streams, a.tokens, 1000 * (r + 1)))
            for suffix, _ in modes:
                ok = sum(r["ok"] for r in rs[suffix])
                total_ok += ok
                total += a.streams * a.rounds
                wall = sum(r["wall"] for r in rs[suffix])
                toks = sum(r["tokens"] for r in rs[suffix])
                steps = sum(r["steps"] for r in rs[suffix])
                step_s = sum(r["step_s"] for r in rs[suffix])
                step = step_s / steps if steps else float("nan")
                gaps = [g for r in rs[suffix] for g in r["gaps"]]
                added = [g - step for g in gaps]
                overhead = 1.0 - step_s / wall if wall else float("nan")
                cpu = sum(r["cpu"] for r in rs[suffix]) / ok if ok else float("nan")
                rates[kind + suffix] = (ok / wall, toks / wall, cpu)
                print(f"{kind + suffix:9} {ok / wall:7.2f} {toks / wall:8.1f} {pct(gaps, 50) * 1e3:8.2f}ms "
                      f"{pct(gaps, 99) * 1e3:8.2f}ms {step * 1e3:8.2f}ms {pct(added, 50) * 1e3:9.3f}ms "
                      f"{pct(added, 99) * 1e3:9.3f}ms {overhead * 100:8.1f}% {cpu * 1e3:6.2f}ms")
        if a.tls:
            for kind in ("grpc", "http"):
                (rq0, tk0, cpu0), (rq1, tk1, cpu1) = rates[kind], rates[kind + "+tls"]
                print(f"TLS / plaintext, {kind}: requests/s {rq1 / rq0:.3f}, tokens/s {tk1 / tk0:.3f}, "
                      f"coordinator CPU per request "
                      f"{f'{cpu1 / cpu0:.2f}x' if cpu0 else 'n/a (under one clock tick in plaintext)'} "
                      f"(+{(cpu1 - cpu0) * 1e3:.2f} ms)")
    print(f"requests ok: {total_ok}/{total}")
    return 0 if total_ok >= a.min_ok_fraction * total else 1


if __name__ == "__main__":
    sys.exit(main())
