"""Shared helpers for the tensor-parallel tests: real mpirun ranks as root, oversubscribed."""
import os
import random
import shutil
import signal
import socket
import subprocess
import time

import numpy as np

PML = {
    "ob1": ["--mca", "pml", "ob1"],
    "ucx": ["--mca", "pml", "ucx", "--mca", "pml_ucx_tls", "any", "--mca", "pml_ucx_devices", "any"],
}


def mpi_env(mpi_if=None):
    """Open MPI for ranks on this one host: shared memory between ranks (no TCP or libfabric
    transport, which would listen on every interface), out-of-band traffic over loopback.
    mpi_if="IFACE": ranks on several hosts, TCP between them and mpirun's out-of-band traffic
    on that interface only (what deploy/local-cluster.sh --mpi-if sets). Either way a daemon
    that stops answering ends the job in about 11 s (out-of-band keepalive), not 8 minutes.
    A --mca on the command line still wins over these."""
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_mpi_yield_when_idle="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none",
               OMPI_MCA_btl="self,vader", OMPI_MCA_btl_tcp_if_include="lo", OMPI_MCA_oob_tcp_if_include="lo",
               OMPI_MCA_oob_tcp_keepalive_time="5", OMPI_MCA_oob_tcp_keepalive_intvl="2",
               OMPI_MCA_oob_tcp_keepalive_probes="3")
    if mpi_if:
        env.update(OMPI_MCA_btl="self,vader,tcp", OMPI_MCA_btl_tcp_if_include=mpi_if,
                   OMPI_MCA_oob_tcp_if_include=mpi_if, UCX_NET_DEVICES=mpi_if)
    return env


def _proc_stats():
    """(pid, fields after the command name) of every process, from /proc/PID/stat."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        yield int(d), st[st.rindex(")") + 2:].split()


def children(pid):
    return [p for p, f in _proc_stats() if int(f[1]) == pid]


def session_pids(sid):
    """Live (not zombie) processes of session sid. mpirun puts each rank in a process group
    of its own, so killing a job as a node failure would means killing its session."""
    return [p for p, f in _proc_stats() if int(f[3]) == sid and f[0] != "Z"]


def signal_session(sid, sig):
    for pid in session_pids(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_session(sid, timeout=30.0):
    """SIGKILL every process of session sid and wait until none is left."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if not session_pids(sid):
            return
        signal_session(sid, signal.SIGKILL)
        time.sleep(0.05)
    raise RuntimeError(f"processes of session {sid} survive SIGKILL: {session_pids(sid)}")


def mpirun(mpirun_bin, np_, argv, pml="ob1", timeout=300, mpmd=None):
    """Run argv on np_ ranks (or an MPMD list of (np, argv)). Returns (rc, out, err, seconds)."""
    cmd = [mpirun_bin, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", *PML[pml]]
    if mpmd:
        parts = []
        for i, (n, a) in enumerate(mpmd):
            if i:
                parts.append(":")
            parts += ["-np", str(n), *a]
        cmd += parts
    else:
        cmd += ["-np", str(np_), *argv]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=mpi_env())
    return p.returncode, p.stdout, p.stderr, time.time() - t0


def make_model(gs, tok, out, *flags):
    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.run([gs, "make-test-model", "--out", out, "--tokenizer", tok, *flags],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"make-test-model {flags}: {p.stderr}")
    return out


def rel_l2_rows(a, b):
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)


def free_port():
    """A loopback port that binds now, chosen below the kernel's ephemeral range: a port the
    kernel handed out (bind to 0) can be taken again by any process's outgoing connection
    before our server binds it, which failed e2e_tls in CI ("Address already in use")."""
    lo = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.SystemRandom()
    for _ in range(200):
        p = rng.randrange(10000, lo) if lo > 11000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
