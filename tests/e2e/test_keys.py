"""API keys, their reload on SIGHUP, and the access log, end to end: a real coordinator with a key
file and one real mpirun engine, driven by python3 grpcio and http.client.

Checks:
  - every bad key file (group-readable, short key, duplicate name or key, extra fields, bad name,
    the reserved name "env", no keys, a non-ASCII key) and `--api-key KEY` are refused at start
    with a message naming the file and line (or the flag) and never the key;
  - each key works over HTTP and gRPC and is counted under its name in /metrics;
  - SIGHUP with a stream in flight on each API (the engine is stopped meanwhile, so both are
    surely still running): the file loses key A and gains key B; A then gets 401 /
    UNAUTHENTICATED, B works, the untouched key C works, and both streams finish normally;
  - a broken new file (short key, group-readable, missing) keeps the keys loaded before;
  - no key ever appears in `ps -o args` of the coordinator, its log, /metrics or the access log;
  - access log: one line per request with the key name, API, route, status and the token counts
    the client got; a marker string sent in prompts over HTTP and gRPC appears in no log
    (coordinator or engine), except with --log-content (then a loud warning at start, and the
    prompt and output in content lines of --access-log FILE).

usage: test_keys.py BUILD_DIR TOKENIZER_JSON SCRATCH
"""
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, exit_status  # noqa: E402
from cluster import Cluster, free_port, signal_session, write_key_file  # noqa: E402
from test_grpc import compile_protos  # noqa: E402

import grpc  # noqa: E402

MODEL = "tiny-medgemma"


def new_key(tag):
    return f"{tag}-{secrets.token_hex(16)}"


class Http:
    """http.client against the cluster: (status, parsed JSON or text)."""

    def __init__(self, port):
        self.port = port

    def call(self, method, path, key=None, body=None, timeout=60):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        r = c.getresponse()
        text = r.read().decode("utf-8", "replace")
        c.close()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


