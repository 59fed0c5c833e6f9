"""Several models behind one coordinator (issue 15 item 5): one gemmashard-coordinator serving two
generated models under different names, one 1-rank engine each (real mpirun), real clients (urllib
for HTTP, python3-grpcio). The reference for each model's answers is that model served alone by the
in-process engine (`gemmashard run --batch`, no coordinator), so a request routed to the wrong
engine gives the other model's text.

Checks: requests by name go to the right engine (HTTP and gRPC, greedy answers equal to each model's
own reference, and the two references differ); an unknown model -> 404 model_not_found /
NOT_FOUND naming it; no model with two served -> 400 / INVALID_ARGUMENT "model is required";
Tokenize needs the model too; /v1/models and gRPC ModelInfo list both with their max_model_len
(each engine's --ctx) and vision flag; an image to the text-only model -> 400 "does not take
images"; an engine announcing a model that is not served, and one whose vision tower takes
another image size than the served model's config.json, are refused at their hello (coordinator
log, the engine's own log, gemmashard_engines_refused_total) while the others keep serving;
/metrics has per-model series and each engine's model and numerics; bad --model/--served-name
command lines exit 2 (or 1) with a message; a clean coordinator exit.

Model "alpha" is the tiny text preset, "beta" the tiny-vision preset (a SigLIP-shaped tower).

usage: test_multi_model.py BUILD_DIR TOKENIZER_JSON SCRATCH
"""
import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, exit_status  # noqa: E402
from cluster import Cluster, kill_session, mpi_env  # noqa: E402

import grpc  # noqa: E402
from test_grpc import compile_protos  # noqa: E402

PROMPTS = ["The patient presented with", "Differential diagnosis of chest pain:", "Ibuprofen 400 mg"]
CTX = {"alpha": 256, "beta": 384}


