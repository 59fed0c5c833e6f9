#!/usr/bin/env python3
"""The engine leader's link, against a fake coordinator written here (real mpirun, 2 ranks):
  1. hello: engine id, model id, T, C, KV geometry, context, vocabulary, max_seqs;
  2. 8 greedy and seeded requests give the tokens `gemmashard-worker --tokens --generate`
     gives for the same prompt ids (T = 2 both); one TokenEvent per request per frame;
     logprobs / top_logprobs shapes; heartbeats at >= 2 Hz busy and idle; idle ranks do not
     spin a core;
  3. cancel: FINISH_CANCELLED, and every KV block free again in a later heartbeat; cancel of
     an unknown id is ignored; a repeated request_id and an invalid Submit (top_p 2) end with
     FINISH_ERROR and a message, and the next request still works;
  4. a dropped connection (with a request in flight), a malformed frame and an unexpected
     message kind each make the engine reconnect with a new hello; nothing leaks KV;
  5. connecting retries until the coordinator listens (--engine-id, --served-name);
     SIGTERM to mpirun ends the engine within 10 s, connected or while retrying;
  6. mutual TLS (--cluster-*) against a fake coordinator on Python's ssl: the engine's
     certificate, the hello and a request over the encrypted link; a coordinator of another CA
     refuses it and the engine logs why.

usage: test_engine_link.py GEMMASHARD WORKER MPIRUN TOKENIZER SCRATCH"""
import json
import os
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tp"))
from tp_common import children, kill_session, mpi_env  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, failures  # noqa: E402

GS, WORKER, MPIRUN, TOK, SCRATCH = sys.argv[1:6]
HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "..", "proto")
N_GEN = 12
CTX = 256
MAX_SEQS = 4


def load_proto(tmp):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", PROTO_DIR, "--python_out=" + tmp,
                    os.path.join(PROTO_DIR, "engine.proto")], check=True)
    sys.path.insert(0, tmp)
    import engine_pb2  # noqa: E402
    return engine_pb2


