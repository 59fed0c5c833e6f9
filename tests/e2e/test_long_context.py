#!/usr/bin/env python3
"""A 128K-token prompt end to end (issue 12): about 600 KB of text through the real tokenizer, on
a generated model with max_position_embeddings 131072, served by `deploy/local-cluster.sh --tp 1
--cp 2` with a KV pool (--kv-mem) that holds such a prompt only spread over both groups:
  - /v1/models reports a max_model_len >= the prompt (the two groups together), while one group's
    pool alone holds less (the engine log says the request was spread over 2 groups);
  - the HTTP completion (curl) and the gRPC Generate (grpcio) are both answered, greedy, with the
    same tokens; usage.prompt_tokens equals the length Hugging Face tokenizers gives (node binding,
    plus <bos>), not a count by the code under test.

usage: test_long_context.py BUILD_DIR TOKENIZER NODE_MODULES SCRATCH
       test_long_context.py --client HTTP_PORT GRPC_PORT PROMPT_FILE N_REF PROTO_DIR   (run by the cluster)"""
import json
import os
import random
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MAX_TOKENS = 8


sys.path.insert(0, os.path.join(REPO, "tests", "tp"))
from tp_common import free_port  # noqa: E402


def clinical_text(n_sentences, seed=3):
    rng = random.Random(seed)
    subj = ["The patient", "A 67-year-old woman", "The resident", "Her daughter", "The cardiology consult",
            "Nursing staff", "The surgeon", "Radiology"]
    verb = ["reported", "noted", "documented", "observed", "recommended", "ruled out", "confirmed", "questioned"]
    obj = ["intermittent chest pain radiating to the left arm", "a troponin of 0.04 ng/mL at 3 hours",
           "bilateral lower-extremity edema", "metformin 500 mg twice daily", "an eGFR of 48 mL/min/1.73m2",
           "no acute intracranial hemorrhage on CT", "a new systolic murmur at the apex",
           "warfarin with an INR of 3.2", "sepsis criteria on arrival", "improving oxygen saturation on 2 L"]
    return " ".join(f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)} (note {i})."
                    for i in range(n_sentences))


def hf_count(node, node_modules, tok, text, scratch):
    """Token count of text with <bos>, from Hugging Face tokenizers (tests/tokenizer/hf_ref.js)."""
    corpus, ref = os.path.join(scratch, "hf.corpus.jsonl"), os.path.join(scratch, "hf.ref.jsonl")
    cases, dref = os.path.join(scratch, "hf.cases.jsonl"), os.path.join(scratch, "hf.dref.jsonl")
    with open(corpus, "w") as f:
        f.write(json.dumps({"text": text}) + "\n")
    with open(cases, "w") as f:
        f.write("[2]\n")
    subprocess.check_call([node, os.path.join(REPO, "tests", "tokenizer", "hf_ref.js"), tok, corpus, ref, cases, dref],
                          env=dict(os.environ, NODE_PATH=node_modules))
    with open(ref) as f:
        return len(json.loads(f.readline())["ids_bos"])


def client(http_port, grpc_port, prompt_file, n_ref, proto_dir):
    sys.path.insert(0, proto_dir)
    import grpc
    import gemmashard.v1.inference_pb2 as pb
    import gemmashard.v1.inference_pb2_grpc as pbg
    failures = []

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failures.append(what)

    with open(prompt_file) as f:
        text = f.read()
    models = json.loads(subprocess.run(["curl", "-sS", "--max-time", "30", f"http://127.0.0.1:{http_port}/v1/models"],
                                       capture_output=True, text=True).stdout)
    mml = models["data"][0].get("max_model_len", 0)
    check(mml >= n_ref + MAX_TOKENS - 1, f"/v1/models max_model_len {mml} holds {n_ref} + {MAX_TOKENS} tokens")
    body = os.path.join(os.path.dirname(prompt_file), "body.json")
    with open(body, "w") as f:
        json.dump({"prompt": text, "max_tokens": MAX_TOKENS, "temperature": 0}, f)
    t0 = time.time()
    p = subprocess.run(["curl", "-sS", "--max-time", "600", "-H", "Content-Type: application/json",
                        "--data-binary", f"@{body}", f"http://127.0.0.1:{http_port}/v1/completions"],
                       capture_output=True, text=True)
    try:
        r = json.loads(p.stdout)
    except ValueError:
        r = {"raw": p.stdout[:500] + p.stderr[:500]}
    u = r.get("usage", {})
    print(f"HTTP: answered in {time.time() - t0:.1f} s", flush=True)
    check(u.get("prompt_tokens") == n_ref, f"HTTP usage.prompt_tokens {u.get('prompt_tokens')} == {n_ref} (HF tokenizers)")
    check(u.get("completion_tokens", 0) >= 1 and "choices" in r, f"HTTP answered: {json.dumps(r)[:300]}")
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}",
                               options=[("grpc.max_send_message_length", 16 << 20)]) as ch:
        stub = pbg.InferenceStub(ch)
        t0 = time.time()
        g = stub.Generate(pb.GenerateRequest(prompt=text, max_tokens=MAX_TOKENS, temperature=0), timeout=600)
        print(f"gRPC: answered in {time.time() - t0:.1f} s", flush=True)
    check(g.usage.prompt_tokens == n_ref, f"gRPC usage.prompt_tokens {g.usage.prompt_tokens} == {n_ref}")
    http_text = (r.get("choices") or [{}])[0].get("text")
    check(g.text == http_text, f"gRPC and HTTP give the same greedy answer ({g.text!r} vs {http_text!r})")
    return 1 if failures else 0


