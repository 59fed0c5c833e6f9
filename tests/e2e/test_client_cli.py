#!/usr/bin/env python3
"""`gemmashard generate` / `gemmashard chat` (the C core gRPC client) against a fake
gemmashard.v1.Inference server written with python3-grpcio, in this process on a free port.

Checks: streamed text equals the chunks and arrives as they are sent, unary mode, --json,
the summary line, the request fields the server received (sampling, seed, stop strings,
unset fields left unset, messages with roles, the interactive history), the authorization
metadata, the exit code and message of each gRPC error (INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED, UNAUTHENTICATED, INTERNAL, UNAVAILABLE with nothing listening,
DEADLINE_EXCEEDED from --timeout), bad flags, and Ctrl-C cancelling a stream (exit 130).

usage: test_client_cli.py GEMMASHARD PROTO_DIR SCRATCH
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures

GS, PROTO_DIR, SCRATCH = sys.argv[1], sys.argv[2], sys.argv[3]
failures = []

CHUNKS = ["Hel", "lo, ", "wörld", "!"]            # one token each; multi-byte UTF-8 on purpose
KEY = "sekrit-key"


def check(ok, what, detail=""):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(f"{what}: {detail}")


def compile_protos():
    out = os.path.join(SCRATCH, "py")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", PROTO_DIR, f"--python_out={out}",
                    f"--grpc_python_out={out}", os.path.join(PROTO_DIR, "gemmashard/v1/inference.proto")],
                   check=True)
    sys.path.insert(0, out)


os.makedirs(SCRATCH, exist_ok=True)
compile_protos()
import grpc  # noqa: E402
from gemmashard.v1 import inference_pb2 as pb  # noqa: E402
from gemmashard.v1 import inference_pb2_grpc as pbg  # noqa: E402


class Fake(pbg.InferenceServicer):
    """The prompt (or the last user message) picks the behaviour: "err:CODE" aborts with that
    status, "sleep" sleeps 3 s, "slow" sends one chunk then waits for the test and streams on
    until cancelled; anything else is answered with CHUNKS."""

    def __init__(self):
        self.requests = []          # (method, GenerateRequest, metadata dict)
        self.require_key = False
        self.slow_go = threading.Event()
        self.slow_cancelled = threading.Event()

    def _begin(self, method, req, ctx):
        md = dict(ctx.invocation_metadata())
        self.requests.append((method, req, md))
        if self.require_key and md.get("authorization") != "Bearer " + KEY:
            ctx.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key")
        text = req.prompt if req.WhichOneof("input") == "prompt" else \
            (req.messages.messages[-1].content if req.messages.messages else "")
        if text.startswith("err:"):
            ctx.abort(getattr(grpc.StatusCode, text[4:]), f"fake {text[4:]} for the test")
        if text == "sleep":
            time.sleep(3)
        return text

    def Generate(self, req, ctx):
        self._begin("Generate", req, ctx)
        return pb.GenerateResponse(request_id="req-1", text="".join(CHUNKS), token_ids=[11, 12, 13, 14],
                                   finish_reason=pb.STOP,
                                   usage=pb.Usage(prompt_tokens=3, completion_tokens=len(CHUNKS)))

    def GenerateStream(self, req, ctx):
        text = self._begin("GenerateStream", req, ctx)
        if text == "slow":
            # grpcio stops pulling from this generator once the call is cancelled, so the
            # termination callback is what tells: it fires before the 20 s stream could end.
            done = threading.Event()
            ctx.add_callback(lambda: None if done.is_set() else self.slow_cancelled.set())
            yield pb.GenerateChunk(request_id="req-slow", text="first ", token_ids=[1])
            self.slow_go.wait(20)
            for i in range(1000):
                yield pb.GenerateChunk(text=".", token_ids=[2])
                time.sleep(0.02)              # faster than the client's 100 ms poll
            done.set()
            return
        for i, c in enumerate(CHUNKS):
            last = i == len(CHUNKS) - 1
            yield pb.GenerateChunk(request_id="req-1", text=c, token_ids=[11 + i],
                                   finish_reason=pb.STOP if last else pb.FINISH_REASON_UNSPECIFIED,
                                   usage=pb.Usage(prompt_tokens=3, completion_tokens=len(CHUNKS)) if last else None)
            time.sleep(0.02)


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tp"))
from tp_common import free_port  # noqa: E402


fake = Fake()
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
pbg.add_InferenceServicer_to_server(fake, server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
ADDR = f"127.0.0.1:{port}"
ENV = {k: v for k, v in os.environ.items() if k not in ("GEMMASHARD_ADDR", "GEMMASHARD_API_KEY")}


def run(*args, env=None, stdin=subprocess.DEVNULL, addr=True, timeout=60):
    e = dict(ENV, **(env or {}))
    # --addr right after the subcommand, so a later --addr in args wins (the last one counts).
    argv = [GS, args[0]] + (["--addr", ADDR] if addr else []) + list(args[1:])
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, env=e, timeout=timeout,
                       input=stdin if isinstance(stdin, str) else None,
                       stdin=None if isinstance(stdin, str) else stdin)
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t0


def last_request():
    return fake.requests[-1] if fake.requests else (None, None, {})


def expect_error(name, args, rc_want, needle, **kw):
    rc, out, err, dt = run(*args, **kw)
    check(rc == rc_want and needle in err, f"{name}: exit {rc_want} and '{needle}'", f"rc={rc} err={err!r}")
    return rc, out, err, dt


# --- streaming: text, summary, request fields ------------------------------------------------
n0 = len(fake.requests)
rc, out, err, _ = run("generate", "--max-tokens", "7", "--temperature", "0.5", "--seed", "42",
                      "--stop", "END", "--stop", "\n\n", "--top-p", "0.9", "hello there")
check(rc == 0, "generate: exit 0", f"rc={rc} err={err!r}")
check(out == "".join(CHUNKS) + "\n", "generate: stdout is the chunks concatenated + newline", repr(out))
check(re.search(r"\[finish STOP, 3 prompt \+ 4 completion tokens, first token [0-9.]+ s, [0-9.]+ tok/s\]", err)
      is not None, "generate: summary line on stderr", repr(err))
method, req, md = last_request()
check(len(fake.requests) == n0 + 1 and method == "GenerateStream", "generate: one GenerateStream call", method)
check(req is not None and req.WhichOneof("input") == "prompt" and req.prompt == "hello there",
      "generate: prompt received", repr(req))
check(req is not None and req.HasField("max_tokens") and req.max_tokens == 7, "generate: max_tokens 7", repr(req))
check(req is not None and req.HasField("temperature") and abs(req.temperature - 0.5) < 1e-6,
      "generate: temperature 0.5", repr(req))
check(req is not None and abs(req.top_p - 0.9) < 1e-6, "generate: top_p 0.9", repr(req))
check(req is not None and req.HasField("seed") and req.seed == 42, "generate: seed 42", repr(req))
check(req is not None and list(req.stop) == ["END", "\n\n"], "generate: both stop strings in order", repr(req))
check(req is not None and not req.HasField("top_k") and not req.HasField("min_p") and not req.HasField("model"),
      "generate: unset flags stay unset", repr(req))
check("authorization" not in md, "generate: no authorization metadata without a key", repr(md))

# Chunks reach stdout as they arrive: the server holds the stream until the test has read the
# first chunk, so a client that buffers until the end would time out here.
fake.slow_go.clear()
fake.slow_cancelled.clear()
p = subprocess.Popen([GS, "generate", "--addr", ADDR, "slow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     env=ENV, stdin=subprocess.DEVNULL)
got = b""
deadline = time.monotonic() + 15
os.set_blocking(p.stdout.fileno(), False)
while b"first " not in got and time.monotonic() < deadline and p.poll() is None:
    try:
        got += p.stdout.read() or b""
    except BlockingIOError:
        pass
    time.sleep(0.02)
check(b"first " in got, "generate: first chunk printed before the stream ends", repr(got))
fake.slow_go.set()
time.sleep(0.5)
p.send_signal(signal.SIGINT)                   # Ctrl-C mid-stream
try:
    rc = p.wait(timeout=15)
except subprocess.TimeoutExpired:
    p.kill()
    rc = p.wait()
err = p.stderr.read().decode()
check(rc == 130, "Ctrl-C: exit 130", f"rc={rc} err={err!r}")
check("interrupted" in err, "Ctrl-C: says interrupted", repr(err))
check(fake.slow_cancelled.wait(10), "Ctrl-C: the server saw the call cancelled")
p.stdout.close()
p.stderr.close()

# --- unary and --json --------------------------------------------------------------------------
rc, out, err, _ = run("generate", "--no-stream", "hi")
check(rc == 0 and out == "".join(CHUNKS) + "\n", "--no-stream: full text + newline", f"rc={rc} out={out!r} err={err!r}")
check(last_request()[0] == "Generate", "--no-stream: unary Generate called", last_request()[0])
check(re.search(r"\[finish STOP, 3 prompt \+ 4 completion tokens, [0-9.]+ s, [0-9.]+ tok/s\]", err) is not None,
      "--no-stream: summary line", repr(err))
for mode in ([], ["--no-stream"]):
    rc, out, err, _ = run("generate", "--json", *mode, "hi")
    try:
        j = json.loads(out) if out.count("\n") == 1 else None
    except ValueError:
        j = None
    want = {"request_id": "req-1", "text": "".join(CHUNKS), "token_ids": [11, 12, 13, 14], "finish_reason": "STOP",
            "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    check(rc == 0 and j == want, f"--json {' '.join(mode)}: one JSON line with the whole reply", f"rc={rc} out={out!r}")
rc, out, err, _ = run("generate", "--quiet", "hi")
check(rc == 0 and err == "", "--quiet: nothing on stderr", repr(err))

# --- chat: messages with roles -----------------------------------------------------------------
rc, out, err, _ = run("chat", "--system", "be brief", "--max-tokens", "5", "hi", "hello!", "how are you?")
method, req, md = last_request()
roles = [(m.role, m.content) for m in req.messages.messages] if req is not None and req.WhichOneof("input") == "messages" else None
check(rc == 0 and out == "".join(CHUNKS) + "\n", "chat: exit 0, the reply on stdout", f"rc={rc} out={out!r} err={err!r}")
check(roles == [("system", "be brief"), ("user", "hi"), ("assistant", "hello!"), ("user", "how are you?")],
      "chat: messages with roles in order", repr(roles))
check(req is not None and req.max_tokens == 5, "chat: max_tokens 5", repr(req))
expect_error("chat: even number of messages", ["chat", "hi", "hello"], 2, "must end with a user turn")

# Line mode (stdin not a terminal): one user turn per line, the history carried along.
n0 = len(fake.requests)
rc, out, err, _ = run("chat", "--system", "sys", stdin="first question\nsecond question\n/quit\nnever sent\n")
check(rc == 0 and len(fake.requests) == n0 + 2, "chat stdin: two turns, /quit ends", f"rc={rc} calls={len(fake.requests) - n0} err={err!r}")
roles = [(m.role, m.content) for m in fake.requests[-1][1].messages.messages]
check(roles == [("system", "sys"), ("user", "first question"), ("assistant", "".join(CHUNKS)),
                ("user", "second question")], "chat stdin: history with the assistant reply", repr(roles))
check(out == ("".join(CHUNKS) + "\n") * 2, "chat stdin: both replies on stdout", repr(out))

# --- authorization -------------------------------------------------------------------------------
fake.require_key = True
expect_error("no API key", ["generate", "hi"], 6, "gemmashard: UNAUTHENTICATED: missing or wrong API key")
expect_error("wrong API key", ["generate", "--api-key", "nope", "hi"], 6, "UNAUTHENTICATED")
check(last_request()[2].get("authorization") == "Bearer nope", "wrong key: sent as Bearer", repr(last_request()[2]))
rc, out, err, _ = run("generate", "--api-key", KEY, "hi")
check(rc == 0 and last_request()[2].get("authorization") == "Bearer " + KEY, "--api-key: authorization metadata",
      f"rc={rc} md={last_request()[2]!r}")
rc, out, err, _ = run("generate", "--no-stream", "hi", env={"GEMMASHARD_API_KEY": KEY})
check(rc == 0 and last_request()[2].get("authorization") == "Bearer " + KEY, "GEMMASHARD_API_KEY: used",
      f"rc={rc} md={last_request()[2]!r}")
fake.require_key = False

# --- gRPC errors -> exit codes -----------------------------------------------------------------
expect_error("INVALID_ARGUMENT", ["generate", "err:INVALID_ARGUMENT"], 2,
             "gemmashard: INVALID_ARGUMENT: fake INVALID_ARGUMENT for the test")
expect_error("INVALID_ARGUMENT unary", ["generate", "--no-stream", "err:INVALID_ARGUMENT"], 2,
             "gemmashard: INVALID_ARGUMENT: fake")
expect_error("NOT_FOUND", ["generate", "err:NOT_FOUND"], 2, "gemmashard: NOT_FOUND: fake")
expect_error("RESOURCE_EXHAUSTED", ["generate", "err:RESOURCE_EXHAUSTED"], 5, "gemmashard: RESOURCE_EXHAUSTED: fake")
expect_error("INTERNAL", ["generate", "err:INTERNAL"], 1, "gemmashard: INTERNAL: fake")
expect_error("chat INVALID_ARGUMENT", ["chat", "err:INVALID_ARGUMENT"], 2, "gemmashard: INVALID_ARGUMENT")
rc, out, err, dt = expect_error("DEADLINE_EXCEEDED", ["generate", "--timeout", "0.5", "sleep"], 4,
                                "gemmashard: DEADLINE_EXCEEDED")
check(dt < 2.5, "DEADLINE_EXCEEDED: returns at the deadline, not when the server answers", f"{dt:.2f} s")
dead = f"127.0.0.1:{free_port()}"
expect_error("UNAVAILABLE (nothing listening)", ["generate", "--addr", dead, "hi"], 3, "gemmashard: UNAVAILABLE")
expect_error("GEMMASHARD_ADDR", ["generate", "hi"], 3, "UNAVAILABLE", env={"GEMMASHARD_ADDR": dead}, addr=False)
rc, out, err, _ = run("generate", "hi", env={"GEMMASHARD_ADDR": ADDR}, addr=False)
check(rc == 0 and out == "".join(CHUNKS) + "\n", "GEMMASHARD_ADDR: used for the address", f"rc={rc} err={err!r}")

# --- bad flags -------------------------------------------------------------------------------------
n0 = len(fake.requests)
expect_error("bad --max-tokens value", ["generate", "--max-tokens", "abc", "hi"], 2, "--max-tokens: invalid value")
expect_error("--max-tokens 0", ["generate", "--max-tokens", "0", "hi"], 2, "--max-tokens must be >= 1")
expect_error("unknown option", ["generate", "--frobnicate", "hi"], 2, "unknown option '--frobnicate'")
expect_error("two prompts", ["generate", "a", "b"], 2, "one PROMPT expected")
expect_error("--timeout 0", ["generate", "--timeout", "0", "hi"], 2, "--timeout must be > 0")
expect_error("--system on generate", ["generate", "--system", "x", "hi"], 2, "unknown option '--system'")
expect_error("--stop without value", ["generate", "hi", "--stop"], 2, "'--stop' needs a value")
expect_error("nine --stop", ["generate", "hi"] + ["--stop", "s"] * 9, 2, "at most 8 --stop")
check(len(fake.requests) == n0, "bad flags: no call reaches the server", f"{len(fake.requests) - n0} calls")
rc, out, err, _ = run("generate", "--help", addr=False)
check(rc == 0 and "exit codes:" in out and "UNAUTHENTICATED" in out and "--api-key" in out,
      "--help: documents options and exit codes", repr(out))

server.stop(None)
if failures:
    print(f"\n{len(failures)} FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("\nall client CLI checks passed")
