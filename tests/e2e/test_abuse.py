"""Limits under abuse, end to end: a real coordinator with small limits and one real mpirun engine,
driven over raw sockets, python3 http.client and grpcio.

  --http-idle-timeout 2: a silent connection, an idle keep-alive connection, a request whose body
      stops halfway and one whose body trickles in are each closed after about 2 s (the stalled
      one is logged as 499);
  --max-http-connections 8: with 8 stalled connections a 9th is closed at once with no answer;
      once the idle timeout has freed the slots, new connections are served again;
  --max-http-header-bytes 8192: 16 KiB of headers get 431, 3 KiB pass;
  --max-body-total 131072: with two bodies of 60000 bytes held open, a third gets 503; after
      they close, bodies are read again;
  --max-body-bytes 65536: a Content-Length over the limit gets 413 before any of the body is
      sent; exactly the limit is read (and parsed); a 20 MiB chunked body gets 413 and is never
      buffered (RSS); a gRPC message over the limit gets RESOURCE_EXHAUSTED;
  --max-grpc-streams 2: three streams on one connection run two at a time (the third waits in
      the client), a second connection gets its own two; all finish;
  10,000 random invalid bodies (bad JSON, wrong types, huge numbers, bad UTF-8, truncated,
      nested too deep) over 4 keep-alive connections, plus 1,000 malformed gRPC messages: every
      one is refused with 400 / INVALID_ARGUMENT, the coordinator keeps serving, and its RSS
      after them is within 8 MiB of its RSS after a warm-up of the same traffic.

Every check is followed by a good request. usage: test_abuse.py BUILD_DIR TOKENIZER_JSON SCRATCH
"""
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, exit_status  # noqa: E402
from cluster import Cluster, signal_session  # noqa: E402
from test_grpc import compile_protos  # noqa: E402

import grpc  # noqa: E402

MODEL = "tiny-medgemma"
KEY = "abuse-test-key-0123456789abcdef"
IDLE_S = 2
MAX_CONN = 8
MAX_BODY = 65536
MAX_BODY_TOTAL = 2 * MAX_BODY
MAX_HEADER = 8192
RSS_BOUND_MIB = 8          # plain build: allocator noise after warm-up is well under 1 MiB
RSS_BOUND_ASAN_MIB = 48    # ASan keeps freed memory in its quarantine (limited to 16 MiB here)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sanitized(build):
    try:
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            return any(line.strip() == "GS_SANITIZE:BOOL=ON" for line in f)
    except OSError:
        return False


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def until_closed(s, timeout=10.0):
    """Reads until the server closes s: (seconds waited, bytes received, closed?)."""
    t0 = time.time()
    got = b""
    s.settimeout(0.2)
    while time.time() - t0 < timeout:
        try:
            d = s.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.time() - t0, got, True
        if not d:
            return time.time() - t0, got, True
        got += d
    return time.time() - t0, got, False


