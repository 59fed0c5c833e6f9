#!/usr/bin/env python3
"""The engine link's authentication (ARCHITECTURE.md §7 "Security"): a real cluster of two
2-rank engines with mutual TLS (certificates from deploy/make-cluster-certs.sh, made here by
tests/net/make_test_certs.sh) serves HTTP requests the whole time while impostors try to
register. Every impostor speaks the real framing (python protobuf from proto/engine.proto) and
sends a valid EngineHello and heartbeats:
  1. in plaintext;
  2. over TLS with an engine certificate of another CA;
  3. over TLS with the coordinator's own certificate (right CA, wrong role) as its client
     certificate; also with no certificate and with an expired one;
and one says nothing at all (the handshake deadline closes it);
each is refused during the handshake with a logged reason naming its address, never shows in
/health's engine count, never receives a Submit, and is counted in
gemmashard_engine_auth_failures_total by reason.
  4. real workers with wrong certificates (another cluster's; none at all) log the reason,
     keep retrying with a log line at most every 5 s, and never register.
  5. `ss -ltnp` while the cluster runs: the coordinator and the MPI ranks listen on loopback
     only (Open MPI's byte transports are kept to shared memory; mpirun's own out-of-band
     listener, which Open MPI 4.1 binds to every interface whatever its settings, is the one
     exception, and is named).
  6. the coordinator refuses a non-loopback --engine-listen without certificates (exit code,
     message); without certificates on loopback it says that its link is unauthenticated, and a
     worker with certificates facing it is refused with the reason on both sides; --insecure-engine-link starts it with a warning in its log, /health and
     /metrics; a key file of mode 0644 is refused by the coordinator and by the worker, naming
     the file; one --cluster-* flag alone is refused.
  7. measured: registering an engine with and without TLS (time from connect to /health
     counting it), printed for the record.

usage: test_engine_auth.py BUILD_DIR TOKENIZER_JSON SCRATCH"""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from checks import check, exit_status  # noqa: E402
from cluster import Cluster, free_port  # noqa: E402
from tp_common import kill_session, mpi_env, session_pids  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))


def load_proto(tmp):
    os.makedirs(tmp, exist_ok=True)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(REPO, "proto"),
                    "--python_out=" + tmp, os.path.join(REPO, "proto", "engine.proto")], check=True)
    sys.path.insert(0, tmp)
    import engine_pb2  # noqa: E402
    return engine_pb2


# ---- impostors ------------------------------------------------------------------------------

class Impostor:
    """Connects to the engine port, optionally over TLS with the given client certificate,
    says a valid hello, then sends heartbeats and reads whatever comes back until the link
    closes or `seconds` pass. Records every message kind received and the link's fate."""

    def __init__(self, pb, port, vocab, name, cert=None, key=None, tls=False):
        self.pb, self.port, self.vocab, self.name = pb, port, vocab, name
        self.cert, self.key, self.tls = cert, key, tls
        self.received = []       # body kinds
        self.error_text = ""     # an Error frame's message, if one came
        self.fate = ""           # how the link ended
        self.handshake_ok = None

    def frame(self, m):
        data = m.SerializeToString()
        return struct.pack(">I", len(data)) + data

    def hello(self):
        m = self.pb.EngineMessage()
        h = m.hello
        h.engine_id, h.model_id, h.tp, h.cp = self.name, "tiny", 1, 1
        h.kv_block_tokens, h.kv_blocks_total, h.max_context, h.vocab_size, h.max_seqs = 16, 4096, 4096, self.vocab, 64
        return self.frame(m)

    def heartbeat(self):
        m = self.pb.EngineMessage()
        m.heartbeat.kv_blocks_free = 4096
        m.heartbeat.kv_blocks_total = 4096
        return self.frame(m)

    def run(self, seconds=3.0):
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s = raw
        try:
            if self.tls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE     # an impostor does not care who answers
                if self.cert:
                    ctx.load_cert_chain(self.cert, self.key)
                s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                self.handshake_ok = True
            s.sendall(self.hello() + self.heartbeat())
            buf, end = b"", time.time() + seconds
            s.settimeout(0.2)
            while time.time() < end:
                try:
                    s.sendall(self.heartbeat())
                    chunk = s.recv(1 << 16)
                except socket.timeout:
                    continue
                if not chunk:
                    self.fate = "closed by the coordinator"
                    break
                buf += chunk
                while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                    n = struct.unpack(">I", buf[:4])[0]
                    m = self.pb.EngineMessage()
                    m.ParseFromString(buf[4:4 + n])
                    buf = buf[4 + n:]
                    kind = m.WhichOneof("body")
                    self.received.append(kind)
                    if kind == "error":
                        self.error_text = m.error.message
            else:
                self.fate = f"still open after {seconds} s"
        except ssl.SSLError as e:
            self.fate = f"TLS error: {e.reason or e}"
            if self.handshake_ok is None:
                self.handshake_ok = False
        except (ConnectionResetError, BrokenPipeError) as e:
            self.fate = f"reset: {e}"
        finally:
            s.close()
        return self