MPI_ARGS = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "pml", "ob1"]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    fields = st[st.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- framing ------------------------------------------------------------------------------

class Link:
    """One accepted engine connection; every message received is kept with its arrival time."""

    def __init__(self, pb, conn):
        self.pb, self.c, self.buf = pb, conn, b""
        self.hb = []          # (time, Heartbeat)
        self.events = []      # (time, TokenEvents)
        self.closed = False

    def send(self, msg):
        data = msg.SerializeToString()
        self.c.sendall(struct.pack(">I", len(data)) + data)

    def send_raw(self, data):
        self.c.sendall(data)

    def recv(self, timeout):
        """Next EngineMessage or None on timeout / EOF."""
        end = time.time() + timeout
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack(">I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    m = self.pb.EngineMessage()
                    m.ParseFromString(self.buf[4:4 + n])
                    self.buf = self.buf[4 + n:]
                    kind = m.WhichOneof("body")
                    if kind == "heartbeat":
                        self.hb.append((time.time(), m.heartbeat))
                    elif kind == "events":
                        self.events.append((time.time(), m.events))
                    return m
            left = end - time.time()
            if left <= 0 or self.closed:
                return None
            # a TLS socket may hold decrypted bytes that select() cannot see
            pending = self.c.pending() if isinstance(self.c, ssl.SSLSocket) else 0
            r = [self.c] if pending else select.select([self.c], [], [], left)[0]
            if not r:
                return None
            chunk = self.c.recv(1 << 16)
            if not chunk:
                self.closed = True
                return None
            self.buf += chunk

    def pump(self, secs):
        end = time.time() + secs
        while time.time() < end and self.recv(end - time.time()) is not None:
            pass

    def wait_for(self, pred, timeout):
        """Receive until pred(msg) is true; returns that message or None."""
        end = time.time() + timeout
        while time.time() < end:
            m = self.recv(end - time.time())
            if m is None:
                if self.closed:
                    return None
                continue
            if pred(m):
                return m
        return None

    def close(self):
        try:
            self.c.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.c.close()


def accept(pb, srv, timeout):
    srv.settimeout(timeout)
    try:
        c, _ = srv.accept()
    except socket.timeout:
        return None, None
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    link = Link(pb, c)
    m = link.recv(30)
    return link, (m.hello if m is not None and m.WhichOneof("body") == "hello" else None)


def submit(pb, link, rid, prompt, max_tokens=N_GEN, temperature=0.0, top_k=0, top_p=1.0, seed=0,
           top_logprobs=0, ignore_eos=True):
    m = pb.EngineMessage()
    m.submit.request_id = rid
    m.submit.prompt.extend(prompt)
    sp = m.submit.params
    sp.temperature, sp.top_k, sp.top_p, sp.min_p, sp.repetition_penalty = temperature, top_k, top_p, 0.0, 1.0
    sp.seed, sp.max_tokens, sp.ignore_eos, sp.top_logprobs = seed, max_tokens, ignore_eos, top_logprobs
    link.send(m)


def cancel(pb, link, rid):
    m = pb.EngineMessage()
    m.cancel.request_id = rid
    link.send(m)


class Collector:
    """Per-request results from TokenEvents frames."""

    def __init__(self):
        self.tokens, self.lps, self.top_ids, self.top_lps, self.final = {}, {}, {}, {}, {}
        self.dup_in_frame = 0
        self.after_final = 0

    def add(self, evs):
        seen = set()
        for ev in evs.events:
            rid = ev.request_id
            if rid in seen:
                self.dup_in_frame += 1
            seen.add(rid)
            if rid in self.final:
                self.after_final += 1
            self.tokens.setdefault(rid, []).extend(ev.tokens)
            self.lps.setdefault(rid, []).extend(ev.logprobs)
            self.top_ids.setdefault(rid, []).extend(ev.top_ids)
            self.top_lps.setdefault(rid, []).extend(ev.top_logprobs)
            if ev.finish != 0:
                self.final[rid] = ev

    def run(self, link, want, timeout):
        """Receive until every id in want has finished (True) or timeout."""
        end = time.time() + timeout
        while time.time() < end and not want <= set(self.final):
            m = link.recv(end - time.time())
            if m is None and link.closed:
                break
            if m is not None and m.WhichOneof("body") == "events":
                self.add(m.events)
        return want <= set(self.final)


# ---- reference ----------------------------------------------------------------------------

def reference_tokens(model, prompt, n, sampling):
    argv = [MPIRUN, *MPI_ARGS, "-np", "2", WORKER, "--model", model, "--threads", "1",
            "--tokens", ",".join(map(str, prompt)), "--generate", str(n)]
    for k, v in sampling.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=mpi_env())
    if p.returncode != 0:
        failures.append(f"reference run failed: {p.stderr[-2000:]}")
        return None
    return [int(x) for x in p.stdout.split()]


def start_engine(model, port, extra=(), log=None):
    cmd = [MPIRUN, *MPI_ARGS, "-np", "2", WORKER, "--model", model, "--coordinator", f"127.0.0.1:{port}",
           "--ctx", str(CTX), "--max-seqs", str(MAX_SEQS), "--max-batch-tokens", "64", "--threads", "1", *extra]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=mpi_env(), start_new_session=True)


