#!/usr/bin/env python3
"""One engine across two hosts (label multihost). Two network namespaces stand for the hosts,
joined by a veth pair (interface mpi0: 10.99.7.1 and 10.99.7.2); a second veth pair joins the
first host to this one's namespace (10.99.8.1 / 10.99.8.254), where the coordinator listens on
the third address, 10.99.8.254, behind mutual TLS. mpirun runs on host A and starts rank 1 on
host B through an rsh agent (`ip netns exec`), with MPI kept on mpi0 (tp_common.mpi_env("mpi0"),
the settings deploy/local-cluster.sh --mpi-if uses):

  1. T = 2 with one rank in each namespace: logits of every position equal T = 1 within 1e-5
     and 16 greedy tokens equal; decode step time against T = 2 on one host (printed);
  2. the link between the hosts goes down mid-generation (`ip link set mpi0 down` in B): the
     coordinator marks the engine down within the heartbeat timeout, every stream ends OK or
     UNAVAILABLE (none hangs), both ranks exit within 30 s and nothing is left in either
     namespace; the link comes back, the relaunched engine registers again and serves;
  3. the coordinator is SIGKILLed mid-generation and started again: in-flight gRPC streams and
     an HTTP request end (UNAVAILABLE / a broken connection, never a hang), the engine
     reconnects by itself within 5 s of the coordinator listening, new requests succeed.

Skipped (exit 77, ctest SKIP_RETURN_CODE) where network namespaces cannot be made.

usage: test_multihost.py BUILD_DIR TOKENIZER_JSON MPIRUN SCRATCH"""
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faults_common import REPO, Streams, alive, engine_ranks, engines_up, wait_for, wait_ranks  # noqa: E402
from checks import check, exit_status  # noqa: E402
from cluster import Cluster  # noqa: E402
from tp_common import kill_session, make_model, mpi_env, rel_l2_rows  # noqa: E402
from test_grpc import compile_protos  # noqa: E402

SKIP = 77
ADDR_A, ADDR_B, CTL_A, CTL_HOST = "10.99.7.1", "10.99.7.2", "10.99.8.1", "10.99.8.254"


def sh(*cmd, check_rc=True):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check_rc and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p


class Hosts:
    """Two namespaces (hosts A and B) and the links between them and this namespace."""

    def __init__(self, scratch):
        tag = os.getpid()  # "gsmh" + at most 7 digits + "c": within the 15 characters of a link name
        self.ns_a, self.ns_b, self.veth = f"gsmh{tag}a", f"gsmh{tag}b", f"gsmh{tag}c"
        self.scratch = scratch

    @staticmethod
    def remove_stale():
        """Namespaces left by a run that was killed (their creator's pid is gone)."""
        for line in sh("ip", "netns", "list", check_rc=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith("gsmh") and name[4:-1].isdigit() and not os.path.exists(f"/proc/{name[4:-1]}"):
                for pid in sh("ip", "netns", "pids", name, check_rc=False).stdout.split():
                    os.kill(int(pid), signal.SIGKILL)
                sh("ip", "netns", "del", name, check_rc=False)
                sh("ip", "link", "del", name[:-1] + "c", check_rc=False)

    def up(self):
        a, b = self.ns_a, self.ns_b
        taken = [x for x in sh("ip", "-o", "-4", "addr", "show").stdout.splitlines() if f" {CTL_HOST}/" in x]
        if taken:
            raise RuntimeError(f"{CTL_HOST} is already in use here: {taken[0]}")
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", "mpi0", "netns", a, "type", "veth", "peer", "name", "mpi0", "netns", b)
        sh("ip", "-n", a, "addr", "add", f"{ADDR_A}/24", "dev", "mpi0")
        sh("ip", "-n", b, "addr", "add", f"{ADDR_B}/24", "dev", "mpi0")
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "ctl0", "netns", a)
        sh("ip", "addr", "add", f"{CTL_HOST}/24", "dev", self.veth)
        sh("ip", "-n", a, "addr", "add", f"{CTL_A}/24", "dev", "ctl0")
        sh("ip", "link", "set", self.veth, "up")
        for ns in (a, b):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", "mpi0", "up")
        sh("ip", "-n", a, "link", "set", "ctl0", "up")
        # the rsh agent mpirun uses to start its daemon "on" host B (or A), and the hostfile
        self.agent = os.path.join(self.scratch, "nsrsh")
        with open(self.agent, "w") as f:
            f.write(f"""#!/bin/sh
host=$1; shift
case "$host" in {ADDR_A}) ns={a} hn=gs-node-a;; {ADDR_B}) ns={b} hn=gs-node-b;;
  *) echo "nsrsh: unknown host $host" >&2; exit 1;; esac
exec ip netns exec "$ns" unshare --uts sh -c "hostname $hn; $*"
""")
        os.chmod(self.agent, 0o755)
        self.hostfile = os.path.join(self.scratch, "hosts")
        with open(self.hostfile, "w") as f:
            f.write(f"{ADDR_A} slots=1\n{ADDR_B} slots=1\n")
        # `mpirun` on host A, ranks placed by the hostfile: rank 0 on A, rank 1 on B
        self.mpirun = os.path.join(self.scratch, "mpirun-on-a")
        with open(self.mpirun, "w") as f:
            f.write(f"#!/bin/sh\nexec ip netns exec {a} mpirun --hostfile {self.hostfile} "
                    f"--mca plm_rsh_agent {self.agent} \"$@\"\n")
        os.chmod(self.mpirun, 0o755)

    def link(self, state):
        sh("ip", "-n", self.ns_b, "link", "set", "mpi0", state)

    def pids(self):
        return [int(p) for ns in (self.ns_a, self.ns_b)
                for p in sh("ip", "netns", "pids", ns, check_rc=False).stdout.split()]

    def netns_of(self, pid):
        """'a', 'b' or None: the namespace process pid lives in."""
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            return None
        for name, ns in (("a", self.ns_a), ("b", self.ns_b)):
            if os.stat(f"/run/netns/{ns}").st_ino == ino:
                return name
        return None

    def down(self):
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for ns in (self.ns_a, self.ns_b):
            sh("ip", "netns", "del", ns, check_rc=False)
        sh("ip", "link", "del", self.veth, check_rc=False)