def post(cl, path, body):
    req = urllib.request.Request(cl.url(path), data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def tiny_png():
    """A valid 2x2 RGB PNG."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + bytes([200, 30, 30] * 2) for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def start_reference(gs, model, reqs, scratch, tag):
    """The in-process engine (T = 1, no coordinator) on reqs: a running process and its output path."""
    inp, out = os.path.join(scratch, f"ref-{tag}.in.jsonl"), os.path.join(scratch, f"ref-{tag}.out.jsonl")
    with open(inp, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in reqs))
    p = subprocess.Popen([gs, "run", "--model", model, "--batch", inp, "--out", out, "--threads", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return p, out


def finish_reference(p, out):
    """id -> record of a start_reference run."""
    err = p.communicate(timeout=300)[1]
    if p.returncode != 0:
        raise RuntimeError(f"reference run failed: {err}")
    with open(out) as f:
        return {d["id"]: d for d in map(json.loads, f)}


def bad_command_lines(coord_bin, model_a, model_b):
    """Refused at start, with a message (no engines needed)."""
    def coord_fails(args, needle, rc_want):
        p = subprocess.run([coord_bin, *args, "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
                            "--engine-listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
        check(p.returncode == rc_want and needle in p.stderr,
              f"coordinator {' '.join(a if '/' not in a else os.path.basename(a) for a in args)} -> exit "
              f"{p.returncode}: {p.stderr.strip()[-160:]}")

    coord_fails(["--model", model_a, "--served-name", "x", "--model", model_b, "--served-name", "x"],
                "two models are served as \"x\"", 1)
    coord_fails(["--served-name", "x", "--model", model_a, "--served-name", "y"], "two --served-name", 2)
    coord_fails(["--model", model_a, "--served-name", "x", "--served-name", "y"], "two --served-name", 2)
    coord_fails(["--model", model_a, "--served-name", "a b"], "has a space, quote", 1)


def wait_for(pred, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.1)
    return False


def main():
    build, tok, scratch = sys.argv[1:4]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    compile_protos(repo, os.path.join(scratch, "py"))
    import gemmashard.v1.inference_pb2 as pb
    import gemmashard.v1.inference_pb2_grpc as pbg

    gs = os.path.join(build, "tools", "gemmashard")
    coord_bin = os.path.join(build, "coordinator", "gemmashard-coordinator")
    t_start = time.time()

    def make(name, *args):  # started, not waited for
        d = os.path.join(scratch, name)
        return d, subprocess.Popen([gs, "make-test-model", "--out", d, "--tokenizer", tok, *args],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    # beta is the tiny-vision preset: a SigLIP-shaped tower in the Gemma3ForConditionalGeneration layout
    (model_a, p_a), (model_b, p_b) = (make("model-a", "--preset", "tiny", "--seed", "1"),
                                      make("model-b", "--preset", "tiny-vision", "--seed", "2"))
    # beta's architecture with a tower that takes 28x28 images: an engine of it must not serve beta
    model_c, p_c = make("model-c", "--preset", "tiny-vision", "--seed", "2", "--vision-image-size", "28")
    for p in (p_a, p_b, p_c):
        err = p.communicate()[1]
        assert p.returncode == 0, err

    cl = Cluster(build, None, engines=2, tp=1, models=[(model_a, "alpha"), (model_b, "beta")],
                 engine_models=[0, 1], engine_args=["--max-seqs", "4", "--threads", "1"],
                 logdir=os.path.join(scratch, "logs"))
    strays = []
    try:
        # the cluster starts while the references run and the bad command lines are tried
        cl.start_coordinator()
        cl.start_engine(0, extra=["--ctx", str(CTX["alpha"])])
        cl.start_engine(1, extra=["--ctx", str(CTX["beta"])])
        reqs = [{"id": f"g{i}", "prompt": pr, "max_tokens": 12, "temperature": 0} for i, pr in enumerate(PROMPTS)]
        runs = {"alpha": start_reference(gs, model_a, reqs, scratch, "a"),
                "beta": start_reference(gs, model_b, reqs, scratch, "b")}
        bad_command_lines(coord_bin, model_a, model_b)
        ref = {name: finish_reference(*run) for name, run in runs.items()}
        differ = sum(ref["alpha"][r["id"]]["text"] != ref["beta"][r["id"]]["text"] for r in reqs)
        check(differ >= 2, f"the two models answer differently alone ({differ}/{len(reqs)} prompts), so "
                           "routing to the wrong engine shows")
        cl.wait_healthy(2)
        # engines the coordinator must refuse (checked further down): one for a model it does not
        # serve, one whose vision tower does not match beta's config.json
        for tag, d, name in (("stray", model_a, "gamma"), ("mismatch", model_c, "beta")):
            with open(os.path.join(cl.logdir, f"engine-{tag}.log"), "ab") as log:
                strays.append(subprocess.Popen(
                    ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "1",
                     cl.worker_bin, "--model", d, "--served-name", name, "--coordinator",
                     f"127.0.0.1:{cl.engine_port}", "--engine-id", tag, "--ctx", "128", "--threads", "1"],
                    stdout=log, stderr=subprocess.STDOUT, env=mpi_env(None), start_new_session=True))
        ch = grpc.insecure_channel(f"127.0.0.1:{cl.grpc_port}")
        stub = pbg.InferenceStub(ch)

        # ---- routing by name: each answer equals its own model's reference -------------------
        sent = {"alpha": 0, "beta": 0}
        for name in ("alpha", "beta"):
            n_http = n_grpc = 0
            for r in reqs:
                exp = ref[name][r["id"]]["text"]
                st, d = post(cl, "/v1/completions", {"model": name, "prompt": r["prompt"], "max_tokens": 12,
                                                     "temperature": 0})
                n_http += st == 200 and d["choices"][0]["text"] == exp and d["model"] == name
                g = stub.Generate(pb.GenerateRequest(model=name, prompt=r["prompt"], max_tokens=12, temperature=0),
                                  timeout=30)
                n_grpc += g.text == exp
                sent[name] += 2
            check(n_http == len(reqs), f"HTTP model={name}: answers equal {name}'s own reference ({n_http}/{len(reqs)})")
            check(n_grpc == len(reqs), f"gRPC model={name}: answers equal {name}'s own reference ({n_grpc}/{len(reqs)})")
        st, d = post(cl, "/v1/chat/completions", {"model": "beta", "max_tokens": 4,
                                                  "messages": [{"role": "user", "content": "Hi"}]})
        sent["beta"] += st == 200
        check(st == 200 and d["model"] == "beta", f"chat to beta -> {st}")

        # ---- model errors ------------------------------------------------------------------
        st, d = post(cl, "/v1/completions", {"model": "gamma", "prompt": "hi", "max_tokens": 2})
        err = d.get("error", {})
        check(st == 404 and err.get("code") == "model_not_found" and "gamma" in err.get("message", "") and
              err.get("param") == "model", f"unknown model over HTTP -> {st} {err}")
        st, d = post(cl, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        err = d.get("error", {})
        check(st == 400 and "model is required when 2 models are served" in err.get("message", "") and
              err.get("type") == "invalid_request_error", f"no model with two served, HTTP -> {st} {err}")

        def rpc_err(call):
            try:
                call()
                return None, ""
            except grpc.RpcError as e:
                return e.code(), e.details() or ""

        code, det = rpc_err(lambda: stub.Generate(pb.GenerateRequest(model="gamma", prompt="hi", max_tokens=2),
                                                  timeout=10))
        check(code == grpc.StatusCode.NOT_FOUND and "gamma" in det, f"unknown model over gRPC -> {code} {det}")
        code, det = rpc_err(lambda: stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=10))
        check(code == grpc.StatusCode.INVALID_ARGUMENT and "model is required" in det,
              f"no model over gRPC -> {code} {det}")
        code, det = rpc_err(lambda: stub.Tokenize(pb.TokenizeRequest(text="hi"), timeout=10))
        check(code == grpc.StatusCode.INVALID_ARGUMENT and "model is required" in det,
              f"Tokenize without a model -> {code} {det}")
        t = stub.Tokenize(pb.TokenizeRequest(model="beta", text=PROMPTS[2], add_special_tokens=True), timeout=10)
        n_ref = ref["beta"]["g2"]["usage"]["prompt_tokens"]
        check(len(t.token_ids) == n_ref and t.token_ids[0] == 2,
              f"Tokenize model=beta: <bos> + the prompt, as many ids as the reference counted ({n_ref})")

        # ---- an image to the text-only model ----------------------------------------------
        png = base64.b64encode(tiny_png()).decode()
        st, d = post(cl, "/v1/chat/completions", {"model": "alpha", "max_tokens": 2, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]}]})
        msg = d.get("error", {}).get("message", "")
        check(st == 400 and "model `alpha` does not take images" in msg, f"image to text-only alpha -> {st} {msg}")

        # ---- model listings ----------------------------------------------------------------
        st, body = cl.get("/v1/models")
        data = {m["id"]: m for m in json.loads(body)["data"]} if st == 200 else {}
        check(sorted(data) == ["alpha", "beta"], f"/v1/models lists both ({sorted(data)})")
        for name in ("alpha", "beta"):
            m = data.get(name, {})
            want_vis = name == "beta"
            check(m.get("max_model_len") == CTX[name] and m.get("capabilities", {}).get("vision") is want_vis and
                  m.get("engines") == 1 and m.get("numerics") == ["fp32"] and m.get("object") == "model",
                  f"/v1/models {name}: max_model_len {m.get('max_model_len')}, capabilities {m.get('capabilities')}, "
                  f"numerics {m.get('numerics')}")
        st, body = cl.get("/v1/models/beta")
        check(st == 200 and json.loads(body)["max_model_len"] == CTX["beta"], f"/v1/models/beta -> {st}")
        st, body = cl.get("/v1/models/gamma")
        check(st == 404 and json.loads(body)["error"]["code"] == "model_not_found", f"/v1/models/gamma -> {st}")
        for name in ("alpha", "beta"):
            mi = stub.ModelInfo(pb.ModelInfoRequest(model=name), timeout=5)
            check(mi.model == name and mi.max_context == CTX[name] and mi.vision is (name == "beta") and
                  mi.HasField("vision") and list(mi.models) == ["alpha", "beta"] and mi.engines == 1 and
                  list(mi.numerics) == ["fp32"],
                  f"ModelInfo {name}: ctx {mi.max_context}, vision {mi.vision}, models {list(mi.models)}")
        code, det = rpc_err(lambda: stub.ModelInfo(pb.ModelInfoRequest(), timeout=5))
        check(code == grpc.StatusCode.INVALID_ARGUMENT and "model is required" in det, f"ModelInfo() -> {code} {det}")

        # ---- the engine for a model this coordinator does not serve ----------------------
        refused = wait_for(lambda: 'serves model "gamma", which this coordinator does not serve' in
                           cl.log("coordinator"), 60)
        check(refused and 'it serves "alpha", "beta"' in cl.log("coordinator"),
              "an engine announcing model gamma is refused at its hello, naming the served ones")
        told = wait_for(lambda: "which this coordinator does not serve" in cl.log("engine-stray"), 10)
        check(told, "the refused engine's own log says why")
        shape = 'the engine\'s vision tower takes 28x28 images as 4 tokens, model "beta"\'s config.json'
        check(wait_for(lambda: shape in cl.log("coordinator"), 60) and
              wait_for(lambda: shape in cl.log("engine-mismatch"), 10),
              "an engine whose tower takes 28x28 images is refused for beta (56x56), in both logs")
        m = cl.metrics()
        check(m.get("gemmashard_engines_refused_total", 0) >= 2, "gemmashard_engines_refused_total counts them")
        st, h = cl.health()
        check(h and h.get("engines") == 2 and h.get("models") == {"alpha": 1, "beta": 1},
              f"still 2 engines up, one per model ({h})")
        for p in strays:
            kill_session(p.pid)
            p.wait()
        strays = []
        g = stub.Generate(pb.GenerateRequest(model="alpha", prompt=PROMPTS[0], max_tokens=12, temperature=0), timeout=30)
        sent["alpha"] += 1
        check(g.text == ref["alpha"]["g0"]["text"], "then a good request to alpha succeeds")

        # ---- /metrics per model ------------------------------------------------------------
        m = cl.metrics()
        for i, name in enumerate(("alpha", "beta")):
            vis = "true" if name == "beta" else "false"
            check(m.get(f'gemmashard_engines_healthy{{model="{name}"}}') == 1 and
                  m.get(f'gemmashard_model_requests_total{{model="{name}"}}') == sent[name] and
                  m.get(f'gemmashard_model_info{{model="{name}",vision="{vis}"}}') == 1 and
                  m.get(f'gemmashard_model_generated_tokens_total{{model="{name}"}}', 0) > 0 and
                  f'gemmashard_model_kv_blocks_free{{model="{name}"}}' in m and
                  m.get(f'gemmashard_engine_info{{engine="engine-{i}",model="{name}",numerics="fp32",tp="1",'
                        f'vision="{vis}"}}') == 1,
                  f"/metrics for {name}: healthy, {sent[name]} requests, engine-{i} info with its model and numerics")
        al = cl.log("coordinator")
        check("model=alpha" in al and "model=beta" in al, "the access log names each request's model")
    finally:
        for p in strays:
            kill_session(p.pid)
            p.wait()
        cl.__exit__(None, None, None)
    check(cl.coord_rc == 0, f"coordinator exits cleanly ({cl.coord_rc})")
    print(f"test time {time.time() - t_start:.1f} s")
    return exit_status(lambda: cl.log("coordinator"))


if __name__ == "__main__":
    sys.exit(main())
