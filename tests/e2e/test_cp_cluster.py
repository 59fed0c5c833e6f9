"""Context parallelism behind the coordinator: one gemmashard-coordinator with two engines of the tiny
test model (real mpirun), engine-0 `-np 1` (C = 1) and engine-1 `-np 2 --cp 2` (two groups of one
rank), both with the same small KV pool per rank (--kv-mem 1 --max-seqs SEQS), so that one group's
pool bounds engine-0's context and engine-1 serves about twice that, its long sequences' global KV
spread over both groups. Real clients: urllib for HTTP, python3-grpcio.

Checks:
- the hellos: engine-1's context is larger than engine-0's and its blocks are twice engine-0's
  (the sum over its two groups, each the same pool); /v1/models max_model_len is engine-1's context;
- /metrics at idle: gemmashard_engine_tp / _cp per engine, one
  gemmashard_engine_kv_group_blocks_free/_used series per group (two for engine-1) with free equal
  to one group's pool and used 0, gemmashard_kv_blocks_free the sum, no sharded sequence;
- a prompt longer than engine-0's whole context but within engine-1's: answered by engine-1 (its
  tokens counter grows by max_tokens, engine-0's not at all); the gRPC answer's token ids equal
  `gemmashard-worker --tokens ... --generate M` run alone without context parallelism (greedy); the
  same request over HTTP has usage.prompt_tokens the true length, completion_tokens M and the same
  text; while it runs, /metrics shows it sharded (gemmashard_engine_sharded_sequences_running 1, both
  groups holding blocks, their sum the blocks its prompt + max_tokens - 1 positions take), and free
  equals the whole pool again once it is done;
- a prompt longer than every engine's context: HTTP 400 context_length_exceeded at once, naming the
  largest context served (engine-1's), and gRPC RESOURCE_EXHAUSTED likewise;
- `deploy/local-cluster.sh --tp 1 --cp 2` serves one long request (prompt beyond one group's
  context) with /metrics showing cp 2 and two groups;
- clean coordinator exits.

usage: test_cp_cluster.py BUILD_DIR TOKENIZER_JSON SCRATCH
"""
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, exit_status  # noqa: E402
from cluster import Cluster, free_port, mpi_env  # noqa: E402

import grpc  # noqa: E402
from test_grpc import compile_protos  # noqa: E402

SEQS = 20        # sliding-window rings of 20 sequences take most of the 1 MiB pool
BLOCK = 16       # positions per KV block
M = 96           # max_tokens of the long request


def post(url, body, timeout=120):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def engines_from_log(log):
    """engine id -> (T, C, context, blocks) from the coordinator's "engine ... up" lines."""
    out = {}
    for m in re.finditer(r"engine (\S+) \(.*?\) up over .*?: T=(\d+), C=(\d+), context (\d+), (\d+) KV blocks", log):
        out[m.group(1)] = tuple(int(m.group(k)) for k in range(2, 6))
    return out


def reference_ids(worker, model, prompt, n):
    """Greedy continuation of prompt by the worker alone (one rank, no context parallelism)."""
    p = subprocess.run(["mpirun", "--allow-run-as-root", "-np", "1", worker, "--model", model, "--threads", "1",
                        "--tokens", ",".join(map(str, prompt)), "--generate", str(n)],
                       capture_output=True, text=True, timeout=120, env=mpi_env())
    if p.returncode != 0:
        raise RuntimeError(f"reference worker failed: {p.stderr[-2000:]}")
    return [int(t) for t in p.stdout.split()]


def watch_metrics(cl, stop, seen):
    """Polls /metrics until stop is set; keeps every sample of engine-1's CP series."""
    keys = ['gemmashard_engine_sharded_sequences_running{engine="engine-1"}',
            'gemmashard_engine_kv_group_blocks_used{engine="engine-1",group="0"}',
            'gemmashard_engine_kv_group_blocks_used{engine="engine-1",group="1"}']
    while not stop.is_set():
        try:
            m = cl.metrics()
            seen.append(tuple(m.get(k, -1) for k in keys))
        except OSError:
            pass
        time.sleep(0.05)