class SseStream(threading.Thread):
    """A streamed chat completion read in a thread: events with their arrival times."""

    def __init__(self, port, key, body):
        super().__init__(daemon=True)
        self.port, self.key, self.body = port, key, body
        self.events, self.status, self.error = [], None, None
        self.first = threading.Event()

    def run(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            c.request("POST", "/v1/chat/completions", body=json.dumps(self.body),
                      headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
            r = c.getresponse()
            self.status = r.status
            while True:
                line = r.readline()
                if not line:
                    break
                line = line.decode().strip()
                if line.startswith("data: "):
                    d = line[6:]
                    self.events.append((time.time(), d if d == "[DONE]" else json.loads(d)))
                    self.first.set()
            c.close()
        except Exception as e:  # noqa: BLE001 - reported by the check
            self.error = repr(e)
        self.first.set()


class GrpcStream(threading.Thread):
    def __init__(self, stub, pb, key, prompt, max_tokens):
        super().__init__(daemon=True)
        self.stub, self.pb, self.key, self.prompt, self.max_tokens = stub, pb, key, prompt, max_tokens
        self.chunks, self.code, self.error = [], None, None
        self.first = threading.Event()

    def run(self):
        try:
            req = self.pb.GenerateRequest(prompt=self.prompt, max_tokens=self.max_tokens, temperature=0)
            for ch in self.stub.GenerateStream(req, metadata=[("authorization", f"Bearer {self.key}")], timeout=120):
                self.chunks.append((time.time(), ch))
                self.first.set()
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            self.code, self.error = e.code(), e.details()
        self.first.set()


def start_refusals(build, model, scratch):
    """Bad key files and --api-key: the coordinator exits at once, naming file and line."""
    coord = os.path.join(build, "coordinator", "gemmashard-coordinator")
    good = new_key("good")
    cases = [
        ("group-readable", [f"alice {good}"], 0o640, "may be read or written by group or others", None),
        ("short key", ["# keys", "", "alice short-key-15c"], 0o600, "line 3: the key is shorter than 16", None),
        ("duplicate name", [f"alice {good}", f"alice {new_key('x')}"], 0o600, "line 2: duplicate key name", None),
        ("duplicate key", [f"alice {good}", "", f"bob {good}"], 0o600, "line 3: the same key as line 1", None),
        ("three fields", [f"alice {good} extra"], 0o600, "line 1: expected \"NAME KEY\" or \"KEY\"", None),
        ("bad name", [f"al/ice {good}"], 0o600, "line 1: a key name is 1 to 64 characters", None),
        ("reserved name", [f"env {good}"], 0o600, "line 1: the name \"env\" is reserved", None),
        ("no keys", ["# nothing", ""], 0o600, "has no keys", None),
        ("non-ASCII key", [f"alice {good}é"], 0o600, "line 1: the key has a character that is not printable", None),
        ("env key too short", [f"alice {good}"], 0o600, "GEMMASHARD_API_KEY: the key is shorter than 16", "short"),
        ("env key equals a file key", [f"alice {good}"], 0o600, "GEMMASHARD_API_KEY is the same key as", good),
    ]
    for name, lines, mode, needle, env_key in cases:
        path = os.path.join(scratch, "bad-keys")
        write_key_file(path, lines)
        os.chmod(path, mode)
        env = dict(os.environ)
        env.pop("GEMMASHARD_API_KEY", None)
        if env_key:
            env["GEMMASHARD_API_KEY"] = env_key
        p = subprocess.run([coord, "--model", model, "--api-key-file", path, "--http", f"127.0.0.1:{free_port()}",
                            "--grpc", f"127.0.0.1:{free_port()}", "--engine-listen", f"127.0.0.1:{free_port()}"],
                           capture_output=True, text=True, timeout=60, env=env)
        keys_in = [w for ln in lines for w in ln.split() if len(w) >= 15]
        check(p.returncode == 1 and needle in p.stderr and (path in p.stderr or env_key) and
              not any(k in p.stderr + p.stdout for k in keys_in),
              f"bad key file ({name}) refused at start: rc {p.returncode}: {p.stderr.strip()[-200:]!r}")
    secret = new_key("argv")
    for argv in (["--api-key", secret], [f"--api-key={secret}"]):
        p = subprocess.run([coord, "--model", model, *argv], capture_output=True, text=True, timeout=60)
        check(p.returncode == 2 and "--api-key-file" in p.stderr and "GEMMASHARD_API_KEY" in p.stderr and
              secret not in p.stderr, f"{argv[0][:10]}... refused without echoing the key: {p.stderr.strip()!r}")


def wait_log(cl, needle, start, timeout=10):
    t0 = time.time()
    while time.time() - t0 < timeout:
        log = cl.log("coordinator")[start:]
        if needle in log:
            return log
        time.sleep(0.05)
    return None


def access_lines(text):
    out = []
    for line in text.splitlines():
        m = re.match(r"^\S+Z access (.*)$", line)
        if m:
            out.append(dict(kv.split("=", 1) for kv in m.group(1).split()))
    return out


def content_fields(line):
    """(prompt, output) of a --log-content line: two JSON strings."""
    dec = json.JSONDecoder()
    i = line.index(" prompt=") + 8
    prompt, j = dec.raw_decode(line, i)
    k = line.index(" output=", j) + 8
    output, _ = dec.raw_decode(line, k)
    return prompt, output


def main():
    build, tok, scratch = sys.argv[1:4]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    compile_protos(repo, os.path.join(scratch, "py"))
    import gemmashard.v1.inference_pb2 as pb
    import gemmashard.v1.inference_pb2_grpc as pbg

    gs = os.path.join(build, "tools", "gemmashard")
    model = os.path.join(scratch, MODEL)
    p = subprocess.run([gs, "make-test-model", "--out", model, "--tokenizer", tok, "--preset", "tiny"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr

    start_refusals(build, model, scratch)

    ka, kb, kc = new_key("alice"), new_key("bob"), new_key("carol")
    kd, short = new_key("dave"), "dave-short-key"
    all_keys = [ka, kb, kc, kd, short]
    marker = "ZQXJ-" + secrets.token_hex(6)
    engine_args = ["--ctx", "512", "--max-seqs", "8", "--threads", "1"]
    with Cluster(build, model, engines=1, tp=1, api_keys={"alice": ka, "carol": kc},
                 coord_args=["--heartbeat-timeout", "60"], engine_args=engine_args,
                 logdir=os.path.join(scratch, "logs")) as cl:
        h = Http(cl.http_port)
        ch = grpc.insecure_channel(f"127.0.0.1:{cl.grpc_port}")
        stub = pbg.InferenceStub(ch)

        def md(k):
            return [("authorization", f"Bearer {k}")]

        def grpc_code(call):
            try:
                call()
                return grpc.StatusCode.OK
            except grpc.RpcError as e:
                return e.code()

        # ---- each key on both APIs; the marker goes through both -----------------------------
        chat = {"model": MODEL, "messages": [{"role": "user", "content": f"Summarise {marker} please"}],
                "max_tokens": 12, "temperature": 0}
        st, a1 = h.call("POST", "/v1/chat/completions", ka, chat)
        check(st == 200 and a1["usage"]["completion_tokens"] > 0, f"alice over HTTP: {st}")
        st, c1 = h.call("POST", "/v1/completions", kc, {"prompt": f"Note {marker}:", "max_tokens": 7,
                                                         "temperature": 0})
        check(st == 200, f"carol over HTTP: {st}")
        g1 = stub.Generate(pb.GenerateRequest(prompt=f"Patient {marker} has", max_tokens=9, temperature=0),
                           metadata=md(ka), timeout=60)
        check(g1.usage.completion_tokens > 0, f"alice over gRPC: {g1.usage.completion_tokens} tokens")
        gch = list(stub.GenerateStream(pb.GenerateRequest(prompt=f"Chart {marker}", max_tokens=5, temperature=0),
                                       metadata=md(kc), timeout=60))
        check(gch and gch[-1].usage.completion_tokens > 0, "carol streams over gRPC")
        st, _ = h.call("POST", "/v1/chat/completions", None, chat)
        check(st == 401, f"no key -> 401 ({st})")
        st, _ = h.call("POST", "/v1/chat/completions", kb, chat)
        check(st == 401, f"bob's key before it is in the file -> 401 ({st})")
        check(grpc_code(lambda: stub.ModelInfo(pb.ModelInfoRequest(), metadata=md(kb), timeout=10)) ==
              grpc.StatusCode.UNAUTHENTICATED, "bob's key before it is in the file -> UNAUTHENTICATED")
        st, _ = h.call("GET", "/v1/models", "Bearer-but-" + ka)
        check(st == 401, f"a key with extra bytes -> 401 ({st})")
        st, _ = h.call("GET", "/v1/models", ka[:-1])
        check(st == 401, f"a prefix of a key -> 401 ({st})")

        m = cl.metrics()
        check(m.get('gemmashard_key_requests_total{api="http",key="alice",status="200"}') == 1 and
              m.get('gemmashard_key_requests_total{api="http",key="carol",status="200"}') == 1 and
              m.get('gemmashard_key_requests_total{api="grpc",key="alice",status="OK"}') == 1 and
              m.get('gemmashard_key_requests_total{api="grpc",key="carol",status="OK"}') == 1,
              "/metrics counts requests by key name and API")
        check(m.get('gemmashard_requests_total{api="http",status="401"}', 0) >= 4,
              "the unauthenticated requests are counted without a key name")

        # ---- access log: one line per request, names and token counts, never the marker -----------
        acc = access_lines(cl.log("coordinator"))
        mine = [a for a in acc if a.get("id") != "-" and a.get("status") in ("200", "OK")]
        want = [("alice", "http", "/v1/chat/completions", a1["usage"]),
                ("carol", "http", "/v1/completions", c1["usage"]),
                ("alice", "grpc", "/gemmashard.v1.Inference/Generate",
                 {"prompt_tokens": g1.usage.prompt_tokens, "completion_tokens": g1.usage.completion_tokens}),
                ("carol", "grpc", "/gemmashard.v1.Inference/GenerateStream",
                 {"prompt_tokens": gch[-1].usage.prompt_tokens, "completion_tokens": gch[-1].usage.completion_tokens})]
        for key, api, route, usage in want:
            hit = [a for a in mine if a["key"] == key and a["api"] == api and a["route"] == route]
            check(len(hit) == 1 and hit[0]["prompt_tokens"] == str(usage["prompt_tokens"]) and
                  hit[0]["completion_tokens"] == str(usage["completion_tokens"]) and hit[0]["model"] == MODEL and
                  float(hit[0]["latency_ms"]) > 0, f"access line for {key} over {api} {route}: {hit}")
        refused = [a for a in acc if a.get("status") == "401"]
        check(len(refused) >= 4 and all(a["key"] == "-" and a["id"] == "-" for a in refused),
              f"refused requests are logged with key=- id=- ({len(refused)})")

        # ---- SIGHUP with a stream in flight on each API ----------------------------------------------
        sse = SseStream(cl.http_port, ka, {"model": MODEL, "messages": [{"role": "user", "content": "Go on"}],
                                           "max_tokens": 400, "temperature": 0, "stream": True})
        gst = GrpcStream(stub, pb, ka, "Continue", 400)
        sse.start()
        gst.start()
        sse.first.wait(60)
        gst.first.wait(60)
        sid = cl.engines[0].pid
        signal_session(sid, signal.SIGSTOP)  # both streams stay in flight until SIGCONT
        try:
            time.sleep(0.3)
            inflight = cl.metrics().get("gemmashard_requests_in_flight", 0)
            check(inflight == 2 and sse.status == 200 and gst.code is None,
                  f"both streams in flight before the reload ({inflight:.0f})")
            mark = len(cl.log("coordinator"))
            write_key_file(cl.key_file, ["# alice removed, bob added", f"bob {kb}", f"carol {kc}"])
            cl.reload()
            t_reload = time.time()
            log = wait_log(cl, "API keys reloaded", mark)
            check(log is not None and "2 keys (bob, carol)" in log, "SIGHUP: the coordinator logs the new key names")
            st, _ = h.call("GET", "/v1/models", ka)
            check(st == 401, f"after the reload alice's key gets 401 over HTTP ({st})")
            check(grpc_code(lambda: stub.ModelInfo(pb.ModelInfoRequest(), metadata=md(ka), timeout=10)) ==
                  grpc.StatusCode.UNAUTHENTICATED, "after the reload alice's key gets UNAUTHENTICATED over gRPC")
            st, _ = h.call("GET", "/v1/models", kb)
            check(st == 200, f"after the reload bob's key works over HTTP ({st})")
            check(grpc_code(lambda: stub.ModelInfo(pb.ModelInfoRequest(), metadata=md(kb), timeout=10)) ==
                  grpc.StatusCode.OK, "after the reload bob's key works over gRPC")
            st, _ = h.call("GET", "/v1/models", kc)
            check(st == 200, f"carol's key, in both files, still works ({st})")
        finally:
            signal_session(sid, signal.SIGCONT)
        sse.join(120)
        gst.join(120)
        ev = [e for _, e in sse.events]
        fin = [e["choices"][0]["finish_reason"] for e in ev if isinstance(e, dict) and e.get("choices")]
        late = [t for t, _ in sse.events if t > t_reload]
        check(sse.error is None and ev and ev[-1] == "[DONE]" and fin and fin[-1] in ("stop", "length") and late,
              f"the HTTP stream started with alice's key finished normally ({len(ev)} events, {len(late)} after "
              f"the reload, finish {fin[-1] if fin else None}, {sse.error})")
        glate = [t for t, _ in gst.chunks if t > t_reload]
        check(gst.code == grpc.StatusCode.OK and gst.chunks and gst.chunks[-1][1].HasField("finish_reason") and glate,
              f"the gRPC stream started with alice's key finished normally ({len(gst.chunks)} chunks, {len(glate)} "
              f"after the reload, {gst.code} {gst.error})")
        st, b1 = h.call("POST", "/v1/chat/completions", kb, chat)
        check(st == 200, f"bob generates over HTTP ({st})")
        g2 = stub.Generate(pb.GenerateRequest(prompt="Bob asks", max_tokens=4, temperature=0), metadata=md(kb),
                           timeout=60)
        check(g2.usage.completion_tokens > 0, "bob generates over gRPC")

        # ---- a broken new file keeps the keys loaded before ------------------------------------------
        for name, lines, mode, needle in [
                ("short key", [f"bob {kb}", f"dave {short}"], 0o600, "line 2: the key is shorter than 16"),
                ("group-readable", [f"bob {kb}", f"dave {kd}"], 0o644, "may be read or written by group"),
                ("missing", None, None, "cannot open")]:
            if lines is None:
                os.remove(cl.key_file)
            else:
                write_key_file(cl.key_file, lines)
                os.chmod(cl.key_file, mode)
            mark = len(cl.log("coordinator"))
            cl.reload()
            log = wait_log(cl, "API keys not reloaded", mark)
            check(log is not None and needle in log and cl.key_file in log and "2 keys (bob, carol)" in log,
                  f"SIGHUP with a broken file ({name}): not reloaded, the reason and the old keys logged")
            st_b, _ = h.call("GET", "/v1/models", kb)
            st_d, _ = h.call("GET", "/v1/models", kd)
            check(st_b == 200 and st_d == 401, f"... bob still works ({st_b}), dave is not let in ({st_d})")
        write_key_file(cl.key_file, [f"bob {kb}", f"carol {kc}", kd])
        mark = len(cl.log("coordinator"))
        cl.reload()
        check(wait_log(cl, "API keys reloaded", mark) is not None, "a good file after the broken ones is loaded")
        st, _ = h.call("GET", "/v1/models", kd)
        m = cl.metrics()
        check(st == 200 and m.get('gemmashard_key_requests_total{api="http",key="key-3",status="200"}') == 1,
              f"a key alone on line 3 is named key-3 ({st})")

        # ---- no key anywhere -------------------------------------------------------------------------
        ps = subprocess.run(["ps", "-o", "args=", "-p", str(cl.coord.pid)], capture_output=True, text=True).stdout
        with open(f"/proc/{cl.coord.pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
        mtext = cl.get("/metrics")[1]
        coord_log = cl.log("coordinator")
        check("--api-key-file" in ps and not any(k in ps or k in cmdline for k in all_keys),
              f"no key in `ps -o args` of the coordinator: {ps.strip()}")
        check(not any(k in coord_log for k in all_keys), "no key in the coordinator's log")
        check(not any(k in mtext for k in all_keys) and 'key="bob"' in mtext, "no key in /metrics (names only)")
        logs = {n: cl.log(n) for n in ["coordinator", "engine-0"]}
        check(all(marker not in t for t in logs.values()),
              f"the prompt marker is in no log ({', '.join(f'{n}: {len(t)} bytes' for n, t in logs.items())})")
        check(access_lines(coord_log) and "content id=" not in coord_log, "no content lines without --log-content")
        ch.close()
    check(cl.coord_rc == 0, f"coordinator exited cleanly ({cl.coord_rc})")

    # ---- --log-content: the marker is logged, loudly ----------------------------------------------------
    alog = os.path.join(scratch, "access.log")
    with Cluster(build, model, engines=1, tp=1, api_keys={"alice": ka}, engine_args=engine_args,
                 coord_args=["--log-content", "--access-log", alog], logdir=os.path.join(scratch, "logs2")) as cl:
        h = Http(cl.http_port)
        ch = grpc.insecure_channel(f"127.0.0.1:{cl.grpc_port}")
        stub = pbg.InferenceStub(ch)
        st, a2 = h.call("POST", "/v1/chat/completions", ka, chat)
        g3 = stub.Generate(pb.GenerateRequest(prompt=f"Patient {marker} has", max_tokens=9, temperature=0),
                           metadata=[("authorization", f"Bearer {ka}")], timeout=60)
        time.sleep(0.2)
        with open(alog) as f:
            text = f.read()
        contents = [content_fields(ln) for ln in text.splitlines() if " content id=" in ln]
        check(st == 200 and len(contents) == 2 and all(marker in pr for pr, _ in contents) and
              (f"Patient {marker} has", g3.text) in [(pr[-len(f"Patient {marker} has"):], out) for pr, out in contents]
              and (a2["choices"][0]["message"]["content"] in [out for _, out in contents]),
              f"--log-content: prompt and output of both requests in the access log ({len(contents)} content lines)")
        check(len(access_lines(text)) == 2 and oct(os.stat(alog).st_mode & 0o777) == "0o600",
              "--access-log FILE: the access lines go to the file, created mode 600")
        coord_log = cl.log("coordinator")
        check(coord_log.count("--log-content") >= 3 and "EVERY request" in coord_log,
              "--log-content is announced loudly at start")
        check(marker not in coord_log and marker not in cl.log("engine-0"),
              "with --access-log FILE the marker is only in that file")
        os.rename(alog, alog + ".1")  # log rotation
        mark = len(coord_log)
        cl.reload()
        check(wait_log(cl, "SIGHUP: API keys reloaded", mark) is not None, "SIGHUP with --access-log")
        st, _ = h.call("GET", "/v1/models", ka)
        time.sleep(0.2)
        with open(alog) as f:
            fresh = access_lines(f.read())
        with open(alog + ".1") as f:
            old = access_lines(f.read())
        check(st == 200 and len(fresh) == 1 and fresh[0]["route"] == "/v1/models" and len(old) == 2,
              f"SIGHUP reopens the access log: {len(fresh)} line(s) in the new file, {len(old)} in the rotated one")
        ch.close()
    check(cl.coord_rc == 0, f"coordinator exited cleanly ({cl.coord_rc})")
    return exit_status()


if __name__ == "__main__":
    sys.exit(main())
