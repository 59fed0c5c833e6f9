"""HTTP (OpenAI API) end to end: curl and the official `openai` npm client against
gemmashard-coordinator with one 2-rank engine (real mpirun). The reference for generated text is
the in-process engine at T = 1 (`gemmashard run --batch`), which shares no code with this path.

Checks: /health, /metrics, models; chat and completions, whole and streamed (SSE shape, role
chunk, finish chunk, usage chunk, [DONE]); streamed text equals the whole answer for the same
seed; greedy equal across both APIs and to the reference; usage (prompt_tokens equals
`gemmashard tokenize` of the rendered prompt); logprobs shape and values; a client that leaves
mid-stream frees its KV; an engine lost mid-stream ends the stream with an error event; every
bad input (invalid JSON, wrong types, unknown model, ranges, n=2, roles, oversized body, API key,
routes, methods) gets the right status and message and is followed by a good request.

usage: test_http.py BUILD_DIR TOKENIZER_JSON SCRATCH [NODE_MODULES]
"""
import json
import re
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, exit_status  # noqa: E402
from cluster import Cluster  # noqa: E402
from test_grpc import reference  # noqa: E402

KEY = "http-s3cret-0123456789"
MODEL = "tiny-medgemma"


def render_chat(messages):
    """The Gemma 3 chat template (reference/gemma3.md 5.1) for system?/user/assistant turns."""
    msgs = list(messages)
    system = None
    if msgs and msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
    s = "<bos>"
    for i, m in enumerate(msgs):
        role = "model" if m["role"] == "assistant" else m["role"]
        content = m["content"].strip()
        if i == 0 and system is not None:
            content = system + "\n\n" + content
        s += f"<start_of_turn>{role}\n{content}<end_of_turn>\n"
    return s + "<start_of_turn>model\n"


def token_ids(gs, model, text, bos, scratch):
    path = os.path.join(scratch, "tok.txt")
    with open(path, "w") as f:
        f.write(text)
    p = subprocess.run([gs, "tokenize", "--model", model, "--file", path] + ([] if bos else ["--no-bos"]),
                       capture_output=True, text=True, check=True)
    return [int(t) for t in p.stdout.split()]


def n_tokens(gs, model, text, bos, scratch):
    path = os.path.join(scratch, "tok.txt")
    with open(path, "w") as f:
        f.write(text)
    p = subprocess.run([gs, "tokenize", "--model", model, "--file", path] + ([] if bos else ["--no-bos"]),
                       capture_output=True, text=True, check=True)
    return len(p.stdout.split())


class Http:
    """curl against the cluster; every call returns (status, body text)."""

    def __init__(self, cl):
        self.cl = cl

    def call(self, method, path, body=None, key=KEY, headers=(), timeout=120):
        cmd = ["curl", "-sS", "-N", "-X", method, "-o", "-", "-w", "\n%{http_code}", self.cl.url(path)]
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
            cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        if key is not None:
            cmd += ["-H", f"Authorization: Bearer {key}"]
        for h in headers:
            cmd += ["-H", h]
        p = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout)
        text, _, code = p.stdout.decode("utf-8", "replace").rpartition("\n")
        if not code.isdigit():
            raise RuntimeError(f"curl {method} {path}: {p.stderr.decode()}")
        return int(code), text

    def post(self, path, body, **kw):
        st, text = self.call("POST", path, body, **kw)
        try:
            return st, json.loads(text)
        except ValueError:
            return st, text

    def stream(self, path, body, **kw):
        """(status, [parsed events], raw): events are dicts, the string "[DONE]", or raw text."""
        st, text = self.call("POST", path, body, **kw)
        events = []
        for block in text.split("\n\n"):
            for line in block.splitlines():
                if line.startswith("data: "):
                    d = line[6:]
                    events.append(d if d == "[DONE]" else json.loads(d))
        return st, events, text


def stream_parts(events, chat):
    """Text, the finish reason, the usage chunk and shape problems of an SSE answer."""
    problems = []
    if not events or events[-1] != "[DONE]":
        problems.append("no final [DONE]")
    chunks = [e for e in events if isinstance(e, dict)]
    text, finish, usage, n_finish = "", None, None, 0
    obj = "chat.completion.chunk" if chat else "text_completion"
    ids = {c.get("id") for c in chunks}
    if len(ids) != 1:
        problems.append(f"chunk ids differ: {ids}")
    for i, c in enumerate(chunks):
        if c.get("object") != obj or c.get("model") != MODEL:
            problems.append(f"chunk {i}: object/model {c.get('object')}/{c.get('model')}")
        if not c["choices"]:
            usage = c.get("usage")
            continue
        ch = c["choices"][0]
        if chat:
            if i == 0 and ch["delta"].get("role") != "assistant":
                problems.append("first chunk has no delta.role 'assistant'")
            text += ch["delta"].get("content") or ""
        else:
            text += ch["text"]
        if ch["finish_reason"] is not None:
            n_finish += 1
            finish = ch["finish_reason"]
    if n_finish != 1:
        problems.append(f"{n_finish} chunks carry a finish_reason")
    return text, finish, usage, problems