def local_cluster_smoke(repo, build, model, scratch, n_prompt, ctx_group):
    """deploy/local-cluster.sh --cp 2: one engine of two groups serves a prompt beyond one group."""
    http, grpc_p, eng = free_port(), free_port(), free_port()
    ids = [2] + [random.Random(7).randrange(1000, 200000) for _ in range(n_prompt - 1)]
    probe = os.path.join(scratch, "lc-probe.py")
    with open(probe, "w") as f:
        f.write(f"""import json, sys, urllib.request
base = "http://127.0.0.1:{http}"
body = {{"model": "tiny", "prompt": {ids}, "max_tokens": 4, "temperature": 0}}
req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                             headers={{"Content-Type": "application/json"}})
with urllib.request.urlopen(req, timeout=120) as r:
    ans = json.loads(r.read())
with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
    met = r.read().decode()
print(json.dumps({{"answer": ans, "metrics": met}}))
""")
    env = dict(os.environ, GS_CLUSTER_LOGS=os.path.join(scratch, "lc-logs"))
    t0 = time.time()
    p = subprocess.run(["bash", os.path.join(repo, "deploy", "local-cluster.sh"), "--model", model,
                        "--served-name", "tiny", "--tp", "1", "--cp", "2", "--threads", "1", "--kv-mem", "1",
                        "--max-seqs", str(SEQS), "--build", build, "--http", f"127.0.0.1:{http}",
                        "--grpc", f"127.0.0.1:{grpc_p}", "--engine-listen", f"127.0.0.1:{eng}",
                        "--cluster-certs", os.path.join(scratch, "certs"), "--", sys.executable, probe],
                       capture_output=True, text=True, timeout=240, env=env)
    if not check(p.returncode == 0, f"local-cluster.sh --cp 2 ran the probe (exit {p.returncode}, "
                 f"{time.time() - t0:.1f} s): {p.stderr.strip()[-600:]}"):
        return
    out = json.loads(p.stdout.strip().splitlines()[-1])
    ans, met = out["answer"], out["metrics"]
    u = ans.get("usage", {})
    check(u.get("prompt_tokens") == n_prompt and u.get("completion_tokens") == 4 and ans["choices"][0]["text"] != "",
          f"local-cluster --cp 2: a {n_prompt}-token prompt (one group holds {ctx_group}) answered: {u}")
    check('gemmashard_engine_cp{engine="engine-0"} 2' in met and
          'gemmashard_engine_kv_group_blocks_free{engine="engine-0",group="1"}' in met and
          'group="2"' not in met, "local-cluster --cp 2: /metrics shows cp 2 and two groups")
    check("2 context-parallel groups x 1 rank(s) healthy" in p.stderr, "local-cluster --cp 2: its banner")


