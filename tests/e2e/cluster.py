"""A real local cluster for the end-to-end tests: one gemmashard-coordinator plus N engines,
each a real `mpirun -np T gemmashard-worker --coordinator ...` job, on free localhost ports.

    with Cluster(build_dir, model_dir, engines=2, tp=2) as cl:
        cl.http_port, cl.grpc_port, cl.engine_port
        cl.kill_engine(0)          # SIGKILL every process of engine 0 (mpirun and its ranks)
        cl.start_engine(0)         # bring it back; it registers again
        cl.wait_healthy(2)
        cl.metrics()               # parsed /metrics: {"name{labels}": value}

On exit everything started is stopped (SIGTERM, then SIGKILL after a grace period), and
cl.coord_rc holds the coordinator's exit status (0 expected: clean shutdown, and no leak
reports under ASan). Logs are kept in cl.logdir.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tp"))
from tp_common import kill_session, mpi_env, signal_session  # noqa: E402,F401


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Cluster:
    def __init__(self, build_dir, model_dir, engines=1, tp=2, coord_args=(), engine_args=(),
                 api_key=None, mpirun="mpirun", logdir=None, health_timeout=180):
        self.build_dir = build_dir
        self.model_dir = model_dir
        self.n_engines = engines
        self.tp = tp
        self.coord_args = list(coord_args)
        self.engine_args = list(engine_args)
        self.api_key = api_key
        self.mpirun = mpirun
        self.logdir = logdir or tempfile.mkdtemp(prefix="gs-cluster-")
        os.makedirs(self.logdir, exist_ok=True)
        self.health_timeout = health_timeout
        self.coord = None
        self.coord_rc = None
        self.engines = [None] * engines
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.engine_port = free_port()
        self.coordinator_bin = os.path.join(build_dir, "coordinator", "gemmashard-coordinator")
        self.worker_bin = os.path.join(build_dir, "worker", "gemmashard-worker")
        self.gemmashard_bin = os.path.join(build_dir, "tools", "gemmashard")

    # ---- processes ---------------------------------------------------------------------
    def start_coordinator(self):
        cmd = [self.coordinator_bin, "--model", self.model_dir,
               "--grpc", f"127.0.0.1:{self.grpc_port}", "--http", f"127.0.0.1:{self.http_port}",
               "--engine-listen", f"127.0.0.1:{self.engine_port}", *self.coord_args]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        # The coordinator uses no MPI: under ASan it keeps leak checking even where the
        # mpirun-launched engines cannot (tests/run.sh turns it off for the "mpi" label).
        env = dict(os.environ)
        if "ASAN_OPTIONS" in env:
            env["ASAN_OPTIONS"] = env["ASAN_OPTIONS"].replace("detect_leaks=0", "detect_leaks=1")
        log = open(os.path.join(self.logdir, "coordinator.log"), "ab")
        self.coord = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        log.close()

    def start_engine(self, i, extra=()):
        cmd = [self.mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
               "-np", str(self.tp), self.worker_bin, "--model", self.model_dir,
               "--coordinator", f"127.0.0.1:{self.engine_port}", "--engine-id", f"engine-{i}",
               *self.engine_args, *extra]
        log = open(os.path.join(self.logdir, f"engine-{i}.log"), "ab")
        self.engines[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=mpi_env(),
                                           start_new_session=True)
        log.close()

    def kill_engine(self, i):
        """SIGKILL every process of engine i (mpirun and each rank: ranks have process groups
        of their own, so the whole session is killed), as a node failure would."""
        p = self.engines[i]
        if p is None:
            return
        kill_session(p.pid)
        p.wait()
        self.engines[i] = None

    def stop_engine(self, i, timeout=20):
        p = self.engines[i]
        if p is None:
            return None
        signal_session(p.pid, signal.SIGTERM)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        kill_session(p.pid)
        if rc is None:
            p.wait()
        self.engines[i] = None
        return rc

    # ---- queries -------------------------------------------------------------------------
    def url(self, path):
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path, timeout=5):
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def health(self):
        try:
            st, body = self.get("/health", timeout=2)
            return st, json.loads(body)
        except (OSError, ValueError):
            return None, None

    def wait_healthy(self, n, timeout=None):
        t0 = time.time()
        timeout = timeout or self.health_timeout
        while time.time() - t0 < timeout:
            if self.coord is not None and self.coord.poll() is not None:
                raise RuntimeError(f"coordinator exited with {self.coord.returncode}:\n{self.log('coordinator')}")
            st, body = self.health()
            if body and body.get("engines", 0) >= n:
                return time.time() - t0
            time.sleep(0.1)
        raise RuntimeError(f"{n} engines not healthy after {timeout} s; health={self.health()}\n"
                           f"coordinator log:\n{self.log('coordinator')[-3000:]}\n"
                           f"engine-0 log:\n{self.log('engine-0')[-3000:]}")

    def metrics(self):
        st, body = self.get("/metrics")
        out = {}
        for line in body.splitlines():
            if not line or line.startswith("#"):
                continue
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
        return out

    def log(self, name):
        try:
            with open(os.path.join(self.logdir, f"{name}.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # ---- context -------------------------------------------------------------------------
    def __enter__(self):
        try:
            self.start_coordinator()
            for i in range(self.n_engines):
                self.start_engine(i)
            self.wait_healthy(self.n_engines)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for i in range(len(self.engines)):
            self.stop_engine(i)
        if self.coord is not None:
            self.coord.send_signal(signal.SIGTERM)
            try:
                self.coord_rc = self.coord.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_session(self.coord.pid)
                self.coord.wait()
                self.coord_rc = "hung"
            self.coord = None
        return False