def stop_engine(p, what):
    t0 = time.time()
    os.kill(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    secs = time.time() - t0
    check(p.returncode is not None and secs <= 10.0, f"{what}: SIGTERM to mpirun -> exited in {secs:.1f} s "
          f"(rc {p.returncode})")
    kill_session(p.pid)
    if p.returncode is None:
        p.wait()
    return p.returncode


def hb_gaps(link, t_from, t_to):
    ts = [t for t, _ in link.hb if t_from <= t <= t_to]
    return ts, max((b - a for a, b in zip(ts, ts[1:])), default=float("inf"))


def log_tail(path, n=3000):
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


def main():
    os.makedirs(SCRATCH, exist_ok=True)
    tmp = os.path.join(SCRATCH, "proto")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    pb = load_proto(tmp)
    model = os.path.join(SCRATCH, "tiny-model")
    subprocess.run([GS, "make-test-model", "--out", model, "--tokenizer", TOK, "--preset", "tiny", "--seed", "7"],
                   check=True, capture_output=True)

    # Eight requests: four greedy, four seeded; prompts of varied lengths, ids well inside
    # the vocabulary.
    reqs = []
    for i in range(8):
        prompt = [2] + [(1000 + 7919 * (i * 31 + k)) % 200000 + 300 for k in range(3 + 5 * i)]
        sampling = {} if i % 2 == 0 else {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 100 + i}
        reqs.append((100 + i, prompt, sampling))
    ref = {rid: reference_tokens(model, prompt, N_GEN, s) for rid, prompt, s in reqs}
    check(all(r is not None and len(r) == N_GEN for r in ref.values()), "reference runs produced the tokens")

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    log1 = os.path.join(SCRATCH, "engine1.log")
    with open(log1, "wb") as lf:
        eng = start_engine(model + "//", port, log=lf)
    try:
        run_engine1(pb, srv, eng, reqs, ref, log1)
    finally:
        if eng.poll() is None:
            stop_engine(eng, "engine 1")
        kill_session(eng.pid)
    srv.close()

    run_engine2(pb, model)
    run_engine3(pb, model, reqs, ref)

    for f in failures:
        print("FAIL", f[:3000])
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


def run_engine1(pb, srv, eng, reqs, ref, log1):
    link, hello = accept(pb, srv, 180)
    if not check(hello is not None, "engine connects and says hello first"):
        failures.append("engine log:\n" + log_tail(log1))
        return
    host, _, pid = hello.engine_id.rpartition(":")
    rank_pids = children(eng.pid)
    check(host == socket.gethostname() and pid.isdigit() and int(pid) in rank_pids,
          f"default engine_id is hostname:pid of the leader ({hello.engine_id!r}, ranks {rank_pids})")
    check(hello.model_id == "tiny-model", f"model_id is the model directory's name ({hello.model_id!r})")
    check((hello.tp, hello.cp, hello.kv_block_tokens) == (2, 1, 16),
          f"tp 2, cp 1, 16 positions per block ({hello.tp}, {hello.cp}, {hello.kv_block_tokens})")
    check((hello.max_context, hello.vocab_size, hello.max_seqs) == (CTX, 262144, MAX_SEQS),
          f"max_context {CTX}, vocab 262144, max_seqs {MAX_SEQS} "
          f"({hello.max_context}, {hello.vocab_size}, {hello.max_seqs})")
    check(hello.numerics == "fp32", f"the hello names the matmul numerics, fp32 by default ({hello.numerics!r})")
    check(hello.kv_blocks_total >= MAX_SEQS * CTX // 16,
          f"kv_blocks_total holds max_seqs x ctx ({hello.kv_blocks_total} >= {MAX_SEQS * CTX // 16})")
    total = hello.kv_blocks_total

    # Idle: heartbeats keep coming, every block is free, and no rank spins a core.
    t0 = time.time()
    cpu0 = {p: cpu_seconds(p) for p in rank_pids}
    link.pump(2.0)
    cpu1 = {p: cpu_seconds(p) for p in rank_pids}
    ts, gap = hb_gaps(link, t0, time.time())
    check(len(ts) >= 6 and gap <= 0.35, f"idle heartbeats at >= 2 Hz ({len(ts)} in 2 s, largest gap {gap:.3f} s)")
    hb = link.hb[-1][1] if link.hb else None
    check(hb is not None and (hb.kv_blocks_free, hb.kv_blocks_total, hb.running, hb.waiting) == (total, total, 0, 0),
          f"idle heartbeat: all {total} blocks free, nothing running "
          f"({hb.kv_blocks_free if hb else '-'}/{hb.kv_blocks_total if hb else '-'})")
    check(hb is not None and hello.cp == 1 and list(hb.kv_group_blocks_free) == [total] and
          list(hb.kv_group_blocks_used) == [0] and hb.sharded_running == 0,
          f"idle heartbeat without context parallelism: one group, all free "
          f"({list(hb.kv_group_blocks_free) if hb else '-'} free, {list(hb.kv_group_blocks_used) if hb else '-'} used)")
    busy = {p: cpu1[p] - cpu0[p] for p in rank_pids}
    check(len(busy) == 2 and all(v < 0.5 for v in busy.values()),
          f"idle ranks use < 25% of a core each ({', '.join(f'{v / 2 * 100:.0f}%' for v in busy.values())})")
    hb0 = link.hb[-1][1]

    # Eight requests at once (max_seqs 4: half of them wait for a slot).
    col = Collector()
    t_busy = time.time()
    for rid, prompt, s in reqs:
        submit(pb, link, rid, prompt, temperature=s.get("temperature", 0.0), top_k=s.get("top_k", 0),
               top_p=s.get("top_p", 1.0), seed=s.get("seed", 0), top_logprobs=3 if rid == 100 else 0)
    done = col.run(link, {r[0] for r in reqs}, 120)
    check(done, f"all 8 requests finish ({len(col.final)} of 8)")
    t_done = time.time()
    link.pump(0.5)  # the heartbeat after the busy window bounds its last gap
    # the gaps around and inside the busy window (it can be shorter than one heartbeat period)
    _, gap = hb_gaps(link, t_busy - 0.5, t_done + 0.5)
    check(gap <= 0.35, f"heartbeats while busy ({t_done - t_busy:.2f} s): largest gap {gap:.3f} s")
    for rid, prompt, s in reqs:
        got, fin = col.tokens.get(rid), col.final.get(rid)
        check(got == ref[rid], f"request {rid} ({'seeded' if s else 'greedy'}, {len(prompt)} prompt ids): tokens equal "
              f"the worker's --generate" + ("" if got == ref[rid] else f" (got {got}, want {ref[rid]})"))
        check(fin is not None and fin.finish == pb.FINISH_LENGTH and fin.completion_tokens == N_GEN and
              fin.prompt_tokens == len(prompt) and len(col.lps[rid]) == len(got or []),
              f"request {rid}: FINISH_LENGTH, usage {fin.prompt_tokens if fin else '-'}+"
              f"{fin.completion_tokens if fin else '-'}, one logprob per token")
    check(col.dup_in_frame == 0 and col.after_final == 0,
          f"one TokenEvent per request per frame, nothing after the finish ({col.dup_in_frame}, {col.after_final})")
    t100, ids100, lps100 = col.tokens.get(100, []), col.top_ids.get(100, []), col.top_lps.get(100, [])
    check(len(ids100) == 3 * len(t100) == len(lps100) and
          all(ids100[3 * k] == t for k, t in enumerate(t100)) and
          all(abs(lps100[3 * k] - col.lps[100][k]) < 1e-6 for k in range(len(t100))) and
          all(lps100[3 * k] >= lps100[3 * k + 1] >= lps100[3 * k + 2] for k in range(len(t100))),
          "top_logprobs 3: three alternatives per token, best first, greedy token on top")
    check(all(len(col.top_ids.get(r[0], [])) == 0 for r in reqs[1:]), "no alternatives without top_logprobs")
    link.pump(0.5)
    hb = link.hb[-1][1]
    check(hb.tokens_generated - hb0.tokens_generated == 8 * N_GEN and hb.steps > hb0.steps and
          hb.step_seconds_total > hb0.step_seconds_total and hb.last_step_ms > 0,
          f"heartbeat counters: +{hb.tokens_generated - hb0.tokens_generated} tokens (want {8 * N_GEN}), "
          f"+{hb.steps - hb0.steps} steps, {hb.step_seconds_total:.3f} s in steps, last {hb.last_step_ms:.2f} ms")
    check(hb.kv_blocks_free == total, f"after the batch every block is free ({hb.kv_blocks_free}/{total})")

    # Cancel a long request in the middle; a repeated id and an unknown cancel change nothing.
    def has(rid, cond):
        return lambda m: m.WhichOneof("body") == "events" and any(e.request_id == rid and cond(e)
                                                                   for e in m.events.events)
    i0 = len(link.events)
    long_prompt = reqs[3][1]
    long_max = CTX - len(long_prompt)
    submit(pb, link, 500, long_prompt, max_tokens=long_max)
    link.wait_for(has(500, lambda e: len(e.tokens) > 0), 30)
    submit(pb, link, 500, long_prompt, max_tokens=4)  # repeated id
    cancel(pb, link, 987654)                            # unknown id
    link.wait_for(has(500, lambda e: e.finish == pb.FINISH_ERROR), 10)
    m = link.wait_for(lambda m: m.WhichOneof("body") == "heartbeat", 2)
    check(m is not None and m.heartbeat.running == 1 and m.heartbeat.kv_blocks_free < total,
          f"a running request holds KV ({m.heartbeat.kv_blocks_free if m else '-'}/{total} free)")
    check(m is not None and list(m.heartbeat.kv_group_blocks_free) == [m.heartbeat.kv_blocks_free] and
          list(m.heartbeat.kv_group_blocks_used) == [total - m.heartbeat.kv_blocks_free],
          "its one group's figures are the heartbeat's free and used blocks")
    cancel(pb, link, 500)
    t_cancel = time.time()
    link.wait_for(has(500, lambda e: e.finish == pb.FINISH_CANCELLED), 30)
    evs = [e for _, f in link.events[i0:] for e in f.events if e.request_id == 500]
    errs = [e for e in evs if e.finish == pb.FINISH_ERROR]
    fins = [e for e in evs if e.finish == pb.FINISH_CANCELLED]
    n_tok = sum(len(e.tokens) for e in evs)
    check(len(errs) == 1 and "already in flight" in errs[0].error and not errs[0].tokens,
          f"repeated request_id -> FINISH_ERROR ({errs[0].error if errs else 'no error event'!r})")
    check(len(fins) == 1 and not fins[0].tokens and fins[0].completion_tokens == n_tok and 0 < n_tok < long_max and
          evs[-1] is fins[0],
          f"cancel -> one FINISH_CANCELLED without a token, after {n_tok} tokens "
          f"(completion_tokens {fins[0].completion_tokens if fins else '-'})")
    m = link.wait_for(lambda m: m.WhichOneof("body") == "heartbeat" and time.time() > t_cancel and
                      m.heartbeat.kv_blocks_free == total and m.heartbeat.running == 0, 3)
    check(m is not None, "after the cancel a heartbeat shows every KV block free again")

    # An invalid request fails alone; the next one still works.
    submit(pb, link, 600, reqs[0][1], top_p=2.0, temperature=0.7)
    m = link.wait_for(lambda m: m.WhichOneof("body") == "events" and any(e.request_id == 600 for e in m.events.events), 10)
    ev = [e for e in m.events.events if e.request_id == 600][0] if m else None
    check(ev is not None and ev.finish == pb.FINISH_ERROR and "top_p" in ev.error and not ev.tokens,
          f"top_p 2 -> FINISH_ERROR: {ev.error if ev else 'nothing'!r}")
    col = Collector()
    submit(pb, link, 601, reqs[0][1])
    check(col.run(link, {601}, 60) and col.tokens.get(601) == ref[100], "the next request still works")

    # Link loss with a request in flight: the engine cancels it, reconnects and says hello again.
    submit(pb, link, 700, long_prompt, max_tokens=CTX - len(long_prompt))
    link.wait_for(lambda m: m.WhichOneof("body") == "events" and any(e.request_id == 700 for e in m.events.events), 30)
    link.close()
    t_drop = time.time()
    link, hello2 = accept(pb, srv, 15)
    check(hello2 is not None and hello2.engine_id == hello.engine_id and hello2.kv_blocks_total == total,
          f"after a dropped connection the engine reconnects with a new hello in {time.time() - t_drop:.1f} s")
    if hello2 is None:
        failures.append("engine log:\n" + log_tail(log1))
        return
    m = link.wait_for(lambda m: m.WhichOneof("body") == "heartbeat", 2)
    check(m is not None and m.heartbeat.kv_blocks_free == total and m.heartbeat.running == 0 and
          m.heartbeat.waiting == 0, "the request in flight was cancelled: every block free after reconnecting")
    col = Collector()
    submit(pb, link, 700, reqs[1][1], temperature=0.8, top_k=40, top_p=0.95, seed=101)
    check(col.run(link, {700}, 60) and col.tokens.get(700) == ref[101],
          "requests work on the new link (the old request id is free again)")

    # A malformed frame, then a message an engine never receives: each ends the link.
    for what, data in (("a malformed frame", struct.pack(">I", 5) + b"\xff\xff\xff\xff\xff"),
                       ("an oversized frame", struct.pack(">I", 64 << 20)),
                       ("a heartbeat sent to the engine",
                        None)):
        if data is None:
            m = pb.EngineMessage()
            m.heartbeat.running = 1
            link.send(m)
        else:
            link.send_raw(data)
        closed = link.wait_for(lambda m: False, 5) is None and link.closed
        link.close()
        link, h = accept(pb, srv, 15)
        check(closed and h is not None, f"{what}: the engine drops the link and registers again")
        if h is None:
            failures.append("engine log:\n" + log_tail(log1))
            return
    check(eng.poll() is None, "the engine survived every bad frame")
    col = Collector()
    submit(pb, link, 800, reqs[2][1])
    check(col.run(link, {800}, 60) and col.tokens.get(800) == ref[102], "and still serves requests")

    rc = stop_engine(eng, "engine 1 (connected)")
    log = log_tail(log1, 20000)
    check("engine stopped" in log and "Abort" not in log and "error:" not in log,
          f"clean shutdown in the log (rc {rc})")
    link.close()


def kv_budget_expect(model, budget, max_seqs, tp, chunk, ctx):
    """Global blocks and the longest context of an fp32 CPU engine with a KV budget, from
    config.json: the budget less max_seqs sliding rings (window history + the prefix cache's
    chunk margin), in global blocks of K + V for this rank's KV heads."""
    c = json.load(open(os.path.join(model, "config.json")))
    c = c.get("text_config", c)
    n = c["num_hidden_layers"]
    if c.get("layer_types"):
        n_global = sum(1 for x in c["layer_types"] if x == "full_attention")
    else:
        n_global = sum(1 for i in range(n) if (i + 1) % c.get("sliding_window_pattern", 6) == 0)
    row = max(1, c["num_key_value_heads"] // tp) * c["head_dim"] * 2 * 4
    ring = -(-(c["sliding_window"] - 1) // 16) + 1 + -(-chunk // 16)
    blocks = (budget - max_seqs * ring * 16 * row * (n - n_global)) // (16 * row * n_global)
    return blocks, min(ctx, c["max_position_embeddings"], blocks * 16)


def run_engine2(pb, model):
    # Nothing listens yet: the port is bound but not listening (connection refused).
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    log2 = os.path.join(SCRATCH, "engine2.log")
    with open(log2, "wb") as lf:
        # --kv-mem 1 with 16 sequences: their sliding rings leave room for few global blocks, so
        # the pool, not --ctx (the model's 4096), bounds the context the hello reports.
        eng = start_engine(model, port, ("--engine-id", "eng-two", "--served-name", "medgemma-test",
                                         "--kv-mem", "1", "--max-seqs", "16", "--ctx", "4096"), log=lf)
    try:
        time.sleep(4.0)
        check(eng.poll() is None, "the engine keeps retrying while the coordinator is away")
        srv.listen(4)
        t0 = time.time()
        link, hello = accept(pb, srv, 60)
        check(hello is not None and hello.engine_id == "eng-two" and hello.model_id == "medgemma-test",
              f"connects once the coordinator listens ({time.time() - t0:.1f} s), with --engine-id and "
              f"--served-name ({hello.engine_id if hello else '-'}, {hello.model_id if hello else '-'})")
        if hello is not None:
            blocks, servable = kv_budget_expect(model, 1 << 20, 16, 2, 64, 4096)
            check((hello.kv_blocks_total, hello.max_context) == (blocks, servable),
                  f"--kv-mem 1: {blocks} global blocks and a context of {servable} (the pool's, under --ctx 4096) "
                  f"({hello.kv_blocks_total}, {hello.max_context})")
        if link:
            link.close()
        srv.close()
        time.sleep(1.5)  # retrying again now: connection refused
        check(eng.poll() is None, "the engine retries after the coordinator went away")
        stop_engine(eng, "engine 2 (retrying)")
        log = log_tail(log2, 20000)
        check("cannot reach the coordinator" in log and log.count("cannot reach the coordinator") <= 3,
              f"retries are logged, at most every 5 s ({log.count('cannot reach the coordinator')} lines)")
    finally:
        kill_session(eng.pid)
        srv.close()


def run_engine3(pb, model, reqs, ref):
    """Mutual TLS against a fake coordinator on Python's ssl (certificates made at test time by
    tests/net/make_test_certs.sh): the engine checks the coordinator's certificate and role and
    presents its own; then a coordinator that trusts another CA refuses it, and the engine says so."""
    certs = os.path.join(SCRATCH, "certs")
    subprocess.run(["bash", os.path.join(HERE, "..", "net", "make_test_certs.sh"), certs], check=True)
    c, o = os.path.join(certs, "cluster"), os.path.join(certs, "other")

    def server_ctx(ca):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(f"{c}/coordinator.crt", f"{c}/coordinator.key")
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    log3 = os.path.join(SCRATCH, "engine3.log")
    with open(log3, "wb") as lf:
        eng = start_engine(model, port, ("--engine-id", "eng-tls", "--cluster-ca", f"{c}/ca.crt", "--cluster-cert",
                                         f"{c}/engine-e1.crt", "--cluster-key", f"{c}/engine-e1.key"), log=lf)
    try:
        srv.settimeout(180)
        conn, _ = srv.accept()
        tls = server_ctx(f"{c}/ca.crt").wrap_socket(conn, server_side=True)
        peer = dict(x[0] for x in tls.getpeercert()["subject"])
        check(peer.get("organizationalUnitName") == "engine" and tls.version() == "TLSv1.3",
              f"TLS: the engine presents its engine certificate over {tls.version()} ({peer})")
        link = Link(pb, tls)
        m = link.recv(30)
        check(m is not None and m.WhichOneof("body") == "hello" and m.hello.engine_id == "eng-tls",
              "TLS: the hello arrives over the encrypted link")
        col = Collector()
        submit(pb, link, 900, reqs[0][1])
        check(col.run(link, {900}, 60) and col.tokens.get(900) == ref[100],
              "TLS: a request over the encrypted link gives the reference tokens")
        link.close()
        # The same port now answers with a coordinator that trusts another CA.
        refused = 0
        t0 = time.time()
        while time.time() - t0 < 8 and refused < 2:
            srv.settimeout(10)
            try:
                conn, _ = srv.accept()
                server_ctx(f"{o}/ca.crt").wrap_socket(conn, server_side=True).close()
            except ssl.SSLError:
                refused += 1
            except socket.timeout:
                break
        time.sleep(0.5)
        log = log_tail(log3, 20000)
        check(refused >= 1 and "refused this side's certificate" in log and "peer_rejected" in log,
              f"TLS: refused by a coordinator of another CA, the engine logs why ({refused} refusals): "
              f"{next((ln for ln in log.splitlines() if 'refused this side' in ln), log[-300:])}")
        stop_engine(eng, "engine 3 (TLS)")
    finally:
        kill_session(eng.pid)
        srv.close()


if __name__ == "__main__":
    sys.exit(main())