def main():
    build, tok, scratch = sys.argv[1:4]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    compile_protos(repo, os.path.join(scratch, "py"))
    import gemmashard.v1.inference_pb2 as pb
    import gemmashard.v1.inference_pb2_grpc as pbg

    gs = os.path.join(build, "tools", "gemmashard")
    model = os.path.join(scratch, "tiny")
    subprocess.run([gs, "make-test-model", "--out", model, "--tokenizer", tok, "--preset", "tiny"], check=True,
                   stdout=subprocess.DEVNULL)
    t_start = time.time()

    cl = Cluster(build, model, engines=2, tp=1, logdir=os.path.join(scratch, "logs"),
                 engine_args=["--threads", "1", "--kv-mem", "1", "--max-seqs", str(SEQS), "--prefix-cache", "off"])
    n_long = ctx_a = 0
    try:
        cl.start_coordinator()
        cl.start_engine(0, np=1)
        cl.start_engine(1, np=2, extra=["--cp", "2"])
        cl.wait_healthy(2)
        eng = engines_from_log(cl.log("coordinator"))
        (t_a, c_a, ctx_a, blk_a), (t_b, c_b, ctx_b, blk_b) = eng["engine-0"], eng["engine-1"]
        check((t_a, c_a, t_b, c_b) == (1, 1, 1, 2), f"hellos: engine-0 T={t_a} C={c_a}, engine-1 T={t_b} C={c_b}")
        check(ctx_a == blk_a * BLOCK and blk_b == 2 * blk_a and ctx_a < ctx_b <= 2 * ctx_a,
              f"engine-0: context {ctx_a} = its {blk_a} blocks; engine-1: {blk_b} blocks over 2 groups, context "
              f"{ctx_b}")
        st, body = cl.get("/v1/models")
        mm = json.loads(body)["data"][0].get("max_model_len")
        check(st == 200 and mm == ctx_b, f"/v1/models max_model_len {mm} = the largest context {ctx_b}")

        time.sleep(0.5)  # heartbeats
        m = cl.metrics()
        g = 'gemmashard_engine_kv_group_blocks_{}{{engine="engine-{}",group="{}"}}'
        check(m.get('gemmashard_engine_cp{engine="engine-1"}') == 2 and m.get('gemmashard_engine_cp{engine="engine-0"}') == 1
              and m.get('gemmashard_engine_tp{engine="engine-1"}') == 1
              and m.get('gemmashard_engine_tp{engine="engine-0"}') == 1, "/metrics: tp and cp per engine")
        groups_b = sorted(k for k in m if k.startswith('gemmashard_engine_kv_group_blocks_free{engine="engine-1"'))
        check(len(groups_b) == 2 and all(m[g.format("free", 1, c)] == blk_a and m[g.format("used", 1, c)] == 0
                                         for c in (0, 1)),
              f"/metrics idle: engine-1 has two groups, each {blk_a} free and 0 used: "
              f"{[(k, m[k]) for k in groups_b]}")
        check(m.get(g.format("free", 0, 0)) == blk_a and g.format("free", 0, 1) not in m,
              "/metrics idle: engine-0 has one group, all free")
        check(m.get('gemmashard_kv_blocks_free{engine="engine-1"}') == blk_b and
              m.get('gemmashard_engine_sharded_sequences_running{engine="engine-1"}') == 0,
              "/metrics idle: engine-1's free blocks are the sum over its groups, nothing sharded")

        # a prompt beyond engine-0's whole context, within engine-1's
        n_long = ctx_a + (ctx_b - ctx_a - M) // 2
        check(n_long > ctx_a and n_long + M <= ctx_b, f"long prompt {n_long} + {M} tokens: > {ctx_a}, <= {ctx_b}")
        rng = random.Random(1)
        prompt = [2] + [rng.randrange(1000, 200000) for _ in range(n_long - 1)]
        ref_box = {}
        ref_thread = threading.Thread(target=lambda: ref_box.update(ids=reference_ids(cl.worker_bin, model, prompt, M)))
        ref_thread.start()
        tok_before = (m.get('gemmashard_engine_tokens_total{engine="engine-0"}'),
                      m.get('gemmashard_engine_tokens_total{engine="engine-1"}'))

        ch = grpc.insecure_channel(f"127.0.0.1:{cl.grpc_port}")
        stub = pbg.InferenceStub(ch)
        t0 = time.time()
        gr = stub.Generate(pb.GenerateRequest(prompt_ids=pb.TokenIds(ids=prompt), max_tokens=M, temperature=0,
                                              ignore_eos=True), timeout=120)
        check(len(gr.token_ids) == M and gr.usage.prompt_tokens == n_long,
              f"gRPC: {n_long}-token prompt answered with {len(gr.token_ids)} tokens in {time.time() - t0:.1f} s")

        # the same over HTTP, with /metrics watched while it runs
        stop, seen = threading.Event(), []
        w = threading.Thread(target=watch_metrics, args=(cl, stop, seen))
        w.start()
        st, ans = post(cl.url("/v1/completions"), {"prompt": prompt, "max_tokens": M, "temperature": 0,
                                                   "ignore_eos": True})
        time.sleep(0.5)  # a heartbeat after the end
        stop.set()
        w.join()
        u = ans.get("usage", {})
        text = ans["choices"][0]["text"] if st == 200 else ""
        check(st == 200 and u.get("prompt_tokens") == n_long and u.get("completion_tokens") == M and text != "",
              f"HTTP: {n_long}-token prompt -> {st}, usage {u}")
        check(text == gr.text, "HTTP and gRPC give the same greedy text")
        want = (n_long + M - 1 + BLOCK - 1) // BLOCK
        running = [s for s in seen if s[0] == 1]
        check(any(s[1] > 0 and s[2] > 0 and s[1] + s[2] == want for s in running),
              f"/metrics while it ran: sharded 1, both groups holding blocks summing to {want} "
              f"({len(running)} of {len(seen)} samples sharded; e.g. {running[:1]})")
        m = cl.metrics()
        check(all(m.get(g.format("free", 1, c)) == blk_a and m.get(g.format("used", 1, c)) == 0 for c in (0, 1)) and
              m.get('gemmashard_engine_sharded_sequences_running{engine="engine-1"}') == 0,
              "/metrics after: every block free again, nothing sharded")
        tok_after = (m.get('gemmashard_engine_tokens_total{engine="engine-0"}'),
                     m.get('gemmashard_engine_tokens_total{engine="engine-1"}'))
        check(tok_after[0] == tok_before[0] and tok_after[1] - tok_before[1] == 2 * M,
              f"routed to engine-1 only: tokens {tok_before} -> {tok_after}")
        ref_thread.join()
        ids = list(gr.token_ids)
        agree = next((i for i in range(M) if i >= len(ref_box.get("ids", [])) or ids[i] != ref_box["ids"][i]), M)
        check(agree == M, f"engine-1 (C=2) greedy ids equal the worker alone (C=1): {agree}/{M} agree "
              f"(first {ids[:6]} vs {ref_box.get('ids', [])[:6]})")

        # longer than every engine's context: refused at once, naming the largest
        too_long = [2] + [rng.randrange(1000, 200000) for _ in range(ctx_b)]
        t0 = time.time()
        st, err = post(cl.url("/v1/completions"), {"prompt": too_long, "max_tokens": 4})
        dt = time.time() - t0
        e = err.get("error", {})
        check(st == 400 and e.get("code") == "context_length_exceeded" and f"largest {ctx_b})" in e.get("message", "")
              and dt < 3, f"HTTP: {len(too_long)} tokens -> {st} in {dt:.2f} s: {e.get('message')}")
        try:
            stub.Generate(pb.GenerateRequest(prompt_ids=pb.TokenIds(ids=too_long), max_tokens=4), timeout=30)
            check(False, "gRPC: a prompt beyond every context is refused")
        except grpc.RpcError as x:
            check(x.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and
                  f"largest {ctx_b})" in x.details(), f"gRPC: refused with {x.code()}: {x.details()}")
        ch.close()
    except Exception as x:  # noqa: BLE001 (reported as a failure with the logs)
        check(False, f"cluster part: {type(x).__name__}: {x}")
    finally:
        cl.__exit__(None, None, None)
    check(cl.coord_rc == 0, f"coordinator exit status {cl.coord_rc}")

    if n_long:
        local_cluster_smoke(repo, build, model, scratch, ctx_a + 32, ctx_a)
    print(f"total {time.time() - t_start:.1f} s")
    return exit_status(lambda: cl.log("coordinator") + cl.log("engine-1"))


if __name__ == "__main__":
    sys.exit(main())