# ---- client load ----------------------------------------------------------------------------

class Load(threading.Thread):
    """Sequential completions over HTTP for as long as the test runs: every one must succeed."""

    def __init__(self, cl):
        super().__init__(daemon=True)
        self.cl, self.ok, self.bad, self.stop = cl, 0, [], threading.Event()

    def run(self):
        body = json.dumps({"model": "tiny", "prompt": "Triage note:", "max_tokens": 4, "seed": 3}).encode()
        while not self.stop.is_set():
            req = urllib.request.Request(self.cl.url("/v1/completions"), data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    json.loads(r.read())
                    self.ok += 1
            except (urllib.error.URLError, OSError, ValueError) as e:
                self.bad.append(str(e))


def engines_seen(cl, stop, seen):
    """Records every engine count /health reports until stop is set."""
    while not stop.is_set():
        st, body = cl.health()
        if body:
            seen.add(body.get("engines"))
        time.sleep(0.05)


# ---- listeners --------------------------------------------------------------------------------

def listeners():
    """(local address, process name, pid) of every listening TCP socket, from `ss -ltnpH`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        f = line.split()
        if len(f) < 6:
            continue
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            rows.append((f[3], name, int(pid)))
    return rows


def is_loopback(addr):
    host = addr.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host == "::1" or host.startswith("::ffff:127.")


def run_coordinator(cl, model, args, seconds=3.0):
    """A coordinator on fresh ports: (returncode or None if still up, output, process)."""
    cmd = [cl.coordinator_bin, "--model", model, "--grpc", f"127.0.0.1:{free_port()}",
           "--http", f"127.0.0.1:{free_port()}", *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=seconds)
        return p.returncode, out, None
    except subprocess.TimeoutExpired:
        pass
    try:
        fetch(http_port_of(p), "/health", timeout=60)   # up: it answers HTTP
    except OSError:
        pass                                            # the caller's own requests will say so
    return None, "", p


def http_port_of(p):
    return int(re.search(r"--http\s+127\.0\.0\.1:(\d+)", " ".join(p.args)).group(1))


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        kill_session(p.pid)
        out, _ = p.communicate()
    return p.returncode, out


def fetch(http_port, path, timeout=30):
    """(status, body) of GET path; retried while the coordinator is slow to answer (ASan, load)."""
    end = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            if time.time() > end:
                raise
            time.sleep(0.2)


def engines_up(http_port):
    return json.loads(fetch(http_port, "/health")[1]).get("engines", 0)


def register_time(pb, port, http_port, vocab, tls_files=None, n=5):
    """Seconds from connect until /health counts a (python) engine that says hello: median of n.
    tls_files: (ca, cert, key) of a real engine certificate, or None for plaintext."""
    times = []
    for i in range(n):
        t0 = time.time()
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        s = raw
        if tls_files:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(tls_files[0])
            ctx.load_cert_chain(tls_files[1], tls_files[2])
            s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        imp = Impostor(pb, port, vocab, f"probe-{i}")
        s.sendall(imp.hello() + imp.heartbeat())
        while time.time() - t0 < 10 and engines_up(http_port) < 1:
            pass
        times.append(time.time() - t0)
        s.close()
        while time.time() - t0 < 20 and engines_up(http_port) > 0:   # gone again
            time.sleep(0.02)
    return statistics.median(times)


def main():
    build, tok, scratch = sys.argv[1:4]
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    pb = load_proto(os.path.join(scratch, "py"))
    gs = os.path.join(build, "tools", "gemmashard")
    model = os.path.join(scratch, "tiny")
    p = subprocess.run([gs, "make-test-model", "--out", model, "--tokenizer", tok, "--preset", "tiny"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    vocab = json.load(open(os.path.join(model, "config.json")))["vocab_size"]
    certs = os.path.join(scratch, "certs")
    subprocess.run(["bash", os.path.join(REPO, "tests", "net", "make_test_certs.sh"), certs], check=True)
    C, O = os.path.join(certs, "cluster"), os.path.join(certs, "other")
    check(oct(os.stat(C).st_mode & 0o777) == "0o700" and oct(os.stat(f"{C}/engine.key").st_mode & 0o777) == "0o600",
          "make-cluster-certs.sh: the directory is mode 700 and keys 600")

    logdir = os.path.join(scratch, "logs")
    t0 = time.time()
    with Cluster(build, model, engines=2, tp=2, cluster_certs=C, logdir=logdir,
                 engine_args=["--threads", "1", "--ctx", "512", "--max-seqs", "8"]) as cl:
        check(True, f"2 engines x 2 ranks registered over mutual TLS in {time.time() - t0:.1f} s")
        st, body = cl.health()
        check(body.get("engine_link") == "mtls", f"/health says engine_link mtls ({body})")
        load = Load(cl)
        load.start()
        seen, stop_seen = set(), threading.Event()
        watcher = threading.Thread(target=engines_seen, args=(cl, stop_seen, seen), daemon=True)
        watcher.start()

        # 1-3: impostors speaking the real frames; and one that connects and says nothing (the
        # handshake's deadline frees its thread; the other connections go on meanwhile)
        port = cl.engine_port
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)
        imps = {
            "plaintext": Impostor(pb, port, vocab, "impostor-plain"),
            "other CA": Impostor(pb, port, vocab, "impostor-otherca", f"{O}/engine.crt", f"{O}/engine.key", True),
            "coordinator role": Impostor(pb, port, vocab, "impostor-role", f"{C}/coordinator.crt",
                                         f"{C}/coordinator.key", True),
            "no certificate": Impostor(pb, port, vocab, "impostor-nocert", tls=True),
            "expired": Impostor(pb, port, vocab, "impostor-expired", f"{C}/engine-expired.crt",
                                f"{C}/engine-expired.key", True),
        }
        for what, imp in imps.items():
            imp.run(3.0)
            check("submit" not in imp.received and imp.fate and "still open" not in imp.fate,
                  f"{what} impostor: link ended ({imp.fate}); received {imp.received or 'nothing'}; no Submit")
        check(imps["plaintext"].received == ["error"] and "requires mutual TLS" in imps["plaintext"].error_text,
              f"the plaintext impostor was told why: {imps['plaintext'].error_text!r}")
        silent.settimeout(10)
        try:
            gone = silent.recv(16) == b""
        except OSError:
            gone = True
        silent.close()
        check(gone, "a silent connection is closed after the handshake deadline")

        # 4: real workers with wrong certificates
        bad = {}
        for name, files in (("other-cluster", (f"{O}/ca.crt", f"{O}/engine.crt", f"{O}/engine.key")),
                            ("no-certs", None)):
            log = open(os.path.join(logdir, f"bad-{name}.log"), "wb")
            tls = ["--cluster-ca", files[0], "--cluster-cert", files[1], "--cluster-key", files[2]] if files else []
            cmd = [cl.mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "1",
                   cl.worker_bin, "--model", model, "--threads", "1", "--ctx", "256", "--max-seqs", "2",
                   "--coordinator", f"127.0.0.1:{port}", "--engine-id", f"bad-{name}", *tls]
            bad[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=mpi_env(),
                                          start_new_session=True), time.time())
            log.close()
        try:
            time.sleep(14)
            t_kill = time.time()
        finally:
            for proc, _ in bad.values():
                kill_session(proc.pid)
                proc.wait()
        for name, (proc, t_start) in bad.items():
            text = open(os.path.join(logdir, f"bad-{name}.log"), errors="replace").read()
            if name == "other-cluster":
                lines = [ln for ln in text.splitlines() if "no link with the coordinator" in ln]
                check(lines and "not trusted" in lines[0],
                      f"worker with another cluster's certificates logs why: {lines[0] if lines else text[-500:]}")
            else:
                lines = [ln for ln in text.splitlines() if "requires mutual TLS" in ln]
                check(bool(lines), f"worker without certificates logs why: {lines[0] if lines else text[-500:]}")
            secs = t_kill - t_start
            check(0 < len(lines) <= secs / 5 + 2, f"{name}: {len(lines)} log lines about it in {secs:.0f} s "
                  "(at most one per 5 s, still retrying)")
            check(f"bad-{name}" not in cl.log("coordinator"), f"{name}: never registered")

        # 5: listening sockets while the cluster runs
        ours = {cl.coord.pid} | {pid for e in cl.engines if e for pid in session_pids(e.pid)}
        rows = [r for r in listeners() if r[2] in ours]
        outside = [r for r in rows if not is_loopback(r[0])]
        oob = [r for r in outside if r[1] == "mpirun" and r[0].rsplit(":", 1)[0] in ("0.0.0.0", "*", "[::]")]
        check(any(r[1] == "gemmashard-coord" or r[1].startswith("gemmashard") for r in rows),
              f"ss -ltnp sees the cluster's listeners ({len(rows)}: {sorted(set((r[1], r[0]) for r in rows))})")
        check(not [r for r in outside if r not in oob],
              f"no gemmashard or MPI rank listens outside loopback (outside: {[r for r in outside if r not in oob]})")
        per_mpirun = {}
        for r in oob:
            per_mpirun[r[2]] = per_mpirun.get(r[2], 0) + 1
        check(all(n <= 2 for n in per_mpirun.values()),
              f"known Open MPI 4.1 limitation: each mpirun's ORTE out-of-band listener binds every interface "
              f"(INADDR_ANY and ::, no setting changes it): {sorted(set(r[0] for r in oob))}")

        stop_seen.set()
        watcher.join()
        load.stop.set()
        load.join(timeout=90)
        check(seen == {2}, f"/health counted exactly the 2 real engines throughout ({sorted(seen)})")
        check(load.ok > 0 and not load.bad, f"{load.ok} requests served during the attacks, "
              f"{len(load.bad)} failed {load.bad[:3]}")
        m = cl.metrics()
        fails = {k: v for k, v in m.items() if k.startswith("gemmashard_engine_auth_failures_total")}
        want = {"not_tls": 2, "untrusted": 1, "wrong_role": 1, "no_certificate": 1, "expired": 1, "peer_rejected": 1,
                "timeout": 1}
        for reason, n in want.items():
            got = m.get(f'gemmashard_engine_auth_failures_total{{reason="{reason}"}}', 0)
            check(got >= n, f"/metrics counts reason {reason}: {got:.0f} (>= {n})")
        check(m.get('gemmashard_engine_link_secure{mode="mtls"}') == 1, "/metrics: gemmashard_engine_link_secure 1")
        log = cl.log("coordinator")
        for reason in ("not_tls", "untrusted", "wrong_role", "no_certificate", "expired", "peer_rejected", "timeout"):
            line = next((ln for ln in log.splitlines() if f"refused ({reason})" in ln), "")
            check(re.search(r"from 127\.0\.0\.1:\d+ refused", line) is not None,
                  f"coordinator log names the peer and the reason: {line.strip()[:220]}")
        keys = [open(f"{C}/{k}.key").read() for k in ("coordinator", "engine", "ca")]
        check("PRIVATE KEY" not in log and not any(k.strip().splitlines()[1] in log for k in keys),
              "no key material in the coordinator log")
        print(f"     auth failures: {fails}")
    check(cl.coord_rc == 0, f"coordinator exited cleanly ({cl.coord_rc})")

    # 6: start-up policy
    rc, out, _ = run_coordinator(cl, model, ["--engine-listen", f"0.0.0.0:{free_port()}"])
    check(rc not in (None, 0) and "is not a loopback address" in out and "--cluster-ca" in out,
          f"non-loopback --engine-listen without certificates: exit {rc}: {out.strip()[-300:]}")
    rc, out, _ = run_coordinator(cl, model, ["--engine-listen", f"127.0.0.1:{free_port()}", "--cluster-ca", f"{C}/ca.crt"])
    check(rc not in (None, 0) and "go together" in out, f"--cluster-ca alone: exit {rc}: {out.strip()[-200:]}")
    loose = os.path.join(scratch, "loose.key")
    shutil.copy(f"{C}/coordinator.key", loose)
    os.chmod(loose, 0o644)
    rc, out, _ = run_coordinator(cl, model, ["--engine-listen", f"127.0.0.1:{free_port()}", "--cluster-ca",
                                             f"{C}/ca.crt", "--cluster-cert", f"{C}/coordinator.crt", "--cluster-key", loose])
    check(rc not in (None, 0) and loose in out and "mode 0644" in out,
          f"coordinator: key file of mode 0644 refused: exit {rc}: {out.strip()[-300:]}")
    shutil.copy(f"{C}/engine.key", loose)
    os.chmod(loose, 0o644)
    p = subprocess.run([cl.mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "1", cl.worker_bin, "--model",
                        model, "--coordinator", "127.0.0.1:1", "--cluster-ca", f"{C}/ca.crt", "--cluster-cert",
                        f"{C}/engine.crt", "--cluster-key", loose], capture_output=True, text=True, env=mpi_env(),
                       timeout=120)
    check(p.returncode != 0 and loose in p.stderr and "chmod 600" in p.stderr,
          f"worker: key file of mode 0644 refused before loading weights: exit {p.returncode}: "
          f"{p.stderr.strip()[-300:]}")

    # A worker with certificates against a plaintext (loopback) coordinator: both say why.
    plain_port = free_port()
    rc, out, proc = run_coordinator(cl, model, ["--engine-listen", f"127.0.0.1:{plain_port}"])
    if check(proc is not None, "a plaintext coordinator on loopback starts without certificates"):
        wlog = os.path.join(scratch, "tls-worker-vs-plaintext.log")
        w = None
        try:
            with open(wlog, "wb") as lf:
                w = subprocess.Popen([cl.mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "1", cl.worker_bin,
                                      "--model", model, "--threads", "1", "--ctx", "256", "--max-seqs", "2",
                                      "--coordinator", f"127.0.0.1:{plain_port}", "--cluster-ca", f"{C}/ca.crt",
                                      "--cluster-cert", f"{C}/engine.crt", "--cluster-key", f"{C}/engine.key"],
                                     stdout=lf, stderr=subprocess.STDOUT, env=mpi_env(), start_new_session=True)
            time.sleep(8)
            text = fetch(http_port_of(proc), "/metrics")[1]
        finally:
            if w is not None:
                kill_session(w.pid)
                w.wait()
            rc, out = stop(proc)
        wtext = open(wlog, errors="replace").read()
        line = next((ln for ln in wtext.splitlines() if "no link with the coordinator" in ln), "")
        check("running without --cluster-ca" in line, f"the worker says why: {line.strip()[:260]}")
        check(re.search(r'engine_auth_failures_total\{reason="tls_on_plaintext_link"\} [1-9]', text) is not None
              and "refused (tls_on_plaintext_link)" in out and "plaintext and unauthenticated" in out,
              "the plaintext coordinator logs that its link is unauthenticated, and refuses and counts the TLS engine")

    insecure_port = free_port()
    rc, out, proc = run_coordinator(cl, model, ["--engine-listen", f"0.0.0.0:{insecure_port}", "--insecure-engine-link"])
    check(proc is not None, f"--insecure-engine-link: the coordinator starts ({rc}, {out[-300:]})")
    if proc is not None:
        try:
            hp = http_port_of(proc)
            body = json.loads(fetch(hp, "/health")[1])
            check(body.get("engine_link") == "plaintext-insecure" and "warning" in body, f"/health warns: {body}")
            text = fetch(hp, "/metrics")[1]
            check('gemmashard_engine_link_secure{mode="plaintext-insecure"} 0' in text, "/metrics: link not secure")
            plain_s = register_time(pb, insecure_port, hp, vocab)
        finally:
            rc, out = stop(proc)
        check("WARNING: INSECURE ENGINE LINK" in out, "the insecure coordinator's log starts with a loud warning")
        # the same measurement against a TLS coordinator
        tls_port = free_port()
        rc, out, proc = run_coordinator(cl, model, ["--engine-listen", f"127.0.0.1:{tls_port}", "--cluster-ca",
                                                    f"{C}/ca.crt", "--cluster-cert", f"{C}/coordinator.crt",
                                                    "--cluster-key", f"{C}/coordinator.key"])
        if check(proc is not None, "a TLS coordinator for the registration timing"):
            try:
                tls_s = register_time(pb, tls_port, http_port_of(proc), vocab,
                                      (f"{C}/ca.crt", f"{C}/engine.crt", f"{C}/engine.key"))
            finally:
                stop(proc)
            print(f"     registration (connect -> counted by /health, python engine, median of 5): "
                  f"plaintext {plain_s * 1e3:.1f} ms, mutual TLS {tls_s * 1e3:.1f} ms")
    return exit_status(lambda: open(os.path.join(logdir, "coordinator.log"), errors="replace").read())


if __name__ == "__main__":
    sys.exit(main())