def head(method, path, extra=(), clen=None, chunked=False, key=KEY):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {key}",
             "Content-Type: application/json", *extra]
    if clen is not None:
        lines.append(f"Content-Length: {clen}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(data):
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


# ---- the invalid bodies ---------------------------------------------------------------------------

WRONG_TYPE = [("model", 5), ("model", True), ("model", ["m"]), ("max_tokens", "12"), ("max_tokens", [4]),
              ("max_tokens", 1.5), ("max_tokens", True), ("temperature", "hot"), ("temperature", [0]),
              ("temperature", {"v": 1}), ("top_p", "x"), ("top_k", 2.5), ("top_k", "5"), ("seed", "42"),
              ("seed", 1.25), ("stop", 5), ("stop", [1, 2]), ("stop", {"a": "b"}), ("stream", "yes"), ("stream", 1),
              ("n", "1"), ("logprobs", "yes"), ("stream_options", 7)]
WRONG_INPUT = {"chat": [("messages", "x"), ("messages", 5), ("messages", [1]), ("messages", {"role": "user"}),
                        ("messages", [{"role": 1, "content": "x"}]), ("messages", [{"role": "user"}]),
                        ("messages", [{"role": "user", "content": 5}])],
               "completions": [("prompt", 5), ("prompt", {"a": "b"}), ("prompt", ["a", 5]), ("prompt", [5.5]),
                               ("prompt", [[]]), ("prompt", [-1]), ("prompt", True),
                               ("prompt", [])]}
HUGE = {"both": [("max_tokens", "1e308"), ("max_tokens", "99999999999999999999999"),
                 ("max_tokens", "-99999999999999999999"), ("max_tokens", "1e-300"), ("temperature", "1e400"),
                 ("temperature", "-1e400"), ("top_k", "9223372036854775808"), ("top_p", "1e300"),
                 ("n", "1000000"), ("seed", "1e30"), ("repetition_penalty", "-1e308"), ("min_p", "-0.5")],
        "chat": [("top_logprobs", "1000000000")], "completions": [("logprobs", "1000000000")]}
OUT_OF_RANGE = {"both": [("temperature", -1), ("top_p", 0), ("top_k", -2), ("stop", [""]), ("stop", ["a"] * 50),
                         ("max_tokens", 0), ("n", 9), ("n", 0), ("min_p", 1.5), ("stream_options", {"include_usage": True})],
                "chat": [("messages", []), ("messages", [{"role": "wizard", "content": "x"}]),
                         ("messages", [{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]),
                         ("top_logprobs", 3)],
                "completions": [("logprobs", 21), ("logprobs", -1)]}
BAD_JSON = ['{', '{"prompt": ', '{"prompt": "x",}', '[1, 2', '{"a": 1}}', 'nul', 'true false', '{"prompt": "x" "y"}',
            "{'prompt': 'x'}", '{"prompt": "x\\q"}', '', '{"prompt": "x", "max_tokens": 4', '{"prompt": .5}',
            '{"prompt": "\\ud800"', '{"prompt": NaN}', '"just a string"', '[]',
            '42']
BAD_UTF8 = [b"\xff", b"\xfe\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xe2\x82",
            b"\xf4\x90\x80\x80"]


def invalid_body(rng, route):
    """(kind, body bytes): never a valid request for route."""
    api = "chat" if route == "/v1/chat/completions" else "completions"
    base = ({"messages": [{"role": "user", "content": "Name a symptom."}]} if api == "chat" else
            {"prompt": "The patient"})
    base["max_tokens"] = 4
    kind = rng.choice(["bad_json", "wrong_type", "huge_number", "bad_utf8", "truncated", "deep", "out_of_range"])
    if kind == "bad_json":
        body = rng.choice(BAD_JSON + ["garbage"])
        if body == "garbage":
            body = "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(1, 300)))
        return kind, body.encode()
    if kind in ("wrong_type", "out_of_range"):
        table = WRONG_TYPE + WRONG_INPUT[api] if kind == "wrong_type" else OUT_OF_RANGE["both"] + OUT_OF_RANGE[api]
        field, value = rng.choice(table)
        return kind, json.dumps(dict(base, **{field: value})).encode()
    if kind == "huge_number":
        field, lit = rng.choice(HUGE["both"] + HUGE[api])
        base.pop(field, None)  # (cJSON keeps the first of two equal keys)
        return kind, (json.dumps(base)[:-1] + ', "%s": %s}' % (field, lit)).encode()
    if kind == "bad_utf8":
        text = "Patient".encode()[:rng.randrange(0, 8)] + rng.choice(BAD_UTF8) + b" notes"
        body = json.dumps(base).encode()
        return kind, body.replace(b"Name a symptom." if api == "chat" else b"The patient", text)
    if kind == "truncated":
        d = dict(base, temperature=0.5, stop=["\n\n"])
        d["messages" if api == "chat" else "prompt"] = (
            [{"role": "user", "content": "A fairly long prompt " * rng.randrange(1, 20)}] if api == "chat" else
            "A fairly long prompt " * rng.randrange(1, 20))
        s = json.dumps(d)
        return kind, s[:rng.randrange(1, len(s))].encode()
    n = rng.randrange(1100, 5000)  # deeper than cJSON's nesting limit (1000)
    return kind, (json.dumps(base)[:-1] + ', "stop": ' + "[" * n + "]" * n + "}").encode()


def blast(port, bodies, n_threads):
    """Posts every body over n_threads keep-alive connections: {status: count}, examples."""
    statuses, examples, lock = {}, {}, threading.Lock()
    chunks = [bodies[i::n_threads] for i in range(n_threads)]

    def worker(part):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        for route, (kind, body) in part:
            for attempt in range(3):
                try:
                    conn.request("POST", route, body=body, headers=headers)
                    r = conn.getresponse()
                    r.read()
                    st = r.status
                    break
                except (http.client.HTTPException, OSError):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    st = "error"
            with lock:
                statuses[st] = statuses.get(st, 0) + 1
                if st != 400:
                    examples.setdefault(st, (route, kind, body[:200]))
        conn.close()

    th = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in th:
        t.start()
    for t in th:
        t.join()
    return statuses, examples


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
    asan = sanitized(build)
    if asan:
        os.environ["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=16"

    good = {"model": MODEL, "messages": [{"role": "user", "content": "Name a symptom."}], "max_tokens": 4,
            "temperature": 0}
    with Cluster(build, model, engines=1, tp=1, api_key=KEY,
                 coord_args=["--http-idle-timeout", str(IDLE_S), "--max-http-connections", str(MAX_CONN),
                             "--max-body-bytes", str(MAX_BODY), "--max-body-total", str(MAX_BODY_TOTAL),
                             "--max-http-header-bytes", str(MAX_HEADER),
                             "--max-grpc-streams", "2", "--heartbeat-timeout", "60"],
                 engine_args=["--ctx", "512", "--max-seqs", "8", "--threads", "1"],
                 logdir=os.path.join(scratch, "logs")) as cl:
        pid = cl.coord.pid

        def good_http(what):
            c = http.client.HTTPConnection("127.0.0.1", cl.http_port, timeout=60)
            c.request("POST", "/v1/chat/completions", body=json.dumps(good),
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            r = c.getresponse()
            body = r.read()
            c.close()
            check(r.status == 200 and json.loads(body)["choices"], f"... then a good request is served ({what})")

        def count(status):
            return cl.metrics().get(f'gemmashard_requests_total{{api="http",status="{status}"}}', 0)

        # ---- idle and slow connections ------------------------------------------------------------
        s = connect(cl.http_port)
        t, got, closed = until_closed(s)
        check(closed and not got and IDLE_S - 0.5 <= t <= IDLE_S + 2.5,
              f"a connection that sends nothing is closed after {t:.2f} s (--http-idle-timeout {IDLE_S})")
        s.close()
        s = connect(cl.http_port)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        t, got, closed = until_closed(s)
        check(closed and status_of(got) == 200 and IDLE_S - 0.5 <= t <= IDLE_S + 2.5,
              f"an idle keep-alive connection is closed {t:.2f} s after its answer")
        s.close()
        n499 = count(499)
        s = connect(cl.http_port)
        body = json.dumps(good).encode()
        s.sendall(head("POST", "/v1/chat/completions", clen=len(body)) + body[:len(body) // 2])
        t, got, closed = until_closed(s)
        check(closed and not got and IDLE_S - 0.5 <= t <= IDLE_S + 2.5,
              f"a request whose body stops halfway is closed after {t:.2f} s, unanswered")
        s.close()
        time.sleep(0.2)
        check(count(499) == n499 + 1, "... and counted as 499 (the client's request was never answered)")
        alines = [ln for ln in cl.log("coordinator").splitlines() if " access " in ln and "status=499" in ln]
        check(len(alines) == 1 and "route=/v1/chat/completions" in alines[0], f"... and logged: {alines}")
        s = connect(cl.http_port)
        s.sendall(head("POST", "/v1/chat/completions", clen=len(body)))
        t0, closed, sent = time.time(), False, 0
        try:
            for b in body:
                s.sendall(bytes([b]))
                sent += 1
                time.sleep(0.4)
                if time.time() - t0 > IDLE_S + 3:
                    break
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        if not closed:
            _, _, closed = until_closed(s, timeout=1)
        t = time.time() - t0
        check(closed and t <= IDLE_S + 2.5 and sent < len(body),
              f"a body trickled in (1 byte / 0.4 s) is cut off after {t:.2f} s ({sent} of {len(body)} bytes)")
        s.close()
        good_http("after idle and slow connections")

        # ---- the connection cap -------------------------------------------------------------------
        stalled = []
        for _ in range(MAX_CONN):
            s = connect(cl.http_port)
            s.sendall(head("POST", "/v1/chat/completions", clen=1000) + b'{"messages": ')
            stalled.append(s)
        time.sleep(0.3)
        t_full = time.time()
        refused = []
        for _ in range(3):
            s = connect(cl.http_port)
            try:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            t, got, closed = until_closed(s, timeout=1.5)
            refused.append((closed, got, t))
            s.close()
        check(all(c and not g and t < 1.0 for c, g, t in refused),
              f"with {MAX_CONN} connections open, new ones are closed at once without an answer "
              f"({[round(t, 3) for _, _, t in refused]} s)")
        for s in stalled:
            until_closed(s)
            s.close()
        served_after = None
        while time.time() - t_full < IDLE_S + 5:
            try:
                c = http.client.HTTPConnection("127.0.0.1", cl.http_port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    served_after = time.time() - t_full
                    c.close()
                    break
                c.close()
            except (http.client.HTTPException, OSError):
                time.sleep(0.1)
        check(served_after is not None and served_after >= IDLE_S - 0.5,
              f"when the idle timeout frees the slots new connections are served again (after {served_after} s)")
        check("new connections are closed at once" in cl.log("coordinator"),
              "the coordinator logs that the connection limit was reached")
        good_http("after the connection cap")

        # ---- header and body limits ----------------------------------------------------------------
        for pad, want in [(16000, 431), (3000, 200)]:
            s = connect(cl.http_port)
            s.sendall(head("GET", "/v1/models", extra=[f"X-Pad: {'p' * pad}"]))
            _, got, _ = until_closed(s, timeout=5)
            s.close()
            check(status_of(got) == want, f"{pad} bytes of headers -> {status_of(got)} (want {want})")
        s = connect(cl.http_port)
        t0 = time.time()
        s.sendall(head("POST", "/v1/chat/completions", clen=100_000_000))
        t, got, closed = until_closed(s, timeout=5)
        s.close()
        check(status_of(got) == 413 and b"request_too_large" in got and closed and t < 1.5,
              f"Content-Length 100 MB -> 413 at once, before any of the body ({t:.2f} s), then closed")
        for n, want in [(MAX_BODY, 400), (MAX_BODY + 1, 413)]:
            body = b'{"prompt": 1}' + b" " * (n - 13)
            c = http.client.HTTPConnection("127.0.0.1", cl.http_port, timeout=30)
            c.request("POST", "/v1/completions", body=body,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            r = c.getresponse()
            text = r.read()
            c.close()
            check(r.status == want, f"a body of {n} bytes (limit {MAX_BODY}) -> {r.status}: {text[:120]!r}")
        # the budget of all bodies held at once: two connections hold 64 KiB buffers each (60000 of
        # 65000 bytes sent), so a third body does not fit and gets 503; once they are gone it does
        held = []
        for _ in range(2):
            s = connect(cl.http_port)
            s.sendall(head("POST", "/v1/completions", clen=65000) + b'{"prompt": 1}' + b" " * (60000 - 13))
            held.append(s)
        time.sleep(0.4)
        s = connect(cl.http_port)
        small = b'{"prompt": 1}' + b" " * 9987
        s.sendall(head("POST", "/v1/completions", clen=len(small)) + small)
        _, got, _ = until_closed(s, timeout=1.5)
        s.close()
        check(status_of(got) == 503 and b"server_busy" in got and b"--max-body-total" in got,
              f"with {2 * 65536} bytes of bodies held (--max-body-total {MAX_BODY_TOTAL}) a third body -> "
              f"{status_of(got)}: {got[-160:]!r}")
        for s in held:
            s.close()
        time.sleep(0.4)
        c = http.client.HTTPConnection("127.0.0.1", cl.http_port, timeout=30)
        c.request("POST", "/v1/completions", body=b'{"prompt": 1}' + b" " * (MAX_BODY - 13),
                  headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        c.close()
        check(r.status == 400, f"... and once those connections closed, a {MAX_BODY}-byte body is read again "
              f"(-> {r.status}, the usual refusal of an integer prompt)")
        good_http("after the body budget")

        rss0 = rss_kib(pid)
        s = connect(cl.http_port)
        s.sendall(head("POST", "/v1/chat/completions", chunked=True))
        chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
        t0 = time.time()
        for _ in range(320):  # 20 MiB
            s.sendall(chunk)
        s.sendall(b"0\r\n\r\n")
        _, got, _ = until_closed(s, timeout=30)
        s.close()
        rss1 = rss_kib(pid)
        check(status_of(got) == 413 and b"larger than the limit" in got,
              f"a 20 MiB chunked body -> {status_of(got)} once it is all in")
        check(rss1 - rss0 < 8 * 1024, f"... and was never buffered: RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB")

        ch = grpc.insecure_channel(f"127.0.0.1:{cl.grpc_port}")
        stub = pbg.InferenceStub(ch)
        md = [("authorization", f"Bearer {KEY}")]
        try:
            stub.Generate(pb.GenerateRequest(prompt="x" * (MAX_BODY + 100), max_tokens=2), metadata=md, timeout=10)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        check(code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"a gRPC message over --max-body-bytes -> {code}")
        good_http("after the size limits")

        # ---- concurrent gRPC calls per connection --------------------------------------------------
        # a connection of its own (grpcio shares one between channels to the same address)
        ch2 = grpc.insecure_channel(f"127.0.0.1:{cl.grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)])
        stub2 = pbg.InferenceStub(ch2)
        results = {}

        def stream(name, st):
            try:
                chunks = list(st.GenerateStream(pb.GenerateRequest(prompt=f"Case {name}", max_tokens=30,
                                                                   temperature=0), metadata=md, timeout=60))
                results[name] = ("OK", chunks[-1].HasField("finish_reason"))
            except grpc.RpcError as e:
                results[name] = (e.code().name, False)

        sid = cl.engines[0].pid
        signal_session(sid, signal.SIGSTOP)  # every stream stays in flight
        try:
            th = [threading.Thread(target=stream, args=(f"a{i}", stub)) for i in range(3)]
            for x in th:
                x.start()
            time.sleep(1.5)
            on_a = cl.metrics().get("gemmashard_requests_in_flight", -1)
            tb = threading.Thread(target=stream, args=("b0", stub2))
            tb.start()
            th.append(tb)
            time.sleep(1.0)
            on_ab = cl.metrics().get("gemmashard_requests_in_flight", -1)
        finally:
            signal_session(sid, signal.SIGCONT)
        for x in th:
            x.join(90)
        check(on_a == 2 and on_ab == 3,
              f"--max-grpc-streams 2: 3 calls on one connection run 2 at a time ({on_a:.0f} in flight); a second "
              f"connection adds its own ({on_ab:.0f})")
        check(len(results) == 4 and all(v == ("OK", True) for v in results.values()),
              f"... and every call finishes once the others do: {results}")

        # ---- 10,000 invalid bodies ------------------------------------------------------------------
        rng = random.Random(20240614)
        routes = ["/v1/chat/completions", "/v1/completions"]

        def bodies(n):
            out = []
            for _ in range(n):
                route = rng.choice(routes)
                out.append((route, invalid_body(rng, route)))
            return out

        raw_gen = ch.unary_unary("/gemmashard.v1.Inference/Generate", request_serializer=None,
                                 response_deserializer=None)

        def bad_grpc(n):
            codes = {}
            for _ in range(n):
                junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
                try:
                    raw_gen(junk, metadata=md, timeout=10)
                    k = "OK"
                except grpc.RpcError as e:
                    k = e.code().name
                codes[k] = codes.get(k, 0) + 1
            return codes

        t0 = time.time()
        warm, _ = blast(cl.http_port, bodies(1000), 4)
        bad_grpc(200)
        time.sleep(0.5)
        rss_base = rss_kib(pid)
        t1 = time.time()
        statuses, examples = blast(cl.http_port, bodies(10000), 4)
        t_http = time.time() - t1
        gcodes = bad_grpc(1000)
        time.sleep(0.5)
        rss_after = rss_kib(pid)
        total = sum(statuses.values())
        check(total == 10000 and statuses.get(400) == 10000,
              f"10,000 invalid bodies in {t_http:.1f} s ({10000 / t_http:.0f}/s): every one 400 ({statuses}; "
              f"not 400: {examples})")
        malformed = gcodes.get("INVALID_ARGUMENT", 0)
        check(malformed + gcodes.get("OK", 0) == 1000 and malformed >= 990,
              f"1,000 random gRPC messages: {gcodes}")
        bound = RSS_BOUND_ASAN_MIB if asan else RSS_BOUND_MIB
        grow = (rss_after - rss_base) / 1024
        check(grow < bound, f"RSS after warm-up {rss_base / 1024:.1f} MiB, after 10,000 invalid bodies and 1,000 "
                            f"bad gRPC messages {rss_after / 1024:.1f} MiB: grew {grow:.2f} MiB (bound {bound})")
        st, h = cl.health()
        check(st == 200 and h["engines"] == 1, "the coordinator still serves: /health 200")
        good_http("after the invalid bodies")
        r = stub.Generate(pb.GenerateRequest(prompt="Still here", max_tokens=3, temperature=0), metadata=md,
                          timeout=30)
        check(r.usage.completion_tokens > 0, "... and gRPC generates")
        print(f"abuse traffic took {time.time() - t0:.1f} s")
        ch.close()
        ch2.close()
    check(cl.coord_rc == 0, f"coordinator exited cleanly ({cl.coord_rc})")
    return exit_status(lambda: cl.log("coordinator"))


if __name__ == "__main__":
    sys.exit(main())
