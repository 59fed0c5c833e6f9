"""TLS on the client-facing endpoints, end to end: gemmashard-coordinator with --tls-cert/--tls-key
(and then --tls-client-ca) in front of one real 2-rank engine, driven by real clients over real
TLS. The certificates are made here with the openssl CLI, into the scratch dir: a test CA, a
server certificate for 127.0.0.1 and localhost, a client certificate, and a second CA with a
client certificate of its own (a stranger).

Checks:
  - bad files refuse to start, each with its message: missing key, a key that is not the
    certificate's, a key readable by others (0644), a key given as the certificate, one of
    --tls-cert/--tls-key without the other;
  - TLS: python grpcio over ssl_channel_credentials(ca) (two channels, unary and streamed),
    `gemmashard generate --tls-ca`, curl --cacert on /v1/completions and /v1/chat/completions,
    and the official `openai` npm client (NODE_EXTRA_CA_CERTS, whole and streamed) all get the
    answer of the in-process engine (`gemmashard run --batch`) for the same greedy requests;
  - refusals that end cleanly, never hang: a grpcio plaintext channel (UNAVAILABLE), curl http://
    (an error), the CLI without --tls-ca (exit 3 and a hint), a CA that did not issue the
    certificate and a wrong --tls-server-name (exit 3), curl without --cacert; TLS 1.1 refused
    and TLS 1.2 accepted on both ports; after all of them a TLS request still succeeds and the
    coordinator exits 0;
  - mutual TLS: curl without a client certificate gets 401 client_certificate_required, with the
    stranger's or with a certificate not meant for clients 403 client_certificate_rejected, with
    the client certificate the answer; grpcio and the CLI fail without it and succeed with it.

usage: test_tls.py BUILD_DIR TOKENIZER_JSON SCRATCH NODE_MODULES
"""
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, exit_status  # noqa: E402
from cluster import Cluster  # noqa: E402
from test_grpc import compile_protos, reference  # noqa: E402

import grpc  # noqa: E402

MODEL = "tiny-medgemma"
KEY = "tls-s3cret-0123456789"
PROMPT = "The patient presented with"
CHAT = [{"role": "user", "content": "What is a fever?"}]


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(d):
    """CA, server (SAN 127.0.0.1, localhost; serverAuth), client (clientAuth), a stranger CA with
    its own client, and a spare key. Private keys are 0600 as the coordinator demands."""
    os.makedirs(d)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def ca(name, cn):
        openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={cn}",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                cwd=d)

    def leaf(name, cn, issuer, ext):
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(ext)
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=d)

    ca("ca", "gemmashard test CA")
    ca("stranger-ca", "some other CA")
    leaf("server", "gemmashard test server", "ca",
         "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    leaf("client", "gemmashard test client", "ca", "extendedKeyUsage=clientAuth\n")
    leaf("stranger", "stranger client", "stranger-ca", "extendedKeyUsage=clientAuth\n")
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", "spare.key", cwd=d)
    for f in os.listdir(d):
        if f.endswith(".key"):
            os.chmod(os.path.join(d, f), 0o600)
    shutil.copy(os.path.join(d, "server.key"), os.path.join(d, "open.key"))
    os.chmod(os.path.join(d, "open.key"), 0o644)
    return {n: os.path.join(d, n) for n in os.listdir(d)}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def curl(cl, path, body=None, cacert=True, cert=None, scheme=None, key=KEY, timeout=60):
    """(curl exit code, HTTP status or 0, body text)."""
    url = cl.url(path)
    if scheme:
        url = scheme + url[url.index(":"):]
    cmd = ["curl", "-sS", "-N", "-o", "-", "-w", "\n%{http_code}", "--max-time", "30", url]
    if cacert:
        cmd += ["--cacert", cl.tls["ca"]]
    if cert:
        cmd += ["--cert", cert[0], "--key", cert[1]]
    if key:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    text, _, code = p.stdout.rpartition("\n")
    return p.returncode, int(code) if code.isdigit() else 0, text if p.returncode == 0 else p.stderr


def tls_handshake(port, version, ca):
    """openssl s_client with only this TLS version: (session made, output)."""
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", f"-{version}", "-CAfile", ca,
                        "-cipher", "DEFAULT@SECLEVEL=0"],
                       input="", capture_output=True, text=True, timeout=30)
    out = p.stdout + p.stderr
    return "Cipher is (NONE)" not in out and "New, TLSv1" in out, out