def can_make_namespaces():
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        return "needs root, ip and unshare"
    name = f"gsmhprobe{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if p.returncode != 0:
        return f"ip netns add: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def run_ranks(mpirun_bin, env, np_, argv, timeout=120):
    p = subprocess.run([mpirun_bin, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(np_),
                        *argv], capture_output=True, text=True, timeout=timeout, env=env)
    return p.returncode, p.stdout, p.stderr


def logits_and_bench(build, model, hosts, mpirun_bin, scratch):
    worker = os.path.join(build, "worker", "gemmashard-worker")
    rng = np.random.default_rng(7)
    ids = [2] + [int(x) for x in rng.integers(3, 262144, size=23)]
    toks = ",".join(map(str, ids))
    out = {}
    for name, mp, env, np_ in (("T=1", mpirun_bin, mpi_env(), 1), ("T=2 one host", mpirun_bin, mpi_env(), 2),
                               ("T=2 across hosts", hosts.mpirun, mpi_env("mpi0"), 2)):
        path = os.path.join(scratch, f"logits.{np_}.{len(out)}.f32")
        rc, so, se = run_ranks(mp, env, np_, [worker, "--model", model, "--tokens", toks, "--dump-logits", path,
                                              "--generate", "16", "--threads", "1"])
        if not check(rc == 0, f"{name}: logits of {len(ids)} positions (rc {rc})"):
            print(se[-3000:])
            return
        out[name] = (np.fromfile(path, dtype=np.float32).reshape(len(ids), -1).astype(np.float64), so.split())
    ref, ref_toks = out["T=1"]
    for name in ("T=2 one host", "T=2 across hosts"):
        e = rel_l2_rows(out[name][0], ref).max()
        check(e <= 1e-5, f"{name}: logits equal T=1 within 1e-5 at every position (max rel L2 {e:.2e})")
        check(out[name][1] == ref_toks and len(ref_toks) == 16, f"{name}: 16 greedy tokens equal T=1")

    # decode step time: T = 2 across the hosts against T = 2 on one host (median of 3 runs)
    times = {}
    for name, mp, env in (("one host", mpirun_bin, mpi_env()), ("across hosts", hosts.mpirun, mpi_env("mpi0"))):
        ms = []
        for _ in range(3):
            rc, so, se = run_ranks(mp, env, 2, [worker, "--model", model, "--bench", "--threads", "1",
                                                "--prompt-tokens", "64", "--decode-steps", "64"])
            line = next((x for x in (so + se).splitlines() if x.startswith("bench ")), "")
            if rc == 0 and "ms/token" in line:
                ms.append(float(line.split("decode ")[1].split(" ms/token")[0]))
        if check(len(ms) == 3, f"bench T=2 {name}: 3 runs"):
            times[name] = statistics.median(ms)
    if len(times) == 2:
        print(f"figure: T=2 decode step {times['across hosts']:.2f} ms across the namespaces (TCP over veth) "
              f"against {times['one host']:.2f} ms on one host (shared memory), median of 3", flush=True)