def main():
    build, tok, node_modules, scratch = sys.argv[1:5]
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        raise SystemExit("node is not installed (deploy/install-deps.sh installs it)")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    sys.path.insert(0, HERE)
    from test_grpc import compile_protos  # noqa: E402
    proto_dir = os.path.join(scratch, "py")
    compile_protos(REPO, proto_dir)
    gs = os.path.join(build, "tools", "gemmashard")
    model = os.path.join(scratch, "tiny-128k")
    subprocess.run([gs, "make-test-model", "--out", model, "--tokenizer", tok, "--preset", "tiny",
                    "--max-pos", "131072"], check=True, capture_output=True)
    # about 128K tokens: grow the text, then trim it to land in [127000, 131072 - MAX_TOKENS]
    n_sent = 6000
    text = clinical_text(n_sent)
    n_ref = hf_count(node, node_modules, tok, text, scratch)
    n_sent = int(n_sent * 128000 / n_ref)
    text = clinical_text(n_sent)
    n_ref = hf_count(node, node_modules, tok, text, scratch)
    while n_ref > 131072 - MAX_TOKENS:
        n_sent -= 50
        text = clinical_text(n_sent)
        n_ref = hf_count(node, node_modules, tok, text, scratch)
    print(f"prompt: {len(text.encode())} bytes, {n_ref} tokens (Hugging Face tokenizers, with <bos>)", flush=True)
    prompt_file = os.path.join(scratch, "prompt.txt")
    with open(prompt_file, "w") as f:
        f.write(text)
    # per rank: the tiny model's one global layer holds 2 x 2 KV heads x 16 x 4 B = 256 B per position;
    # 24 MiB holds ~90K positions on one group, and the two groups together the whole 131072
    logs = os.path.join(scratch, "logs")
    hp, gp, ep = free_port(), free_port(), free_port()
    cmd = [os.path.join(REPO, "deploy", "local-cluster.sh"), "--model", model, "--tp", "1", "--cp", "2",
           "--kv-mem", "24", "--ctx", "131072", "--max-seqs", "2", "--threads", "1", "--build", build,
           "--http", f"127.0.0.1:{hp}", "--grpc", f"127.0.0.1:{gp}", "--engine-listen", f"127.0.0.1:{ep}",
           "--", sys.executable, os.path.abspath(__file__), "--client", str(hp), str(gp), prompt_file, str(n_ref),
           proto_dir]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=dict(os.environ, GS_CLUSTER_LOGS=logs))
    print(p.stdout[-4000:])
    ok = p.returncode == 0
    eng = ""
    for root, _, files in os.walk(logs):
        for fn in files:
            if "engine" in fn:
                with open(os.path.join(root, fn), errors="replace") as f:
                    eng += f.read()
    spread = "spread over 2 context-parallel groups" in eng
    print(("ok   " if spread else "FAIL ") + "the engine spread the request over its 2 groups")
    m = [ln for ln in eng.splitlines() if "can never fit" in ln or "error" in ln.lower()]
    if not ok:
        print(p.stderr[-4000:], "\n".join(m[-10:]))
    return 0 if ok and spread else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        sys.exit(client(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]))
    sys.exit(main())