def main():
    build, tok, scratch, node_modules = sys.argv[1:5]
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    compile_protos(repo, os.path.join(scratch, "py"))
    import gemmashard.v1.inference_pb2 as pb
    import gemmashard.v1.inference_pb2_grpc as pbg

    gs = os.path.join(build, "tools", "gemmashard")
    coordinator = os.path.join(build, "coordinator", "gemmashard-coordinator")
    model = os.path.join(scratch, MODEL)
    p = subprocess.run([gs, "make-test-model", "--out", model, "--tokenizer", tok, "--preset", "tiny"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    c = make_certs(os.path.join(scratch, "certs"))
    ref = reference(gs, model, [{"id": "greedy", "prompt": PROMPT, "max_tokens": 16, "temperature": 0},
                                {"id": "chat", "messages": CHAT, "max_tokens": 12, "temperature": 0}], scratch)

    # ---- bad files: refused at start, before any port is opened ------------------------------------
    def refused(args, needle, what):
        p = subprocess.run([coordinator, "--model", model, "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
                            "--engine-listen", "127.0.0.1:0", *args], capture_output=True, text=True, timeout=30)
        check(p.returncode != 0 and needle in p.stderr, f"{what}: exit {p.returncode}, {p.stderr.strip()[-200:]!r}")

    missing = os.path.join(scratch, "certs", "missing.key")
    refused(["--tls-cert", c["server.pem"], "--tls-key", missing], f"--tls-key {missing}: cannot open",
            "missing key file")
    refused(["--tls-cert", c["server.pem"], "--tls-key", c["spare.key"]],
            f"--tls-key {c['spare.key']} does not match --tls-cert {c['server.pem']}", "key of another certificate")
    refused(["--tls-cert", c["server.pem"], "--tls-key", c["open.key"]],
            f"--tls-key {c['open.key']}: may be read or written by group or others (mode 0644)",
            "key readable by others (0644)")
    refused(["--tls-cert", c["server.key"], "--tls-key", c["server.key"]],
            f"--tls-cert {c['server.key']}: no PEM certificate", "a key given as the certificate")
    refused(["--tls-cert", c["server.pem"]], "--tls-cert and --tls-key go together", "--tls-cert alone")
    refused(["--tls-client-ca", c["ca.pem"]], "--tls-client-ca needs TLS", "--tls-client-ca alone")

    def gen_req(max_tokens=16):
        return pb.GenerateRequest(prompt=PROMPT, max_tokens=max_tokens, temperature=0)

    md = [("authorization", f"Bearer {KEY}")]
    exp = ref["greedy"]["text"]
    engine_args = ["--ctx", "1100", "--max-seqs", "8", "--threads", "1"]

    # ---- TLS ------------------------------------------------------------------------------------------
    tls = {"cert": c["server.pem"], "key": c["server.key"], "ca": c["ca.pem"]}
    with Cluster(build, model, engines=1, tp=2, api_key=KEY, tls=tls, engine_args=engine_args,
                 logdir=os.path.join(scratch, "logs-tls")) as cl:
        target = f"127.0.0.1:{cl.grpc_port}"
        creds = grpc.ssl_channel_credentials(root_certificates=read(c["ca.pem"]))
        ids = []
        for i in range(2):  # two clients, each on its own channel
            with grpc.secure_channel(target, creds) as ch:
                stub = pbg.InferenceStub(ch)
                u = stub.Generate(gen_req(), metadata=md, timeout=60)
                chunks = list(stub.GenerateStream(gen_req(), metadata=md, timeout=60))
                stext = "".join(x.text for x in chunks)
                sids = [t for x in chunks for t in x.token_ids]
                check(u.text == exp and stext == exp and sids == list(u.token_ids),
                      f"grpcio over TLS, client {i}: unary and streamed equal the reference ({u.text!r})")
                ids.append(list(u.token_ids))
        check(len(ids[0]) == 16 and ids[0] == ids[1], "grpcio over TLS: both clients get the same 16 tokens")

        cli = [gs, "generate", "--addr", target, "--api-key", KEY, "--max-tokens", "16", "--temperature", "0",
               "--json", "--quiet"]
        p = subprocess.run(cli + ["--tls-ca", c["ca.pem"], PROMPT], capture_output=True, text=True, timeout=60)
        got = json.loads(p.stdout) if p.returncode == 0 else {}
        check(p.returncode == 0 and got.get("text") == exp and got.get("token_ids") == ids[0],
              f"gemmashard generate --tls-ca: the reference answer (exit {p.returncode}) {p.stderr[-300:]}")
        p = subprocess.run(cli + ["--addr", f"localhost:{cl.grpc_port}", "--tls-ca", c["ca.pem"], PROMPT],
                           capture_output=True, text=True, timeout=60)
        check(p.returncode == 0 and json.loads(p.stdout).get("text") == exp,
              f"gemmashard generate --tls-ca to localhost:PORT (exit {p.returncode})")
        p = subprocess.run([gs, "chat", "--addr", target, "--api-key", KEY, "--max-tokens", "12", "--temperature", "0",
                            "--json", "--quiet", "--tls-ca", c["ca.pem"], CHAT[0]["content"]],
                           capture_output=True, text=True, timeout=60)
        check(p.returncode == 0 and json.loads(p.stdout).get("text") == ref["chat"]["text"],
              f"gemmashard chat --tls-ca: the reference answer (exit {p.returncode})")

        # ---- HTTPS: curl and the openai client
        rc, st, body = curl(cl, "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 16, "temperature": 0})
        check(rc == 0 and st == 200 and json.loads(body)["choices"][0]["text"] == exp,
              f"curl --cacert /v1/completions: the reference answer ({st})")
        rc, st, body = curl(cl, "/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 12,
                                                          "temperature": 0})
        chat_text = json.loads(body)["choices"][0]["message"]["content"] if rc == 0 and st == 200 else None
        check(chat_text == ref["chat"]["text"], f"curl --cacert /v1/chat/completions: the reference answer ({st})")
        rc, st, body = curl(cl, "/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 12,
                                                          "temperature": 0, "stream": True})
        stream_text = "".join(json.loads(ln[6:])["choices"][0]["delta"].get("content") or ""
                              for ln in body.splitlines() if ln.startswith("data: {"))
        check(rc == 0 and st == 200 and stream_text == ref["chat"]["text"] and body.rstrip().endswith("data: [DONE]"),
              "curl --cacert: streamed chat (server-sent events) equals the reference")

        node = shutil.which("node")
        if node and os.path.isdir(os.path.join(node_modules, "openai")):
            env = dict(os.environ, NODE_EXTRA_CA_CERTS=c["ca.pem"])
            base = f"https://127.0.0.1:{cl.http_port}/v1"
            p = subprocess.run([node, os.path.join(here, "openai_client.mjs"), node_modules, base, KEY, MODEL],
                               capture_output=True, text=True, timeout=300, env=env)
            check(p.returncode == 0, f"openai client over HTTPS ran (rc {p.returncode}) {p.stderr[-1500:]}")
            if p.returncode == 0:
                o = json.loads(p.stdout)
                check(o["chat"]["text"] == ref["chat"]["text"] and o["chat_stream"]["text"] == o["chat"]["text"] and
                      o["chat_stream"]["finish"] == o["chat"]["finish"],
                      f"openai over HTTPS: chat, whole and streamed, equal the reference ({o['chat']['text']!r})")
                check(o["completion"]["text"] == exp[:len(o["completion"]["text"])] and o["completion"]["text"] and
                      o["completion_stream"] == o["completion"]["text"],
                      "openai over HTTPS: completions, whole and streamed, equal the reference")
                check(o["err_key"]["thrown"] and o["err_key"]["status"] == 401, "openai over HTTPS: wrong API key -> 401")
            env.pop("NODE_EXTRA_CA_CERTS")
            p = subprocess.run([node, os.path.join(here, "openai_client.mjs"), node_modules, base, KEY, MODEL],
                               capture_output=True, text=True, timeout=120, env=env)
            check(p.returncode != 0 and "certificate" in p.stderr.lower(),
                  f"openai without the CA: refuses the server's certificate (rc {p.returncode})")
        else:
            check(False, f"openai client available (node={node}, openai in {node_modules!r}; deploy/install-deps.sh)")

        # ---- an HTTPS client that leaves mid-stream is noticed and its request cancelled
        def metric(name):
            return sum(v for k, v in cl.metrics().items() if k == name or k.startswith(name + "{"))

        gen0 = metric("gemmashard_generated_tokens_total")
        sse = subprocess.Popen(["curl", "-sS", "-N", "--cacert", c["ca.pem"], "-H", f"Authorization: Bearer {KEY}",
                                "--data-binary", json.dumps({"prompt": PROMPT, "max_tokens": 1000, "temperature": 0.8,
                                                             "seed": 5, "stream": True}),
                                cl.url("/v1/completions")], stdout=subprocess.PIPE)
        got = 0
        while got < 3:
            line = sse.stdout.readline()
            if not line:
                break
            got += line.startswith(b"data: {")
        sse.kill()
        sse.wait()
        t0 = time.time()
        while time.time() - t0 < 5 and (metric("gemmashard_requests_in_flight") or metric("gemmashard_kv_blocks_used")):
            time.sleep(0.05)
        dt = time.time() - t0
        time.sleep(0.5)  # a heartbeat brings the engine's token count
        gen = metric("gemmashard_generated_tokens_total") - gen0
        check(got == 3 and dt < 5 and gen < 500,
              f"HTTPS client gone after {got} chunks: cancelled after {gen:.0f} of 1000 tokens, KV free in {dt:.2f} s")

        # ---- refusals, none of which may hang or hurt the server
        t0 = time.time()
        with grpc.insecure_channel(target) as ch:
            try:
                pbg.InferenceStub(ch).Generate(gen_req(), metadata=md, timeout=20)
                check(False, "grpcio plaintext channel to the TLS port: refused")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.UNAVAILABLE and time.time() - t0 < 10,
                      f"grpcio plaintext channel to the TLS port: {e.code()} in {time.time() - t0:.1f} s")
        t0 = time.time()
        bad = grpc.ssl_channel_credentials(root_certificates=read(c["stranger-ca.pem"]))
        with grpc.secure_channel(target, bad) as ch:
            try:
                pbg.InferenceStub(ch).Generate(gen_req(), metadata=md, timeout=20)
                check(False, "grpcio trusting another CA: refused")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.UNAVAILABLE, f"grpcio trusting another CA: {e.code()}")
        t0 = time.time()
        rc, st, err = curl(cl, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4}, cacert=False, scheme="http")
        check(rc != 0 and rc != 28 and time.time() - t0 < 10,
              f"curl http:// to the HTTPS port: an error at once (curl exit {rc}, {time.time() - t0:.1f} s)")
        rc, st, err = curl(cl, "/health", cacert=False)
        check(rc == 60, f"curl without --cacert: the certificate is not trusted (curl exit {rc})")
        p = subprocess.run(cli + [PROMPT], capture_output=True, text=True, timeout=60)
        check(p.returncode == 3 and "if it serves TLS, pass --tls-ca" in p.stderr,
              f"gemmashard generate without --tls-ca: exit {p.returncode}, {p.stderr.strip()[-160:]!r}")
        p = subprocess.run(cli + ["--tls-ca", c["stranger-ca.pem"], PROMPT], capture_output=True, text=True, timeout=60)
        check(p.returncode == 3 and "TLS handshake failed" in p.stderr and "certificate verify failed" in p.stderr,
              f"gemmashard generate with another CA: exit {p.returncode}, {p.stderr.strip()[-160:]!r}")
        p = subprocess.run(cli + ["--tls-ca", c["ca.pem"], "--tls-server-name", "db.example.org", PROMPT],
                           capture_output=True, text=True, timeout=60)
        check(p.returncode == 3 and "db.example.org" in p.stderr and "TLS handshake failed" in p.stderr,
              f"gemmashard generate, certificate for another name: exit {p.returncode}")
        p = subprocess.run(cli + ["--tls-ca", c["ca.pem"], "--tls-server-name", "localhost", PROMPT],
                           capture_output=True, text=True, timeout=60)
        check(p.returncode == 0 and json.loads(p.stdout).get("text") == exp, "--tls-server-name localhost: accepted")
        for port, name in ((cl.grpc_port, "gRPC"), (cl.http_port, "HTTPS")):
            ok11, out11 = tls_handshake(port, "tls1_1", c["ca.pem"])
            ok12, out12 = tls_handshake(port, "tls1_2", c["ca.pem"])
            check(not ok11 and "no protocols available" not in out11 and ok12 and "Verify return code: 0" in out12,
                  f"{name}: TLS 1.1 refused, TLS 1.2 accepted ({'ok' if ok12 else out12[-300:]})")

        with grpc.secure_channel(target, creds) as ch:
            u = pbg.InferenceStub(ch).Generate(gen_req(), metadata=md, timeout=60)
        rc, st, body = curl(cl, "/v1/completions", {"prompt": PROMPT, "max_tokens": 16, "temperature": 0})
        check(u.text == exp and st == 200 and json.loads(body)["choices"][0]["text"] == exp and cl.coord.poll() is None,
              "after the refused clients: gRPC and HTTPS over TLS still answer, coordinator alive")
        logs = cl.log("coordinator")
    check(cl.coord_rc == 0, f"TLS coordinator exit status {cl.coord_rc}")

    # ---- mutual TLS ----------------------------------------------------------------------------------
    mtls = dict(tls, client_ca=c["ca.pem"], client_cert=c["client.pem"], client_key=c["client.key"])
    client = (c["client.pem"], c["client.key"])
    with Cluster(build, model, engines=1, tp=2, tls=mtls, engine_args=engine_args,
                 logdir=os.path.join(scratch, "logs-mtls")) as cl:
        body = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0}
        rc, st, text = curl(cl, "/v1/completions", body, key=None)
        err = json.loads(text)["error"] if st == 401 else {}
        check(st == 401 and err.get("code") == "client_certificate_required" and "client certificate" in err["message"],
              f"mTLS: curl without a client certificate -> {st} {err}")
        rc, st, text = curl(cl, "/health", key=None)
        check(st == 401, f"mTLS: /health without a client certificate -> {st}")
        for cert, what in (((c["stranger.pem"], c["stranger.key"]), "a stranger CA's client certificate"),
                           ((c["server.pem"], c["server.key"]), "a certificate not meant for clients")):
            rc, st, text = curl(cl, "/v1/completions", body, key=None, cert=cert)
            err = json.loads(text)["error"] if st == 403 else {}
            check(st == 403 and err.get("code") == "client_certificate_rejected",
                  f"mTLS: curl with {what} -> {st} {err.get('message')}")
        rc, st, text = curl(cl, "/v1/completions", body, key=None, cert=client)
        check(st == 200 and json.loads(text)["choices"][0]["text"] == exp,
              f"mTLS: curl with the client certificate: the reference answer ({st})")

        target = f"127.0.0.1:{cl.grpc_port}"
        for creds, what in ((grpc.ssl_channel_credentials(read(c["ca.pem"])), "without a client certificate"),
                            (grpc.ssl_channel_credentials(read(c["ca.pem"]), read(c["stranger.key"]),
                                                          read(c["stranger.pem"])), "with a stranger's certificate")):
            with grpc.secure_channel(target, creds) as ch:
                try:
                    pbg.InferenceStub(ch).Generate(gen_req(), timeout=20)
                    check(False, f"mTLS: grpcio {what}: refused")
                except grpc.RpcError as e:
                    check(e.code() == grpc.StatusCode.UNAVAILABLE, f"mTLS: grpcio {what}: {e.code()}")
        creds = grpc.ssl_channel_credentials(read(c["ca.pem"]), read(c["client.key"]), read(c["client.pem"]))
        with grpc.secure_channel(target, creds) as ch:
            u = pbg.InferenceStub(ch).Generate(gen_req(), timeout=60)
        check(u.text == exp and list(u.token_ids) == ids[0], "mTLS: grpcio with the client certificate: the reference")

        cli = [gs, "generate", "--addr", target, "--max-tokens", "16", "--temperature", "0", "--json", "--quiet",
               "--tls-ca", c["ca.pem"]]
        p = subprocess.run(cli + [PROMPT], capture_output=True, text=True, timeout=60)
        check(p.returncode == 3 and "--tls-cert and --tls-key" in p.stderr,
              f"mTLS: gemmashard generate without a client certificate: exit {p.returncode}, hint given")
        p = subprocess.run(cli + ["--tls-cert", c["client.pem"], "--tls-key", c["client.key"], PROMPT],
                           capture_output=True, text=True, timeout=60)
        check(p.returncode == 0 and json.loads(p.stdout).get("text") == exp,
              f"mTLS: gemmashard generate --tls-cert/--tls-key: the reference (exit {p.returncode})")
        check(cl.coord.poll() is None, "mTLS: coordinator alive after the refusals")
        logs += cl.log("coordinator")
    check(cl.coord_rc == 0, f"mTLS coordinator exit status {cl.coord_rc}")
    check(KEY not in logs and "PRIVATE KEY" not in logs and PROMPT not in logs,
          "the coordinator's log holds no key material")
    return exit_status(lambda: cl.log("coordinator"))


if __name__ == "__main__":
    sys.exit(main())