def http_completion(cl, timeout):
    body = json.dumps({"model": "tiny", "prompt": "Plan:", "max_tokens": 240, "temperature": 0}).encode()
    req = urllib.request.Request(cl.url("/v1/completions"), data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}"


def link_down(cl, stub, pb, hosts):
    ranks = wait_ranks(cl.worker_bin, "engine-0", 2, 60)
    if not check(ranks is not None, "link down: both ranks running"):
        return None
    where = {r: hosts.netns_of(p) for r, p in ranks.items()}
    check(where == {0: "a", 1: "b"}, f"rank 0 runs in namespace A, rank 1 in B ({where})")
    st = Streams(stub, pb, n=4, max_tokens=240, deadline_s=120, first=2)
    check(st.started.wait(60), "link down: streams are generating")
    on_b = [p for p in hosts.pids() if hosts.netns_of(p) == "b"]  # rank 1 and mpirun's daemon there
    t0 = time.time()
    hosts.link("down")
    det = wait_for(lambda: engines_up(cl) == 0, 30)
    # the coordinator's 3 s heartbeat timeout, its 50 ms monitor period, this test's polling
    check(det is not None and det <= 3.5, f"link down: the coordinator marks the engine down in "
          f"{det if det is None else round(det, 2)} s (bound 3.5 s)")
    gone = wait_for(lambda: not any(alive(p) for p in ranks.values()), 45, 0.05)
    gone = None if gone is None else time.time() - t0
    check(gone is not None and gone <= 30, f"link down: both ranks exit, the slowest "
          f"{gone if gone is None else round(gone, 2)} s after the link went down (bound 30 s)")
    hung = st.join(100)
    codes = sorted({c for c, _, _ in st.res.values()})
    check(not hung and set(codes) <= {"OK", "UNAVAILABLE"},
          f"link down: every stream ends OK or UNAVAILABLE, none hangs ({codes}, {len(hung)} open)")
    hosts.link("up")
    t_up = time.time()
    # mpirun's daemon on B is no rank and does not spin, but it must not stay: once the link is
    # back its retransmission meets the closed connection of the old mpirun (while the link is
    # down, unacknowledged data keeps TCP keepalive from ending it: tcp_retries2 bounds that)
    orphans = wait_for(lambda: not any(alive(p) for p in on_b), 45, 0.1)
    left = [open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ")[:60].decode(errors="replace")
            for p in on_b if alive(p)]
    check(orphans is not None, f"link up: nothing of the old job is left on host B (mpirun's daemon there, "
          f"{len(on_b)} processes with rank 1), {orphans if orphans is None else round(orphans, 2)} s after the "
          f"link came back{'; left: ' + repr(left) if left else ''}")
    back = wait_for(lambda: engines_up(cl) == 1, 90, 0.05)
    back = None if back is None else time.time() - t_up
    check(back is not None, f"link up: the relaunched engine registers again "
          f"({back if back is None else round(back, 2)} s after the link came back)")
    r = stub.Generate(pb.GenerateRequest(prompt="After the outage:", max_tokens=8), timeout=60) if back else None
    check(r is not None and r.usage.completion_tokens == 8, "link up: the engine serves again")
    return det, gone, back, orphans


