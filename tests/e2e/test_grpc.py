"""gRPC end to end: a real grpcio client (Python, not ours) against gemmashard-coordinator with
one 2-rank engine (real mpirun). The reference for every generated text is the in-process
engine at T = 1 (`gemmashard run --batch`), which shares no code with the coordinator path.

Checks: health, model info, tokenize, unary and streaming generation (greedy, seeded, stop
strings, logprobs) equal to the reference, deadline, cancel mid-stream (KV back to full),
bad input (malformed protobuf, oversized message, unknown model, bad sampling values, empty
or non-alternating messages, too long for any engine, missing or wrong API key), each
followed by a good request; and a clean coordinator exit.

usage: test_grpc.py BUILD_DIR TOKENIZER_JSON SCRATCH
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, exit_status  # noqa: E402
from cluster import Cluster  # noqa: E402

import grpc  # noqa: E402


def compile_protos(repo, out):
    """Python stubs for our .proto files. health.proto is compiled from a copy placed under
    gs_health/ (same proto package grpc.health.v1, so the same method path), because a Python
    module path grpc/health/... would be shadowed by the grpc package itself."""
    os.makedirs(out, exist_ok=True)
    src = os.path.join(out, "src")
    os.makedirs(os.path.join(src, "gs_health"), exist_ok=True)
    shutil.copy(os.path.join(repo, "proto", "grpc", "health", "v1", "health.proto"),
                os.path.join(src, "gs_health", "health.proto"))
    for inc, p in [(os.path.join(repo, "proto"), "gemmashard/v1/inference.proto"), (src, "gs_health/health.proto")]:
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", inc,
                        f"--python_out={out}", f"--grpc_python_out={out}", os.path.join(inc, p)], check=True)
    sys.path.insert(0, out)


def reference(gs, model, reqs, scratch):
    """The in-process engine (T = 1) on the same requests: id -> record."""
    inp = os.path.join(scratch, "ref.in.jsonl")
    out = os.path.join(scratch, "ref.out.jsonl")
    with open(inp, "w") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")
    if os.path.exists(out):
        os.remove(out)
    p = subprocess.run([gs, "run", "--model", model, "--batch", inp, "--out", out, "--threads", "1"],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"reference run failed: {p.stderr}")
    res = {}
    with open(out) as f:
        for line in f:
            d = json.loads(line)
            res[d["id"]] = d
    return res


def main():
    build, tok, scratch = sys.argv[1:4]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    compile_protos(repo, os.path.join(scratch, "py"))
    import gemmashard.v1.inference_pb2 as pb
    import gemmashard.v1.inference_pb2_grpc as pbg
    import gs_health.health_pb2 as hpb
    import gs_health.health_pb2_grpc as hpbg

    gs = os.path.join(build, "tools", "gemmashard")
    model = os.path.join(scratch, "tiny-medgemma")
    p = subprocess.run([gs, "make-test-model", "--out", model, "--tokenizer", tok, "--preset", "tiny"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr

    prompts = ["The patient presented with", "Differential diagnosis of chest pain:",
               "Ibuprofen 400 mg", "Zusammenfassung des Befundes:"]
    reqs = []
    for i, pr in enumerate(prompts):
        reqs.append({"id": f"greedy{i}", "prompt": pr, "max_tokens": 24, "temperature": 0})
        reqs.append({"id": f"seeded{i}", "prompt": pr, "max_tokens": 24, "temperature": 0.9,
                     "top_k": 40, "top_p": 0.95, "seed": 1000 + i})
    reqs.append({"id": "chat", "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "What is a fever?"}],
                 "max_tokens": 20, "temperature": 0})
    reqs.append({"id": "lp", "prompt": prompts[0], "max_tokens": 6, "temperature": 0, "logprobs": True,
                 "top_logprobs": 3})
    # issue 16: the OpenAI fields give the same tokens at T = 2 (gRPC) as at T = 1 (batch lines)
    few = {str(i): 6.0 for i in range(1000, 1004)}
    # (sampled requests use top_k <= K: exact under tensor parallelism, docs/ARCHITECTURE.md §3)
    reqs.append({"id": "oa-bias", "prompt": prompts[1], "max_tokens": 16, "temperature": 0.9, "seed": 7,
                 "top_k": 50, "logit_bias": {"4321": 100, "17": -100}, "ignore_eos": True})
    reqs.append({"id": "oa-pen", "prompt": prompts[0], "max_tokens": 24, "temperature": 1.0, "seed": 11, "top_k": 40,
                 "logit_bias": few, "frequency_penalty": 1.5, "presence_penalty": 0.5, "ignore_eos": True})
    reqs.append({"id": "oa-pen-greedy", "prompt": prompts[2], "max_tokens": 24, "temperature": 0,
                 "frequency_penalty": -0.5, "presence_penalty": 1.0, "repetition_penalty": 1.2})
    reqs.append({"id": "oa-min", "prompt": prompts[3], "max_tokens": 12, "temperature": 0,
                 "logit_bias": {"1": 100, "106": 100}, "min_tokens": 4})
    reqs.append({"id": "oa-stopid", "prompt": prompts[0], "max_tokens": 12, "temperature": 0.8, "seed": 5,
                 "top_k": 20, "stop_token_ids": [4321], "logit_bias": {"4321": 3}})
    ref = reference(gs, model, reqs, scratch)
    # a stop string taken from the middle of a reference answer
    g0 = ref["greedy0"]["text"]
    stop = g0[len(g0) // 2: len(g0) // 2 + 3] if len(g0) >= 8 else None
    if stop:
        ref2 = reference(gs, model, [{"id": "stop", "prompt": prompts[0], "max_tokens": 24, "temperature": 0,
                                      "stop": [stop]}], scratch)
        ref.update(ref2)

    key = "s3cret-key-0123456789"
    md = [("authorization", f"Bearer {key}")]
    with Cluster(build, model, engines=1, tp=2, api_key=key,
                 coord_args=["--max-body-bytes", "65536", "--max-concurrent", "40", "--max-prompt-tokens", "300"],
                 engine_args=["--ctx", "512", "--max-seqs", "16", "--threads", "1"],
                 logdir=os.path.join(scratch, "logs")) as cl:
        ch = grpc.insecure_channel(f"127.0.0.1:{cl.grpc_port}")
        stub = pbg.InferenceStub(ch)
        health = hpbg.HealthStub(ch)

        r = health.Check(hpb.HealthCheckRequest(service=""), timeout=5)
        check(r.status == hpb.HealthCheckResponse.SERVING, f"health SERVING ({r.status})")
        try:
            health.Check(hpb.HealthCheckRequest(service="nope"), timeout=5)
            check(False, "health of an unknown service -> NOT_FOUND")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, f"health of an unknown service -> {e.code()}")

        mi = stub.ModelInfo(pb.ModelInfoRequest(), metadata=md, timeout=5)
        check(mi.model == "tiny-medgemma" and mi.engines == 1 and mi.tensor_parallel == 2 and mi.max_context == 512,
              f"model info: {mi.model} engines={mi.engines} T={mi.tensor_parallel} ctx={mi.max_context}")
        check(list(mi.numerics) == ["fp32"], f"model info names the engine's numerics, fp32 by default ({list(mi.numerics)})")
        nm = [k for k in cl.metrics() if k.startswith("gemmashard_engine_numerics{")]
        check(len(nm) == 1 and 'numerics="fp32"' in nm[0], f"/metrics labels the engine's numerics ({nm})")

        # tokenize against the CLI tokenizer (itself checked against HF tokenizers elsewhere)
        text = "Patient: 45 y/o, BP 140/90 — dyspnoea 😷"
        t = stub.Tokenize(pb.TokenizeRequest(text=text), metadata=md, timeout=5)
        cli = subprocess.run([gs, "tokenize", "--model", model, "--text", text], capture_output=True, text=True)
        cli_ids = [int(x) for x in cli.stdout.replace(",", " ").split() if x.lstrip("-").isdigit()]
        check(list(t.token_ids) == cli_ids, f"Tokenize equals `gemmashard tokenize` ({len(t.token_ids)} ids)")

        def gen_req(r):
            q = pb.GenerateRequest(max_tokens=r["max_tokens"])
            if "prompt" in r:
                q.prompt = r["prompt"]
            else:
                for m in r["messages"]:
                    q.messages.messages.add(role=m["role"], content=m["content"])
            for k in ("temperature", "top_k", "top_p", "seed", "repetition_penalty", "presence_penalty",
                      "frequency_penalty", "min_tokens", "ignore_eos"):
                if k in r:
                    setattr(q, k, r[k])
            for tid, b in r.get("logit_bias", {}).items():
                q.logit_bias.add(token_id=int(tid), bias=b)
            q.stop_token_ids.extend(r.get("stop_token_ids", []))
            if r.get("logprobs"):
                q.logprobs = True
                q.top_logprobs = r.get("top_logprobs", 0)
            for s in r.get("stop", []):
                q.stop.append(s)
            return q

        # unary and streaming vs the T = 1 in-process reference
        n_same_u = n_same_s = 0
        finish_name = {pb.STOP: "stop", pb.LENGTH: "length"}
        for r in reqs + ([{"id": "stop", "prompt": prompts[0], "max_tokens": 24, "temperature": 0,
                           "stop": [stop]}] if stop else []):
            exp = ref[r["id"]]
            u = stub.Generate(gen_req(r), metadata=md, timeout=60)
            ok_u = (u.text == exp["text"] and finish_name.get(u.finish_reason) == exp["finish_reason"] and
                    u.usage.prompt_tokens == exp["usage"]["prompt_tokens"] and
                    u.usage.completion_tokens == exp["usage"]["completion_tokens"])
            n_same_u += ok_u
            if not ok_u:
                print(f"  {r['id']}: unary {u.text!r} {u.finish_reason} {u.usage} vs {exp}")
            chunks = list(stub.GenerateStream(gen_req(r), metadata=md, timeout=60))
            stext = "".join(c.text for c in chunks)
            sids = [i for c in chunks for i in c.token_ids]
            last = chunks[-1]
            ok_s = (stext == exp["text"] and sids == list(u.token_ids) and
                    finish_name.get(last.finish_reason) == exp["finish_reason"] and
                    last.usage.completion_tokens == exp["usage"]["completion_tokens"] and
                    all(c.finish_reason == 0 for c in chunks[:-1]))
            n_same_s += ok_s
            if not ok_s:
                print(f"  {r['id']}: stream {stext!r} ({len(chunks)} chunks) vs {exp['text']!r}")
            if r["id"] == "lp":
                lp = exp["logprobs"]
                got = [x.logprob for x in u.logprobs]
                close = len(got) == len(lp["token_logprobs"]) and all(
                    abs(a - b) < 1e-3 for a, b in zip(got, lp["token_logprobs"]))
                check(close and all(len(x.top) == 3 for x in u.logprobs),
                      f"logprobs equal the reference within 1e-3 with 3 alternatives each ({got[:3]}...)")
        total = len(reqs) + (1 if stop else 0)
        check(n_same_u == total, f"unary Generate equals the T=1 reference ({n_same_u}/{total})")
        check(n_same_s == total, f"GenerateStream equals the reference and unary ({n_same_s}/{total})")
        check(stop is not None and ref["stop"]["text"] == g0[:g0.index(stop)],
              f"stop string {stop!r} cuts the reference where expected")

        def kv_used():
            m = cl.metrics()
            return sum(v for k, v in m.items() if k.startswith("gemmashard_kv_blocks_used"))

        def wait_kv_free(timeout=5):
            t0 = time.time()
            while time.time() - t0 < timeout:
                if kv_used() == 0 and cl.metrics().get("gemmashard_requests_in_flight", 1) == 0:
                    return True
                time.sleep(0.05)
            return False

        long_req = pb.GenerateRequest(prompt=prompts[1], max_tokens=480, temperature=0.8, seed=5)
        # deadline
        t0 = time.time()
        try:
            list(stub.GenerateStream(long_req, metadata=md, timeout=0.4))
            check(False, "deadline 0.4 s on a 400-token stream -> DEADLINE_EXCEEDED")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.time() - t0 < 3,
                  f"deadline 0.4 s -> {e.code()} after {time.time() - t0:.2f} s")
        check(wait_kv_free(), "KV back to full after the deadline")

        # cancel mid-stream
        it = stub.GenerateStream(long_req, metadata=md, timeout=60)
        got = 0
        for c in it:
            got += len(c.token_ids)
            if got >= 3:
                break
        t0 = time.time()
        busy = kv_used()
        while busy == 0 and time.time() - t0 < 2:  # heartbeats come every 250 ms
            time.sleep(0.02)
            busy = kv_used()
        it.cancel()
        t0 = time.time()
        freed = wait_kv_free()
        check(busy > 0 and freed, f"cancel mid-stream after {got} tokens: KV {busy} blocks in use -> 0 "
                                  f"in {time.time() - t0:.2f} s")

        good = pb.GenerateRequest(prompt=prompts[2], max_tokens=8, temperature=0)
        good_text = ref["greedy2"]["text"]

        def expect(name, call, code, needle=""):
            try:
                call()
                check(False, f"{name} -> {code}")
            except grpc.RpcError as e:
                ok = e.code() == code and needle in (e.details() or "")
                check(ok, f"{name} -> {e.code().name}: {e.details()}")
            g = stub.Generate(good, metadata=md, timeout=30)
            check(g.text == good_text[:len(g.text)] and g.finish_reason in (pb.STOP, pb.LENGTH), "  then a good request succeeds")

        raw = ch.unary_unary("/gemmashard.v1.Inference/Generate", request_serializer=lambda b: b,
                             response_deserializer=lambda b: b)
        expect("malformed protobuf", lambda: raw(b"\x12\xff\xff\xff\x0f", metadata=md, timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "malformed")
        expect("oversized message (100 KB > 64 KiB)",
               lambda: stub.Generate(pb.GenerateRequest(prompt="x" * 100000, max_tokens=1), metadata=md, timeout=10),
               grpc.StatusCode.RESOURCE_EXHAUSTED)
        expect("unknown model", lambda: stub.Generate(pb.GenerateRequest(model="gpt-5", prompt="hi", max_tokens=2),
                                                      metadata=md, timeout=10),
               grpc.StatusCode.NOT_FOUND, "gpt-5")
        expect("top_p 1.5", lambda: stub.Generate(pb.GenerateRequest(prompt="hi", top_p=1.5), metadata=md, timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "top_p")
        expect("temperature -1", lambda: stub.Generate(pb.GenerateRequest(prompt="hi", temperature=-1), metadata=md,
                                                       timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "temperature")
        expect("max_tokens -3", lambda: stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=-3), metadata=md,
                                                      timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "max_tokens")
        # issue 16: refusals name the field; token-id prompts equal their text prompts
        expect("presence_penalty 3", lambda: stub.Generate(pb.GenerateRequest(prompt="hi", presence_penalty=3),
                                                           metadata=md, timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "presence_penalty must be in [-2, 2]")
        lb = pb.GenerateRequest(prompt="hi", max_tokens=2)
        lb.logit_bias.add(token_id=99999999, bias=1)
        expect("logit_bias id outside the vocabulary", lambda: stub.Generate(lb, metadata=md, timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "logit_bias: token id 99999999 is outside the vocabulary")
        lb2 = pb.GenerateRequest(prompt="hi", max_tokens=2)
        lb2.logit_bias.add(token_id=5, bias=-150)
        expect("logit_bias -150", lambda: stub.Generate(lb2, metadata=md, timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "[-100, 100]")
        expect("9 stop_token_ids", lambda: stub.Generate(pb.GenerateRequest(prompt="hi", stop_token_ids=range(9)),
                                                         metadata=md, timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "stop_token_ids may hold at most 8")
        expect("min_tokens -1", lambda: stub.Generate(pb.GenerateRequest(prompt="hi", min_tokens=-1), metadata=md,
                                                      timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "min_tokens")
        # structured output: the response_format message, compiled and enforced as on HTTP
        schema = {"type": "object", "properties": {"code": {"type": "integer", "minimum": 1, "maximum": 9},
                                                   "ok": {"type": "boolean"}}, "required": ["code", "ok"]}
        so = stub.Generate(pb.GenerateRequest(prompt="Result:", max_tokens=24, temperature=0,
                                              response_format=pb.ResponseFormat(type="json_schema", name="r",
                                                                                json_schema=json.dumps(schema))),
                           metadata=md, timeout=30)
        try:
            doc = json.loads(so.text)
        except ValueError:
            doc = None
        check(so.finish_reason == pb.STOP and isinstance(doc, dict) and list(doc) == ["code", "ok"] and
              1 <= doc["code"] <= 9 and isinstance(doc["ok"], bool), f"gRPC response_format json_schema: {so.text!r}")
        ch_ = stub.Generate(pb.GenerateRequest(prompt="Fever?", max_tokens=6, seed=1,
                                               response_format=pb.ResponseFormat(type="choice", choice=["yes", "no"])),
                            metadata=md, timeout=30)
        check(ch_.text in ("yes", "no") and ch_.finish_reason == pb.STOP, f"gRPC response_format choice: {ch_.text!r}")
        rx = stub.Generate(pb.GenerateRequest(prompt="Code?", max_tokens=12, seed=1,
                                              response_format=pb.ResponseFormat(type="regex", regex=r"[A-Z]{2}\d{2}")),
                           metadata=md, timeout=30)
        check(rx.finish_reason == pb.STOP and len(rx.text) == 4 and rx.text[:2].isupper() and rx.text[:2].isascii()
              and rx.text[2:].isdigit(), f"gRPC response_format regex: {rx.text!r}")
        expect("response_format regex with a lookahead",
               lambda: stub.Generate(pb.GenerateRequest(prompt="hi", response_format=pb.ResponseFormat(
                   type="regex", regex="a(?!b)")), metadata=md, timeout=30),
               grpc.StatusCode.INVALID_ARGUMENT, "lookaround (?!...) is not supported")
        expect("response_format with an unsupported keyword",
               lambda: stub.Generate(pb.GenerateRequest(prompt="hi", response_format=pb.ResponseFormat(
                   type="json_schema", json_schema='{"type": "string", "pattern": "a"}')), metadata=md, timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "unsupported keyword 'pattern'")
        expect("response_format without type",
               lambda: stub.Generate(pb.GenerateRequest(prompt="hi", response_format=pb.ResponseFormat()),
                                     metadata=md, timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "response_format.type is required")
        # a field number this server does not know (a newer client's): refused, not ignored
        unknown = pb.GenerateRequest(prompt="hi", max_tokens=2).SerializeToString() + bytes([0xf8, 0x07, 0x01])
        expect("unknown field 127", lambda: raw(unknown, metadata=md, timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "field number 127 is not supported")
        ids = [int(x) for x in subprocess.run([gs, "tokenize", "--model", model, "--text", prompts[2]],
                                              capture_output=True, text=True, check=True).stdout.split()]
        tq = pb.GenerateRequest(max_tokens=24, temperature=0)
        tq.prompt_ids.ids.extend(ids)
        tg = stub.Generate(tq, metadata=md, timeout=30)
        check(tg.text == good_text and tg.usage.prompt_tokens == len(ids) and ids[0] == 2,
              f"token-id prompt ({len(ids)} ids) equals its text prompt: {tg.text!r}")
        uq = pb.GenerateRequest(prompt=prompts[2], max_tokens=2, temperature=0, user="ward-3")
        check(stub.Generate(uq, metadata=md, timeout=30).usage.completion_tokens >= 1, "user accepted")
        time.sleep(0.3)
        logs = "".join(open(os.path.join(scratch, "logs", f)).read() for f in os.listdir(os.path.join(scratch, "logs"))
                       if f.endswith(".log"))
        check("user=ward-3" in logs, "user is a label in the access log")
        expect("no prompt or messages", lambda: stub.Generate(pb.GenerateRequest(max_tokens=3), metadata=md, timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "prompt")
        empty = pb.GenerateRequest(max_tokens=3)
        empty.messages.SetInParent()
        expect("empty messages", lambda: stub.Generate(empty, metadata=md, timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "empty")
        bad_roles = pb.GenerateRequest(max_tokens=3)
        bad_roles.messages.messages.add(role="user", content="a")
        bad_roles.messages.messages.add(role="user", content="b")
        expect("roles not alternating", lambda: stub.Generate(bad_roles, metadata=md, timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "alternate")
        expect("prompt + max_tokens beyond every engine's context",
               lambda: stub.Generate(pb.GenerateRequest(prompt="hello", max_tokens=1000), metadata=md, timeout=10),
               grpc.StatusCode.RESOURCE_EXHAUSTED, "never fit")
        expect("missing API key", lambda: stub.Generate(good, timeout=10), grpc.StatusCode.UNAUTHENTICATED)
        expect("wrong API key", lambda: stub.Generate(good, metadata=[("authorization", "Bearer nope")], timeout=10),
               grpc.StatusCode.UNAUTHENTICATED)
        expect("unknown method",
               lambda: ch.unary_unary("/gemmashard.v1.Inference/Nope", request_serializer=lambda b: b,
                                      response_deserializer=lambda b: b)(b"", metadata=md, timeout=10),
               grpc.StatusCode.UNIMPLEMENTED)

        expect("prompt over --max-prompt-tokens 300",
               lambda: stub.Generate(pb.GenerateRequest(prompt="word " * 400, max_tokens=2), metadata=md, timeout=10),
               grpc.StatusCode.INVALID_ARGUMENT, "more than the limit of 300")

        # --max-concurrent 40: the 41st request in flight is refused at once, over gRPC and HTTP
        held = [stub.GenerateStream(long_req, metadata=md, timeout=60) for _ in range(40)]
        t0 = time.time()
        inflight = 0
        while inflight < 40 and time.time() - t0 < 10:  # 480 tokens each: none ends this soon
            inflight = cl.metrics().get("gemmashard_requests_in_flight", 0)
            time.sleep(0.02)
        try:
            stub.Generate(good, metadata=md, timeout=10)
            check(False, "41st request -> RESOURCE_EXHAUSTED")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "too many requests" in e.details(),
                  f"41st request -> {e.code().name}: {e.details()}")
        curl = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                               f"Authorization: Bearer {key}", "-H", "Content-Type: application/json", "-d",
                               '{"prompt": "hi", "max_tokens": 2}', cl.url("/v1/completions")],
                              capture_output=True, text=True)
        check(curl.stdout == "429", f"41st request over HTTP -> {curl.stdout}")
        for it in held:
            it.cancel()
        check(inflight == 40 and wait_kv_free(), f"the 40 cancelled streams ({inflight:.0f} seen in flight) free their KV")
        g = stub.Generate(good, metadata=md, timeout=30)
        check(g.text == good_text[:len(g.text)], "then a good request succeeds")

        # 32 concurrent seeded streams equal their sequential answers
        outs = {}

        def worker(i):
            q = pb.GenerateRequest(prompt=prompts[i % 4], max_tokens=16, temperature=1.0, seed=77 + i)
            outs[i] = "".join(c.text for c in stub.GenerateStream(q, metadata=md, timeout=120))
        th = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
        for x in th:
            x.start()
        for x in th:
            x.join()
        same = sum(outs.get(i) == stub.Generate(pb.GenerateRequest(prompt=prompts[i % 4], max_tokens=16,
                                                                    temperature=1.0, seed=77 + i),
                                                 metadata=md, timeout=60).text for i in range(32))
        check(same == 32, f"32 concurrent seeded streams equal the same requests run alone ({same}/32)")

        # n = 3 (issue 16): choice i equals n = 1 with seed + i (ids and logprobs, bit for bit), unary
        # and streamed; usage summed with the prompt once; n = 0 and 9 refused naming n
        nq = dict(prompt=prompts[0], max_tokens=8, temperature=1.0, seed=500, logprobs=True, top_logprobs=2)
        un = stub.Generate(pb.GenerateRequest(n=3, **nq), metadata=md, timeout=60)
        ones = [stub.Generate(pb.GenerateRequest(**{**nq, "seed": 500 + i}), metadata=md, timeout=60) for i in range(3)]
        key = lambda x: (x.text, list(x.token_ids), [(t.token_id, t.logprob, [(a.token_id, a.logprob) for a in t.top])
                                                    for t in x.logprobs], x.finish_reason)  # noqa: E731
        check([c.index for c in un.choices] == [0, 1, 2] and [key(c) for c in un.choices] == [key(o) for o in ones] and
              key(un) == key(ones[0]) and len({o.text for o in ones}) > 1 and
              un.usage.prompt_tokens == ones[0].usage.prompt_tokens and
              un.usage.completion_tokens == sum(o.usage.completion_tokens for o in ones) and
              [c.completion_tokens for c in un.choices] == [o.usage.completion_tokens for o in ones],
              f"gRPC n=3: choice i equals n=1 with seed + i, usage summed ({un.usage})")
        chunks = list(stub.GenerateStream(pb.GenerateRequest(n=3, **nq), metadata=md, timeout=60))
        per = [[c for c in chunks if c.index == i] for i in range(3)]
        check(all("".join(c.text for c in per[i]) == ones[i].text and
                  [t for c in per[i] for t in c.token_ids] == list(ones[i].token_ids) and
                  [c.finish_reason for c in per[i]] == [0] * (len(per[i]) - 1) + [ones[i].finish_reason] and
                  per[i][-1].usage.completion_tokens == ones[i].usage.completion_tokens for i in range(3)) and
              sum(len(p_) for p_ in per) == len(chunks),
              f"gRPC GenerateStream n=3: chunks per index equal n=1 with seed + i ({len(chunks)} chunks)")
        for bad in (0, 9):
            expect(f"n = {bad}", lambda: stub.Generate(pb.GenerateRequest(prompt="hi", n=bad), metadata=md, timeout=30),
                   grpc.StatusCode.INVALID_ARGUMENT, f"n must be an integer in [1, 8], got {bad}")
        m = cl.metrics()
        ok_count = m.get('gemmashard_requests_total{api="grpc",status="OK"}', 0)
        check(ok_count >= 2 * total + 64, f"metrics count OK gRPC requests ({ok_count:.0f})")
        check(m.get("gemmashard_time_to_first_token_seconds_count", 0) > 0, "TTFT histogram filled")
        ch.close()
    check(cl.coord_rc == 0, f"coordinator exits 0 on SIGTERM (rc {cl.coord_rc})")
    return exit_status(lambda: cl.log("coordinator"))


if __name__ == "__main__":
    sys.exit(main())