def main():
    build, tok, scratch = sys.argv[1:4]
    node_modules = sys.argv[4] if len(sys.argv) > 4 else ""
    here = os.path.dirname(os.path.abspath(__file__))
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    gs = os.path.join(build, "tools", "gemmashard")
    model = os.path.join(scratch, MODEL)
    p = subprocess.run([gs, "make-test-model", "--out", model, "--tokenizer", tok, "--preset", "tiny"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr

    chat_msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  What is a fever? "}]
    prompt = "The patient presented with"
    reqs = [
        {"id": "chat", "messages": chat_msgs, "max_tokens": 16, "temperature": 0},
        {"id": "greedy", "prompt": prompt, "max_tokens": 16, "temperature": 0},
        {"id": "seeded", "prompt": prompt, "max_tokens": 16, "temperature": 0.9, "top_k": 40, "top_p": 0.95,
         "seed": 99},
        {"id": "lp", "prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": True, "top_logprobs": 3},
    ]
    ref = reference(gs, model, reqs, scratch)

    with Cluster(build, model, engines=1, tp=2, api_key=KEY, coord_args=["--max-body-bytes", "65536"],
                 engine_args=["--ctx", "512", "--max-seqs", "16", "--threads", "1"],
                 logdir=os.path.join(scratch, "logs")) as cl:
        h = Http(cl)

        # ---- health, metrics, models ------------------------------------------------------
        st, body = h.call("GET", "/health", key=None)
        check(st == 200 and json.loads(body) == {"status": "ok", "models": {MODEL: 1}, "engines": 1,
                                                  "engine_link": "plaintext"},
              f"/health without key: {st} {body}")
        st, body = h.call("GET", "/metrics", key=None)
        check(st == 200 and "gemmashard_requests_in_flight" in body, f"/metrics without key: {st}")
        p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{content_type}", cl.url("/metrics")],
                           capture_output=True, text=True)
        check(p.stdout.startswith("text/plain; version=0.0.4"), f"/metrics content type {p.stdout!r}")
        st, body = h.call("GET", "/v1/models")
        d = json.loads(body)
        check(st == 200 and d["object"] == "list" and len(d["data"]) == 1 and d["data"][0]["id"] == MODEL and
              d["data"][0]["object"] == "model" and d["data"][0]["owned_by"] == "gemmashard" and
              isinstance(d["data"][0]["created"], int), f"GET /v1/models: {body}")
        st, body = h.call("GET", f"/v1/models/{MODEL}")
        check(st == 200 and json.loads(body)["id"] == MODEL, f"GET /v1/models/{MODEL}: {st}")
        st, body = h.call("GET", "/v1/models/gpt-5")
        check(st == 404 and json.loads(body)["error"]["code"] == "model_not_found", f"GET /v1/models/gpt-5: {st} {body}")

        # ---- chat: whole, streamed, usage, reference ----------------------------------------
        creq = {"model": MODEL, "messages": chat_msgs, "max_tokens": 16, "temperature": 0, "user": "ignored",
                "frequency_penalty": 0}
        st, c = h.post("/v1/chat/completions", creq)
        ok = (st == 200 and c["object"] == "chat.completion" and c["id"].startswith("chatcmpl-") and
              c["model"] == MODEL and isinstance(c["created"], int) and len(c["choices"]) == 1)
        check(ok, f"chat completion shape ({st})")
        ch = c["choices"][0]
        check(ch["index"] == 0 and ch["message"]["role"] == "assistant" and ch["logprobs"] is None and
              ch["finish_reason"] in ("stop", "length"), f"chat choice shape: {ch}")
        check(ch["message"]["content"] == ref["chat"]["text"] and ch["finish_reason"] == ref["chat"]["finish_reason"],
              f"chat greedy equals the T=1 reference: {ch['message']['content']!r}")
        u = c["usage"]
        n_prompt = n_tokens(gs, model, render_chat(chat_msgs), False, scratch)
        check(u["prompt_tokens"] == n_prompt and u["completion_tokens"] == ref["chat"]["usage"]["completion_tokens"] and
              u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"],
              f"chat usage {u} (rendered prompt tokenizes to {n_prompt})")
        chat_text = ch["message"]["content"]

        st, ev, raw = h.stream("/v1/chat/completions", {**creq, "stream": True,
                                                        "stream_options": {"include_usage": True}})
        text, finish, usage, problems = stream_parts(ev, True)
        check(st == 200 and not problems, f"chat stream shape ({len(ev)} events) {problems}")
        check(text == chat_text and finish == ch["finish_reason"], f"chat stream text equals the whole answer: {text!r}")
        check(usage == u and all(e.get("usage", 0) is None for e in ev[:-2] if isinstance(e, dict)),
              f"chat stream usage chunk {usage}")
        st, ev, raw = h.stream("/v1/chat/completions", {**creq, "stream": True})
        check(st == 200 and all("usage" not in e for e in ev if isinstance(e, dict)) and ev[-1] == "[DONE]",
              "chat stream without include_usage has no usage")

        sreq = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Name a "},
                                                           {"type": "text", "text": "symptom."}]}],
                "max_tokens": 20, "temperature": 0.8, "top_p": 0.9, "top_k": 50, "min_p": 0.01,
                "repetition_penalty": 1.1, "seed": 4242}
        st1, c1 = h.post("/v1/chat/completions", sreq)
        st2, ev, _ = h.stream("/v1/chat/completions", {**sreq, "stream": True})
        text, finish, _, problems = stream_parts(ev, True)
        check(st1 == 200 and st2 == 200 and not problems and text == c1["choices"][0]["message"]["content"] and
              finish == c1["choices"][0]["finish_reason"],
              f"seeded sampling (content parts): streamed equals whole ({text!r})")
        st3, c3 = h.post("/v1/chat/completions", sreq)
        check(st3 == 200 and c3["choices"][0]["message"]["content"] == c1["choices"][0]["message"]["content"],
              "same seed, same text")

        # ---- completions ---------------------------------------------------------------------
        preq = {"model": MODEL, "prompt": prompt, "max_tokens": 16, "temperature": 0}
        st, c = h.post("/v1/completions", preq)
        ch = c["choices"][0]
        check(st == 200 and c["object"] == "text_completion" and c["id"].startswith("cmpl-") and
              ch["text"] == ref["greedy"]["text"] and ch["finish_reason"] == ref["greedy"]["finish_reason"],
              f"completion greedy equals the T=1 reference: {ch['text']!r}")
        n_prompt = n_tokens(gs, model, prompt, True, scratch)
        check(c["usage"]["prompt_tokens"] == n_prompt and
              c["usage"]["completion_tokens"] == ref["greedy"]["usage"]["completion_tokens"],
              f"completion usage {c['usage']} (prompt tokenizes to {n_prompt})")
        st, ev, _ = h.stream("/v1/completions", {**preq, "stream": True, "stream_options": {"include_usage": True}})
        text, finish, usage, problems = stream_parts(ev, False)
        check(st == 200 and not problems and text == ch["text"] and finish == ch["finish_reason"] and
              usage == c["usage"], f"completion stream equals the whole answer ({problems})")
        st, c = h.post("/v1/completions", {**{k: v for k, v in reqs[2].items() if k != "id"}, "prompt": [prompt]})
        check(st == 200 and c["choices"][0]["text"] == ref["seeded"]["text"],
              "seeded completion (prompt as a one-string array) equals the reference")
        # greedy: the chat API and the completions API on the same rendered prompt agree
        st, c = h.post("/v1/completions", {"prompt": render_chat(chat_msgs)[len("<bos>"):], "max_tokens": 16,
                                           "temperature": 0})
        check(st == 200 and c["choices"][0]["text"] == chat_text,
              f"greedy: completions on the rendered chat prompt equals chat ({c['choices'][0]['text']!r})")

        # ---- logprobs ---------------------------------------------------------------------------
        st, c = h.post("/v1/completions", {"prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 3})
        lp = c["choices"][0]["logprobs"]
        n = c["usage"]["completion_tokens"]
        ok = (st == 200 and len(lp["tokens"]) == n and len(lp["token_logprobs"]) == n and len(lp["top_logprobs"]) == n
              and len(lp["text_offset"]) == n and all(1 <= len(t) <= 3 for t in lp["top_logprobs"]) and
              all(isinstance(t, str) for t in lp["tokens"]))
        check(ok, f"completions logprobs shape ({n} tokens)")
        exp = ref["lp"]["logprobs"]["token_logprobs"]
        check(len(exp) == n and all(abs(a - b) < 1e-3 for a, b in zip(lp["token_logprobs"], exp)),
              f"completions logprobs equal the reference within 1e-3 ({lp['token_logprobs'][:3]}...)")
        st, c = h.post("/v1/chat/completions", {"messages": chat_msgs, "max_tokens": 6, "temperature": 0,
                                                "logprobs": True, "top_logprobs": 3})
        content = c["choices"][0]["logprobs"]["content"]
        n = c["usage"]["completion_tokens"]
        ok = st == 200 and len(content) == n
        for e in content:
            tops = e["top_logprobs"]
            ok = ok and isinstance(e["token"], str) and e["logprob"] <= 1e-6 and len(tops) == 3 and \
                all(0 <= b <= 255 for b in e["bytes"]) and \
                all(tops[i]["logprob"] >= tops[i + 1]["logprob"] for i in range(len(tops) - 1)) and \
                abs(tops[0]["logprob"] - e["logprob"]) < 1e-5 and all(set(t) == {"token", "logprob", "bytes"} for t in tops)
        check(ok, f"chat logprobs shape: {n} tokens, 3 alternatives each, greedy token is the best")
        joined = bytes(b for e in content for b in e["bytes"])
        check(joined.decode("utf-8", "replace") == c["choices"][0]["message"]["content"] or
              c["choices"][0]["finish_reason"] == "stop",
              "chat logprobs bytes join to the answer text")
        st, ev, _ = h.stream("/v1/chat/completions", {"messages": chat_msgs, "max_tokens": 6, "temperature": 0,
                                                      "logprobs": True, "top_logprobs": 3, "stream": True})
        scontent = [x for e in ev if isinstance(e, dict) and e["choices"] and e["choices"][0]["logprobs"]
                    for x in e["choices"][0]["logprobs"]["content"]]
        check([x["logprob"] for x in scontent] == [x["logprob"] for x in content] and
              [x["token"] for x in scontent] == [x["token"] for x in content],
              f"streamed chat logprobs equal the whole answer's ({len(scontent)} tokens)")

        # ---- concurrency: 16 seeded streams at once equal the same requests alone ---------------
        outs = {}

        def worker(i):
            r = {"prompt": prompt, "max_tokens": 12, "temperature": 1.0, "seed": 500 + i, "stream": True}
            _, evs, _ = h.stream("/v1/completions", r)
            outs[i] = stream_parts(evs, False)[0]
        th = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for x in th:
            x.start()
        for x in th:
            x.join()
        same = sum(outs.get(i) == h.post("/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 1.0,
                                                             "seed": 500 + i})[1]["choices"][0]["text"]
                   for i in range(16))
        check(same == 16, f"16 concurrent seeded streams equal the same requests alone ({same}/16)")

        # ---- bad input, each followed by a good request -------------------------------------------
        good = {"prompt": prompt, "max_tokens": 8, "temperature": 0}
        good_text = ref["greedy"]["text"]

        # ---- issue 16: each parameter changes the output as its definition says ------------------
        def comp(extra, n=8):
            st, c = h.post("/v1/completions", {"prompt": prompt, "max_tokens": n, "logprobs": 0, **extra})
            check(st == 200, f"completions {extra} -> {st} {c if st != 200 else ''}")
            return c["choices"][0] if st == 200 else {"text": None, "logprobs": {"tokens": []}, "finish_reason": None}

        base = comp({"temperature": 0})
        toks = base["logprobs"]["tokens"]
        for tid in (1000, 4321):
            b = comp({"temperature": 0.9, "seed": 3, "logit_bias": {str(tid): 100}, "ignore_eos": True})
            one = token_ids(gs, model, b["logprobs"]["tokens"][0], False, scratch) if b["text"] else []
            check(len(set(b["logprobs"]["tokens"])) == 1 and len(b["logprobs"]["tokens"]) == 8 and one == [tid],
                  f"logit_bias +100 on {tid}: every token is it ({b['logprobs']['tokens'][:3]}..., id {one})")
        first = token_ids(gs, model, toks[0], False, scratch)
        if len(first) == 1:
            b = comp({"temperature": 0, "logit_bias": {str(first[0]): -100}})
            check(b["logprobs"]["tokens"][0] != toks[0], f"logit_bias -100 on the greedy token {first[0]} moves it "
                  f"({toks[0]!r} -> {b['logprobs']['tokens'][0]!r})")
        else:
            print(f"Skipped: logit_bias -100 (greedy token {toks[0]!r} does not tokenize to one id)")

        def repeats(tokens):
            return len(tokens) - len(set(tokens))
        # a random model rarely repeats by itself: four tokens biased up make it, then the penalties act
        few = {str(i): 6 for i in range(1000, 1004)}
        plain = comp({"temperature": 1.0, "seed": 11, "ignore_eos": True, "logit_bias": few}, 48)
        pen = comp({"temperature": 1.0, "seed": 11, "ignore_eos": True, "logit_bias": few, "frequency_penalty": 2.0,
                    "presence_penalty": 2.0}, 48)
        check(repeats(pen["logprobs"]["tokens"]) < repeats(plain["logprobs"]["tokens"]),
              f"frequency/presence penalty lowers repeats on seed 11: {repeats(plain['logprobs']['tokens'])} -> "
              f"{repeats(pen['logprobs']['tokens'])}")
        # stop_token_ids: the greedy answer's third token ends it (the stop token is not in the text)
        # whether a stop token is listed among the logprobs tokens: eos biased up ends at once
        eos_bias = {"1": 100, "106": 100}
        b = comp({"temperature": 0, "logit_bias": eos_bias}, 4)
        n_st = len(b["logprobs"]["tokens"])
        check(b["finish_reason"] == "stop" and n_st <= 1 and b["text"] == "", f"eos biased up ends at once: {b['logprobs']['tokens']}")
        if len(toks) >= 3:
            stop_tid = token_ids(gs, model, toks[2], False, scratch)
            if len(stop_tid) == 1 and toks[2] not in toks[:2]:
                b = comp({"temperature": 0, "stop_token_ids": stop_tid})
                check(b["finish_reason"] == "stop" and b["logprobs"]["tokens"] == toks[:2 + n_st],
                      f"stop_token_ids {stop_tid} stops after 2 tokens ({b['logprobs']['tokens']}, {b['finish_reason']})")
            else:
                print("Skipped: stop_token_ids (third greedy token not a single unique id)")
        # min_tokens keeps eos and <end_of_turn> away: bias them up so they would win at once
        b = comp({"temperature": 0, "logit_bias": eos_bias, "min_tokens": 5}, 12)
        check(b["finish_reason"] == "stop" and len(b["logprobs"]["tokens"]) == 5 + n_st,
              f"min_tokens 5: eos held off for 5 tokens, then taken ({len(b['logprobs']['tokens'])} tokens)")
        b = comp({"temperature": 0, "logit_bias": eos_bias, "ignore_eos": True}, 6)
        check(b["finish_reason"] == "length" and len(b["logprobs"]["tokens"]) == 6, "ignore_eos: eos does not end it")
        # token-id prompts equal their text prompts (<bos> included explicitly)
        pids = token_ids(gs, model, prompt, True, scratch)
        for form in (pids, [pids]):
            st, c = h.post("/v1/completions", {"prompt": form, "max_tokens": 8, "temperature": 0, "logprobs": 0})
            check(st == 200 and c["choices"][0]["text"] == base["text"] and c["usage"]["prompt_tokens"] == len(pids),
                  f"token-id prompt {'list of lists' if form != pids else 'list'} equals the text prompt")
        # a list of prompts: one choice per prompt, in order, with its index; usage is the sum
        other = "Differential diagnosis:"
        st, c1 = h.post("/v1/completions", {"prompt": other, "max_tokens": 8, "temperature": 0})
        st, c = h.post("/v1/completions", {"prompt": [prompt, other, pids], "max_tokens": 8, "temperature": 0})
        ch = c.get("choices", []) if st == 200 else []
        check(st == 200 and [x["index"] for x in ch] == [0, 1, 2] and ch[0]["text"] == base["text"] and
              ch[1]["text"] == c1["choices"][0]["text"] and ch[2]["text"] == base["text"] and
              c["usage"]["prompt_tokens"] == 2 * len(pids) + c1["usage"]["prompt_tokens"],
              f"a list of 3 prompts gives 3 choices with their indexes ({st}, {[x.get('text') for x in ch]})")
        # max_completion_tokens is max_tokens
        st, c = h.post("/v1/chat/completions", {"messages": chat_msgs, "max_completion_tokens": 3, "temperature": 0})
        check(st == 200 and c["usage"]["completion_tokens"] <= 3 and
              chat_text.startswith(c["choices"][0]["message"]["content"]), "max_completion_tokens caps the answer")

        def expect(name, status, needle, method="POST", path="/v1/chat/completions", body=None, key=KEY,
                   headers=(), param=False):
            st, text = h.call(method, path, body, key=key, headers=headers)
            try:
                err = json.loads(text)["error"]
                shape = set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
            except (ValueError, KeyError, TypeError):
                err, shape = {"message": text}, False
            ok = st == status and shape and needle in err["message"] and (param is False or err["param"] == param)
            check(ok, f"{name} -> {st}: {err.get('message')!r} param={err.get('param')!r}")
            st, c = h.post("/v1/completions", good)
            check(st == 200 and c["choices"][0]["text"] == good_text[:len(c["choices"][0]["text"])],
                  "  then a good request succeeds")

        msgs = [{"role": "user", "content": "hi"}]
        expect("invalid JSON", 400, "invalid JSON", body='{"messages": [')
        expect("body not an object", 400, "must be a JSON object", body="[1, 2]")
        expect("empty body", 400, "empty", body="")
        expect("invalid UTF-8", 400, "UTF-8", body=b'{"prompt": "\xff\xfe"}', path="/v1/completions")
        # cJSON would cut the string at the NUL: refused, never truncated silently
        expect("\\u0000 in a prompt", 400, "holds \\u0000 (at byte 15)", body=b'{"prompt": "ab\\u0000cd"}',
               path="/v1/completions")
        expect("max_tokens as a string", 400, "max_tokens must be an integer, got string",
               body={"messages": msgs, "max_tokens": "5"}, param="max_tokens")
        expect("temperature as a string", 400, "temperature must be a number, got string",
               body={"messages": msgs, "temperature": "hot"}, param="temperature")
        expect("stream as a string", 400, "stream must be a boolean, got string", body={"messages": msgs, "stream": "yes"})
        expect("messages as a string", 400, "messages must be an array", body={"messages": "hi"}, param="messages")
        expect("message content a number", 400, "messages[0].content must be a string",
               body={"messages": [{"role": "user", "content": 5}]})
        expect("image_url that is not a data URL", 400, "image_url.url must be a data URL",
               body={"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})
        expect("content part of an unknown type", 400, "content parts of type \"input_audio\" are not supported",
               body={"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]})
        expect("unknown model", 404, "gpt-5", body={"model": "gpt-5", "messages": msgs}, param="model")
        expect("top_p 1.5", 400, "top_p must be in (0, 1], got 1.5", body={"messages": msgs, "top_p": 1.5},
               param="top_p")
        expect("temperature -1", 400, "temperature", body={"messages": msgs, "temperature": -1}, param="temperature")
        expect("negative max_tokens", 400, "max_tokens must be >= 1, got -1",
               body={"messages": msgs, "max_tokens": -1}, param="max_tokens")
        expect("fractional max_tokens", 400, "max_tokens must be an integer, got 2.5",
               body={"messages": msgs, "max_tokens": 2.5})
        expect("empty messages", 400, "empty", body={"messages": []}, param="messages")
        expect("roles not alternating", 400, "alternate",
               body={"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
        expect("n = 0", 400, "n must be an integer in [1, 8], got 0", body={"messages": msgs, "n": 0}, param="n")
        expect("n = 9", 400, "n must be an integer in [1, 8], got 9", body={"messages": msgs, "n": 9}, param="n")
        expect("best_of 3 with n 2", 400, "best_of", body={"messages": msgs, "n": 2, "best_of": 3}, param="best_of")
        expect("9 stop strings", 400, "at most 8", body={"messages": msgs, "stop": list("abcdefghi")}, param="stop")
        expect("top_logprobs 21", 400, "top_logprobs must be <= 20",
               body={"messages": msgs, "logprobs": True, "top_logprobs": 21})
        expect("top_logprobs without logprobs", 400, "requires logprobs", body={"messages": msgs, "top_logprobs": 2})
        expect("a list of prompts streamed", 400, "cannot be streamed", path="/v1/completions",
               body={"prompt": ["a", "b"], "stream": True}, param="prompt")
        expect("9 prompts", 400, "at most 8 prompts", path="/v1/completions", body={"prompt": ["a"] * 9},
               param="prompt")
        expect("a bad prompt in a list", 400, "prompt[1] must be a string or a list of token ids",
               path="/v1/completions", body={"prompt": ["a", 5]}, param="prompt")
        expect("token-id prompt with a string in it", 400, "prompt[1] must be a token id", path="/v1/completions",
               body={"prompt": [2, "x"]}, param="prompt")
        expect("token-id prompt outside the vocabulary", 400, "outside the vocabulary", path="/v1/completions",
               body={"prompt": [2, 99999999]})
        # issue 16: nothing silently ignored -- each refusal names its field
        for name, extra, needle in [
                ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "no tool-calling format"),
                ("tool_choice", {"tool_choice": "auto"}, "no tool-calling format"),
                ("functions", {"functions": [{"name": "f"}]}, "no tool-calling format"),
                ("response_format", {"response_format": {"type": "json_schema", "json_schema": {
                    "name": "x", "schema": {"type": "string", "pattern": "^a"}}}}, "unsupported keyword 'pattern'"),
                ("response_format", {"response_format": {"type": "regex"}}, "response_format.regex must be a string"),
                ("guided_regex", {"guided_regex": "a(?=b)"}, "lookaround (?=...) is not supported at position 1"),
                ("guided_grammar", {"guided_grammar": "root ::= x"}, "guided_grammar is not supported"),
                ("best_of", {"best_of": 3}, "best_of"),
                ("echo", {"echo": True}, "echo"),
                ("store", {"store": True}, "store"),
                ("frobnicate", {"frobnicate": 1}, "not a supported field"),
                ("presence_penalty", {"presence_penalty": 2.5}, "presence_penalty must be in [-2, 2]"),
                ("frequency_penalty", {"frequency_penalty": -3}, "frequency_penalty must be in [-2, 2]"),
                ("logit_bias", {"logit_bias": {"5": 101}}, "[-100, 100]"),
                ("logit_bias", {"logit_bias": {"x": 1}}, "is not a token id"),
                ("logit_bias", {"logit_bias": {"99999999": 1}}, "outside the vocabulary"),
                ("logit_bias", {"logit_bias": {str(i): 1 for i in range(301)}}, "at most 300"),
                ("max_completion_tokens", {"max_tokens": 5, "max_completion_tokens": 6}, "differ"),
                ("min_tokens", {"min_tokens": -1}, "min_tokens must be >= 0"),
                ("stop_token_ids", {"stop_token_ids": [1, "a"]}, "stop_token_ids[1]"),
                ("stop_token_ids", {"stop_token_ids": list(range(9))}, "at most 8"),
                ("user", {"user": 5}, "user must be a string")]:
            expect(f"{name} refused", 400, needle, body={"messages": msgs, **extra}, param=name)
        # ... and clients' default values are accepted
        st, _ = h.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 2, "tools": [], "tool_choice": "none",
                                                "parallel_tool_calls": True, "store": False, "metadata": None,
                                                "response_format": {"type": "text"}, "stream_options": None,
                                                "max_completion_tokens": 2, "n": 1, "logit_bias": {},
                                                "service_tier": "auto", "user": "clinic-7"})
        check(st == 200, f"default-valued OpenAI fields accepted ({st})")
        expect("completions logprobs true", 400, "logprobs must be an integer", path="/v1/completions",
               body={"prompt": "hi", "logprobs": True})
        expect("prompt + max_tokens beyond every engine's context", 400, "", path="/v1/completions",
               body={"prompt": "hello", "max_tokens": 1000})
        big = json.dumps({"messages": [{"role": "user", "content": "x" * 100000}]})
        expect("oversized body (100 KB > 64 KiB)", 413, "larger than the limit", body=big)
        expect("oversized chunked body", 413, "larger than the limit", body=big, headers=["Transfer-Encoding: chunked"])
        expect("missing API key", 401, "API key", body={"messages": msgs}, key=None)
        expect("wrong API key", 401, "API key", body={"messages": msgs}, key="nope")
        expect("models with a wrong key", 401, "API key", method="GET", path="/v1/models", key="nope")
        expect("unknown route", 404, "unknown URL", method="GET", path="/v1/nope")
        expect("GET on a POST route", 405, "POST", method="GET", path="/v1/chat/completions")
        expect("POST on a GET route", 405, "GET", path="/v1/models", body={})

        # a refused request leaves its connection usable: curl sends both on one connection
        p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n", "-H",
                            f"Authorization: Bearer {KEY}", "-d", json.dumps(good), cl.url("/v1/nope"),
                            cl.url("/v1/completions")], capture_output=True, text=True)
        check(p.stdout.split("\n")[:2] == ["404 1", "200 0"], f"404 then 200 on one kept-alive connection: {p.stdout.split()}")

        # ---- a client that leaves mid-stream ---------------------------------------------------
        def metric(name):
            return sum(v for k, v in cl.metrics().items() if k == name or k.startswith(name + "{"))

        def wait_idle(timeout=5):
            t0 = time.time()
            while time.time() - t0 < timeout:
                if metric("gemmashard_kv_blocks_used") == 0 and metric("gemmashard_requests_in_flight") == 0:
                    return True
                time.sleep(0.05)
            return False

        gen0 = metric("gemmashard_generated_tokens_total")
        long_req = json.dumps({"prompt": prompt, "max_tokens": 400, "temperature": 0.8, "seed": 5, "stream": True})
        curl = subprocess.Popen(["curl", "-sS", "-N", "-H", f"Authorization: Bearer {KEY}", "--data-binary", "@-",
                                 cl.url("/v1/completions")], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        curl.stdin.write(long_req.encode())
        curl.stdin.close()
        got = 0
        while got < 3:
            line = curl.stdout.readline()
            if not line:
                break
            got += line.startswith(b"data: {")
        busy = metric("gemmashard_requests_in_flight")
        curl.kill()
        curl.wait()
        t0 = time.time()
        idle = wait_idle()
        dt = time.time() - t0
        time.sleep(0.5)
        gen = metric("gemmashard_generated_tokens_total") - gen0
        check(got == 3 and busy >= 1 and idle and gen < 400,
              f"client gone after {got} chunks: request cancelled after {gen:.0f} of 400 tokens, KV free in {dt:.2f} s")
        st, c = h.post("/v1/completions", good)
        check(st == 200, "  then a good request succeeds")

        # ---- structured output (issue 16): the random-weight model answers in schema-valid JSON --
        person = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                                   "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                  "required": ["name", "age"], "additionalProperties": False}
        for path, body in (("/v1/chat/completions", {"messages": msgs}),
                           ("/v1/completions", {"prompt": "Patient:"})):
            st, r = h.post(path, dict(body, max_tokens=40, temperature=0, response_format={
                "type": "json_schema", "json_schema": {"name": "person", "schema": person, "strict": True}}))
            ch = r["choices"][0] if st == 200 else {}
            txt = ch.get("message", {}).get("content") if "message" in ch else ch.get("text")
            try:
                doc = json.loads(txt) if ch.get("finish_reason") == "stop" else None
            except (TypeError, ValueError):
                doc = None
            check(st == 200 and isinstance(doc, dict) and list(doc) == ["name", "age"] and isinstance(doc["age"], int)
                  and 0 <= doc["age"] <= 120 and len(doc["name"]) <= 10,
                  f"response_format json_schema on {path}: {st} {txt!r} ({ch.get('finish_reason')})")
        st, r = h.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 3, "temperature": 0,
                                                "response_format": {"type": "json_object"}})
        txt, fin = (r["choices"][0]["message"]["content"], r["choices"][0]["finish_reason"]) if st == 200 else ("", "")
        try:
            whole = isinstance(json.loads(txt), dict)
        except ValueError:
            whole = False
        check(st == 200 and txt.startswith("{") and (fin == "length" and not whole or fin == "stop" and whole),
              f"json_object in 3 tokens: a whole object (stop) or a prefix (length): {txt!r} ({fin})")
        st, r = h.post("/v1/completions", {"prompt": "Fever?", "max_tokens": 8, "seed": 2,
                                           "guided_choice": ["yes", "no"]})
        check(st == 200 and r["choices"][0]["text"] in ("yes", "no"), f"guided_choice: {st} {r}")
        # regular expressions (vLLM's guided_regex / structured_outputs.regex, response_format regex)
        for extra in ({"guided_regex": r"\d{3}-[A-Z]{2}"}, {"structured_outputs": {"regex": r"\d{3}-[A-Z]{2}"}},
                      {"response_format": {"type": "regex", "regex": r"\d{3}-[A-Z]{2}"}}):
            st, r = h.post("/v1/chat/completions", dict({"messages": msgs, "max_tokens": 16, "seed": 5}, **extra))
            ch = r["choices"][0] if st == 200 else {}
            txt = ch.get("message", {}).get("content")
            check(st == 200 and ch.get("finish_reason") == "stop" and re.fullmatch(r"\d{3}-[A-Z]{2}", txt or "", re.ASCII),
                  f"regex {list(extra)[0]}: {st} {txt!r} ({ch.get('finish_reason')})")

        # ---- n > 1 (issue 16): choice i is the n = 1 answer with seed + i, bit for bit (logprobs
        # too), at T = 2; the prompt is prefilled once (prefix-cache hits) -----------------------
        def pc_hits():
            time.sleep(0.6)  # the counters come with the engine's heartbeats (every 200 ms)
            return sum(v for k, v in cl.metrics().items() if k.startswith("gemmashard_prefix_cache_hit_tokens_total"))
        npr = "Clinical note: " + " ".join(f"w{i}" for i in range(40))  # a fresh prompt: no earlier hit
        n_np = n_tokens(gs, model, npr, True, scratch)
        hits0 = pc_hits()
        st, g3 = h.post("/v1/completions", {"prompt": npr, "max_tokens": 6, "temperature": 0, "n": 3})
        hits1 = pc_hits()
        st1, g1 = h.post("/v1/completions", {"prompt": npr, "max_tokens": 6, "temperature": 0})
        check(st == 200 and st1 == 200 and [c["index"] for c in g3["choices"]] == [0, 1, 2] and
              all(c["text"] == g1["choices"][0]["text"] and c["finish_reason"] == g1["choices"][0]["finish_reason"]
                  for c in g3["choices"]) and g3["usage"]["prompt_tokens"] == n_np and
              g3["usage"]["completion_tokens"] == 3 * g1["usage"]["completion_tokens"],
              f"greedy n=3: three choices equal n=1, usage summed ({st} {g3.get('usage')})")
        check(hits1 - hits0 == 2 * ((n_np - 1) // 16 * 16),
              f"n=3: choices 1 and 2 take choice 0's full prompt blocks ({hits1 - hits0:.0f} hit tokens, "
              f"prompt {n_np})")
        for temp in (1.0, 2.0):
            body = {"prompt": npr, "max_tokens": 6, "temperature": temp, "top_k": 0, "logprobs": 3, "seed": 77}
            st, g4 = h.post("/v1/completions", {**body, "n": 4})
            one = [h.post("/v1/completions", {**body, "seed": 77 + i})[1]["choices"][0] for i in range(4)]
            got = [{k: c[k] for k in ("text", "logprobs", "finish_reason")} for c in g4.get("choices", [])]
            want = [{k: c[k] for k in ("text", "logprobs", "finish_reason")} for c in one]
            check(st == 200 and got == want and len({c["text"] for c in one}) > 1,
                  f"sampled n=4 at temperature {temp}: choice i equals n=1 with seed 77 + i (text, logprobs)")
        # a list of prompts with n: index = prompt_index * n + i
        st, lp = h.post("/v1/completions", {"prompt": [npr, "Fever?"], "max_tokens": 4, "temperature": 1, "seed": 3,
                                            "n": 2})
        singles = [h.post("/v1/completions", {"prompt": p_, "max_tokens": 4, "temperature": 1, "seed": 3 + i})[1]
                   for p_ in (npr, "Fever?") for i in range(2)]
        check(st == 200 and [c["index"] for c in lp["choices"]] == [0, 1, 2, 3] and
              [c["text"] for c in lp["choices"]] == [x["choices"][0]["text"] for x in singles] and
              lp["usage"]["prompt_tokens"] == singles[0]["usage"]["prompt_tokens"] + singles[2]["usage"]["prompt_tokens"],
              f"2 prompts x n=2: index prompt*n+i, prompt tokens once per prompt ({st} {lp.get('usage')})")
        # streamed n = 2 on completions: chunks carry their index; each choice one finish
        st, ev, _ = h.stream("/v1/completions", {"prompt": npr, "max_tokens": 5, "temperature": 1, "seed": 9, "n": 2,
                                                 "stream": True, "stream_options": {"include_usage": True}})
        st1, w2 = h.post("/v1/completions", {"prompt": npr, "max_tokens": 5, "temperature": 1, "seed": 9, "n": 2})
        txt, fins, usage = ["", ""], [[], []], None
        for e in ev:
            if isinstance(e, dict):
                usage = e.get("usage") or usage
                for c in e["choices"]:
                    txt[c["index"]] += c["text"]
                    if c["finish_reason"]:
                        fins[c["index"]].append(c["finish_reason"])
        check(st == 200 and ev and ev[-1] == "[DONE]" and txt == [c["text"] for c in w2["choices"]] and
              fins == [[c["finish_reason"]] for c in w2["choices"]] and usage == w2["usage"],
              f"streamed n=2: per-index chunks equal the whole answer ({txt}, {fins}, {usage})")

        # ---- the official openai client -----------------------------------------------------------
        node = shutil.which("node")
        if node and node_modules and os.path.isdir(os.path.join(node_modules, "openai")):
            p = subprocess.run([node, os.path.join(here, "openai_client.mjs"), node_modules, cl.url("/v1"), KEY, MODEL],
                               capture_output=True, text=True, timeout=300)
            check(p.returncode == 0, f"openai client ran (rc {p.returncode}) {p.stderr[-2000:]}")
            if p.returncode == 0:
                o = json.loads(p.stdout)
                check(o["models"] == [{"id": MODEL, "object": "model", "owned_by": "gemmashard"}] and
                      o["model"]["id"] == MODEL, "openai: models.list / retrieve")
                exp_chat = h.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "What is a fever?"}],
                                                           "max_tokens": 12, "temperature": 0})[1]
                check(o["chat"]["text"] == exp_chat["choices"][0]["message"]["content"] and
                      o["chat"]["role"] == "assistant" and o["chat"]["usage"] == exp_chat["usage"],
                      f"openai: chat equals curl's ({o['chat']['text']!r})")
                lb = o.get("logit_bias", {})
                check(lb.get("tokens") == [" column"] * 6,
                      f"openai: logit_bias +100 on 4321 makes every token ' column' ({lb.get('tokens')})")
                check("tools" in str(o.get("err_tools")), f"openai: tools refused ({o.get('err_tools')})")
                so = o.get("structured", {})
                try:
                    doc = json.loads(so.get("text") or "")
                except ValueError:
                    doc = None
                check(so.get("finish") == "stop" and isinstance(doc, dict) and list(doc) == ["diagnosis", "urgent"]
                      and isinstance(doc["urgent"], bool),
                      f"openai: response_format json_schema gives a valid document ({so})")
                e = o.get("err_schema", {})
                check(e.get("thrown") and e.get("status") == 400 and e.get("param") == "response_format" and
                      "format" in e.get("message", ""), f"openai: unsupported schema keyword -> 400 ({e})")
                check(o["chat_stream"]["text"] == o["chat"]["text"] and o["chat_stream"]["role"] == "assistant" and
                      o["chat_stream"]["finish"] == o["chat"]["finish"] and o["chat_stream"]["usage"] == o["chat"]["usage"],
                      f"openai: streamed chat equals the whole answer ({o['chat_stream']['chunks']} chunks)")
                check(o["seeded"] == o["seeded_stream"], "openai: seeded sampling, streamed equals whole")
                check(o["completion"]["text"] == ref["greedy"]["text"][:len(o["completion"]["text"])] and
                      o["completion_stream"] == o["completion"]["text"] and
                      len(o["completion"]["logprobs"]["token_logprobs"]) == o["completion"]["usage"]["completion_tokens"],
                      f"openai: completions whole, streamed, logprobs ({o['completion']['text']!r})")
                lpc = o["chat_logprobs"]["content"]
                check(len(lpc) >= 1 and all(len(e["top_logprobs"]) == 2 for e in lpc), "openai: chat logprobs")
                e = o["err_top_p"]
                check(e["thrown"] and e["cls"] == "BadRequestError" and e["status"] == 400 and e["param"] == "top_p",
                      f"openai: top_p 1.5 -> {e.get('cls')} {e.get('status')} {e.get('message')}")
                e = o["err_model"]
                check(e["thrown"] and e["cls"] == "NotFoundError" and e["code"] == "model_not_found",
                      f"openai: unknown model -> {e.get('cls')} {e.get('code')}")
                e = o["err_n"]
                check(e["thrown"] and e["status"] == 400 and e["param"] == "n", f"openai: n=9 -> {e.get('cls')}")
                # n = 2, seed 5: choice i is the n = 1 answer with seed 5 + i
                one = [h.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "What is a fever?"}],
                                                       "max_tokens": 8, "temperature": 1, "seed": 5 + i,
                                                       "logprobs": True})[1] for i in range(2)]
                n2 = o.get("n2", {})
                check([c["index"] for c in n2.get("choices", [])] == [0, 1] and
                      [c["text"] for c in n2["choices"]] == [x["choices"][0]["message"]["content"] for x in one] and
                      [c["lps"] for c in n2["choices"]] ==
                      [[e["logprob"] for e in x["choices"][0]["logprobs"]["content"]] for x in one] and
                      n2["usage"]["prompt_tokens"] == one[0]["usage"]["prompt_tokens"] and
                      n2["usage"]["completion_tokens"] == sum(x["usage"]["completion_tokens"] for x in one),
                      f"openai: n=2 choices equal n=1 with seed + i, usage summed ({n2})")
                n2s = o.get("n2_stream", {})
                check(n2s.get("text") == [c["text"] for c in n2.get("choices", [])] and
                      n2s.get("finish") == [c["finish"] for c in n2.get("choices", [])] and
                      n2s.get("usage") == n2.get("usage"), f"openai: n=2 streamed per index equals whole ({n2s})")
                e = o["err_key"]
                check(e["thrown"] and e["cls"] == "AuthenticationError" and e["status"] == 401,
                      f"openai: wrong key -> {e.get('cls')}")
                check(o["after_errors"] == o["chat"]["text"], "openai: a good request after the errors")
        else:
            check(False, f"openai client available (node={node}, openai package in {node_modules!r}; "
                         f"deploy/install-deps.sh installs it)")

        # ---- metrics ----------------------------------------------------------------------------
        m = cl.metrics()
        n200 = m.get('gemmashard_requests_total{api="http",status="200"}', 0)
        n400 = m.get('gemmashard_requests_total{api="http",status="400"}', 0)
        check(n200 >= 40 and n400 >= 20 and m.get('gemmashard_requests_total{api="http",status="401"}', 0) >= 3 and
              m.get('gemmashard_requests_total{api="http",status="413"}', 0) >= 2,
              f"metrics count HTTP requests by status (200: {n200:.0f}, 400: {n400:.0f})")
        check(m.get("gemmashard_time_to_first_token_seconds_count", 0) >= 20 and
              m.get("gemmashard_time_per_output_token_seconds_count", 0) > 0, "TTFT and TPOT histograms filled")

        # ---- the engine dies mid-stream: an error event, then [DONE] --------------------------------
        curl = subprocess.Popen(["curl", "-sS", "-N", "-H", f"Authorization: Bearer {KEY}", "--data-binary", "@-",
                                 cl.url("/v1/chat/completions")], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        curl.stdin.write(json.dumps({"messages": msgs, "max_tokens": 450, "temperature": 0.8, "seed": 6,
                                     "stream": True}).encode())
        curl.stdin.close()
        curl.stdin = None
        head = b""
        while head.count(b"data: {") < 3:
            line = curl.stdout.readline()
            if not line:
                break
            head += line
        cl.kill_engine(0)
        t0 = time.time()
        try:
            rest, _ = curl.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            curl.kill()
            rest = b""
        events = [x[6:] for x in (head + rest).decode().split("\n") if x.startswith("data: ")]
        # 450 tokens take > 1 s here; the kill lands within milliseconds of the third event
        last = json.loads(events[-2]) if len(events) >= 2 else {}
        check(events[-1:] == ["[DONE]"] and "error" in last and last["error"]["type"] and
              time.time() - t0 < 15, f"engine lost mid-stream: error event then [DONE] "
                                     f"({last.get('error', {}).get('message')!r})")
        cl.start_engine(0)
        cl.wait_healthy(1)
        st, c = h.post("/v1/completions", good)
        check(st == 200 and c["choices"][0]["text"] == good_text[:len(c["choices"][0]["text"])],
              "  then (engine back) a good request succeeds")
    check(cl.coord_rc == 0, f"coordinator exits 0 on SIGTERM (rc {cl.coord_rc})")
    return exit_status(lambda: cl.log("coordinator"))


if __name__ == "__main__":
    sys.exit(main())