def coordinator_restart(cl, stub_factory, pb):
    import concurrent.futures as cf
    stub = stub_factory()
    st = Streams(stub, pb, n=4, max_tokens=240, deadline_s=60, first=2)
    check(st.started.wait(60), "coordinator restart: streams are generating")
    pool = cf.ThreadPoolExecutor(1)
    http = pool.submit(http_completion, cl, 60)
    time.sleep(0.2)
    t0 = time.time()
    kill_session(cl.coord.pid)
    cl.coord.wait()
    hung = st.join(30)
    codes = sorted({c for c, _, _ in st.res.values()})
    check(not hung and codes == ["UNAVAILABLE"], f"coordinator killed: every in-flight stream ends UNAVAILABLE "
          f"({codes}, {len(hung)} open, in {time.time() - t0:.2f} s)")
    try:
        h = http.result(timeout=30)
    except cf.TimeoutError:
        h = "hung"
    check(h != "hung" and not h.startswith("HTTP 200"), f"coordinator killed: the in-flight HTTP request ends ({h})")
    time.sleep(1.0)  # the engine is retrying meanwhile (backoff up to 1 s)
    cl.start_coordinator()

    def listening():
        try:
            socket.create_connection((CTL_HOST, cl.engine_port), timeout=0.2).close()
            return True
        except OSError:
            return False
    wait_for(listening, 30, 0.01)
    t_listen = time.time()
    rec = wait_for(lambda: engines_up(cl) == 1, 30, 0.02)
    check(rec is not None and rec <= 5, f"coordinator restarted: the engine reconnects by itself "
          f"{rec if rec is None else round(rec, 2)} s after the coordinator listens (bound 5 s)")
    r = stub_factory().Generate(pb.GenerateRequest(prompt="New request:", max_tokens=8), timeout=60)
    check(r.usage.completion_tokens == 8, "coordinator restarted: a new request succeeds")
    return rec, t_listen - t0


def main():
    build, tok, mpirun_bin, scratch = sys.argv[1:5]
    mpirun_bin = shutil.which(mpirun_bin) or mpirun_bin
    # a TERM (ctest's timeout, a person) still runs the clean-up below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    why = can_make_namespaces()
    if why:
        print(f"Skipped: cannot make network namespaces here ({why})")
        return SKIP
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    Hosts.remove_stale()
    compile_protos(REPO, os.path.join(scratch, "py"))
    import gemmashard.v1.inference_pb2 as pb
    import gemmashard.v1.inference_pb2_grpc as pbg
    import grpc

    gs = os.path.join(build, "tools", "gemmashard")
    model = make_model(gs, tok, os.path.join(scratch, "tiny"), "--preset", "tiny", "--max-pos", "1024")
    certs = os.path.join(scratch, "certs")
    p = subprocess.run([os.path.join(REPO, "deploy", "make-cluster-certs.sh"), certs, "--hosts", CTL_HOST],
                       capture_output=True, text=True)
    if not check(p.returncode == 0, "cluster certificates naming the coordinator's address"):
        print(p.stderr)
        return exit_status()
    hosts = Hosts(scratch)
    cl = None
    try:
        hosts.up()
        logits_and_bench(build, model, hosts, mpirun_bin, scratch)
        cl = Cluster(build, model, engines=1, tp=2, mpirun=hosts.mpirun, mpi_if="mpi0", engine_host=CTL_HOST,
                     cluster_certs=certs, relaunch=True,
                     engine_args=["--ctx", "640", "--max-seqs", "2", "--threads", "1"],
                     logdir=os.path.join(scratch, "logs"), health_timeout=60)
        with cl:
            def stub_factory():
                return pbg.InferenceStub(grpc.insecure_channel(f"127.0.0.1:{cl.grpc_port}"))
            ld = link_down(cl, stub_factory(), pb, hosts)
            cr = coordinator_restart(cl, stub_factory, pb)
        check(cl.coord_rc == 0, f"coordinator exits cleanly ({cl.coord_rc})")
        left = wait_for(lambda: not hosts.pids(), 15)
        check(left is not None, f"nothing left running in either namespace ({hosts.pids()})")
        if ld:
            print(f"figure: link down: engine marked down {ld[0]:.2f} s, slowest rank exit {ld[1]:.2f} s after it; "
                  f"after the link came back: old daemon on B gone {ld[3] and round(ld[3], 2)} s, registered again "
                  f"{ld[2] and round(ld[2], 2)} s", flush=True)
        if cr and cr[0] is not None:
            print(f"figure: coordinator restart: engine reconnected {cr[0]:.2f} s after it listened "
                  f"(down {cr[1]:.2f} s)", flush=True)
    finally:
        if cl is not None:
            for p in engine_ranks(cl.worker_bin, "engine-0").values():
                os.kill(p, signal.SIGKILL)
        hosts.down()
    return exit_status((lambda: cl.log("engine-0") + cl.log("coordinator")) if cl else None)


if __name__ == "__main__":
    sys.exit(main())
