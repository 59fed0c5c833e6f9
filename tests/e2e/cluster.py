"""A real local cluster for the end-to-end tests: one gemmashard-coordinator plus N engines,
each a real `mpirun -np T gemmashard-worker --coordinator ...` job, on free localhost ports.

    with Cluster(build_dir, model_dir, engines=2, tp=2) as cl:
        cl.http_port, cl.grpc_port, cl.engine_port
        cl.kill_engine(0)          # SIGKILL every process of engine 0 (mpirun and its ranks)
        cl.start_engine(0)         # bring it back; it registers again
        cl.wait_healthy(2)
        cl.metrics()               # parsed /metrics: {"name{labels}": value}
        cl.reload()                # SIGHUP: the coordinator reads its API key file again

On exit everything started is stopped (SIGTERM, then SIGKILL after a grace period), and
cl.coord_rc holds the coordinator's exit status (0 expected: clean shutdown, and no leak
reports under ASan). Logs are kept in cl.logdir.

api_key="K" writes a key file (mode 600, the key alone, so named "key-1") into cl.logdir and
passes it with --api-key-file; api_keys={"name": "key", ...} writes one with named keys.
cl.key_file is its path (rewrite it and call cl.reload() to change the keys).

cluster_certs=DIR (deploy/make-cluster-certs.sh output: ca.crt, coordinator.crt/.key,
engine.crt/.key) makes the engine link mutual TLS: the coordinator and every engine get
--cluster-ca/--cluster-cert/--cluster-key; start_engine(i, certs=(ca, cert, key)) gives one
engine other files, certs=() none. Open MPI stays on loopback (tp_common.mpi_env).

engine_host="10.0.0.1": the coordinator's --engine-listen address (and the one engines dial)
instead of 127.0.0.1; mpi_if="IFACE": engines get tp_common.mpi_env(IFACE) (MPI across hosts;
mpirun= can then be a wrapper that adds a hostfile and an rsh agent). relaunch=True runs every
engine under a relaunch loop, as systemd's Restart=on-failure would: a job that exits non-zero
is started again after relaunch_pause s (each start logs "launcher: starting the engine" in
the engine's log).

models=[(DIR, NAME), ...] serves several models (--model DIR --served-name NAME each; NAME None:
the folder's name) instead of model_dir; engine_models=[k, ...] gives engine i model k (default 0):
its --model and --served-name; start_engine(i, model=k) overrides it. start_engine(i, np=N) runs that
engine on N ranks instead of tp (with extra=["--cp", C]: C groups of N / C).

tls={"cert": F, "key": F, "ca": F} serves gRPC and HTTPS with that certificate ("ca": the CA that
issued it, for the cluster's own probes); add "client_ca" for mutual TLS, with "client_cert" and
"client_key" for the probes.
"""
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tp"))
from tp_common import free_port, kill_session, mpi_env, signal_session  # noqa: E402,F401


def write_key_file(path, lines):
    """An API key file (mode 600, written whole and renamed into place), one line each."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class Cluster:
    def __init__(self, build_dir, model_dir, engines=1, tp=2, coord_args=(), engine_args=(),
                 api_key=None, mpirun="mpirun", logdir=None, health_timeout=180, tls=None, api_keys=None,
                 cluster_certs=None, engine_host="127.0.0.1", mpi_if=None, relaunch=False, relaunch_pause=0.5,
                 models=None, engine_models=None):
        self.build_dir = build_dir
        self.model_dir = model_dir
        self.models = list(models) if models else None
        self.engine_models = list(engine_models) if engine_models else [0] * engines
        self.n_engines = engines
        self.tp = tp
        self.coord_args = list(coord_args)
        self.engine_args = list(engine_args)
        self.api_key = api_key
        self.api_keys = api_keys
        self.cluster_certs = cluster_certs
        self.engine_host = engine_host
        self.mpi_if = mpi_if
        self.relaunch = relaunch
        self.relaunch_pause = relaunch_pause
        self.key_file = None
        self.tls = tls
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
        served = []
        for d, name in self.models or [(self.model_dir, None)]:
            served += ["--model", d] + (["--served-name", name] if name else [])
        cmd = [self.coordinator_bin, *served,
               "--grpc", f"127.0.0.1:{self.grpc_port}", "--http", f"127.0.0.1:{self.http_port}",
               "--engine-listen", f"{self.engine_host}:{self.engine_port}", *self.coord_args]
        if self.api_key or self.api_keys:
            self.key_file = os.path.join(self.logdir, "api-keys")
            lines = [self.api_key] if self.api_key else [f"{n} {k}" for n, k in self.api_keys.items()]
            write_key_file(self.key_file, lines)
            cmd += ["--api-key-file", self.key_file]
        if self.cluster_certs:
            d = self.cluster_certs
            cmd += ["--cluster-ca", f"{d}/ca.crt", "--cluster-cert", f"{d}/coordinator.crt",
                    "--cluster-key", f"{d}/coordinator.key"]
        if self.tls:
            cmd += ["--tls-cert", self.tls["cert"], "--tls-key", self.tls["key"]]
            if self.tls.get("client_ca"):
                cmd += ["--tls-client-ca", self.tls["client_ca"]]
        # The coordinator uses no MPI: under ASan it keeps leak checking even where the
        # mpirun-launched engines cannot (tests/run.sh turns it off for the "mpi" label).
        env = dict(os.environ)
        if "ASAN_OPTIONS" in env:
            env["ASAN_OPTIONS"] = env["ASAN_OPTIONS"].replace("detect_leaks=0", "detect_leaks=1")
        log = open(os.path.join(self.logdir, "coordinator.log"), "ab")
        self.coord = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        log.close()

    def start_engine(self, i, extra=(), certs=None, model=None, np=None):
        k = self.engine_models[i] if model is None else model
        model_dir, name = self.models[k] if self.models else (self.model_dir, None)
        if certs is None and self.cluster_certs:
            d = self.cluster_certs
            certs = (f"{d}/ca.crt", f"{d}/engine.crt", f"{d}/engine.key")
        tls = ["--cluster-ca", certs[0], "--cluster-cert", certs[1], "--cluster-key", certs[2]] if certs else []
        cmd = [self.mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
               "-np", str(np or self.tp), self.worker_bin, "--model", model_dir,
               *(["--served-name", name] if name else []), "--coordinator", f"{self.engine_host}:{self.engine_port}", "--engine-id", f"engine-{i}",
               *tls, *self.engine_args, *extra]
        if self.relaunch:
            cmd = ["sh", "-c", 'while :; do echo "launcher: starting the engine" >&2; "$@"; rc=$?; '
                   '[ $rc = 0 ] && exit 0; echo "launcher: the engine exited with status $rc; starting it '
                   f'again in {self.relaunch_pause} s" >&2; sleep {self.relaunch_pause}; done', "launcher", *cmd]
        log = open(os.path.join(self.logdir, f"engine-{i}.log"), "ab")
        self.engines[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=mpi_env(self.mpi_if),
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

    def reload(self):
        """SIGHUP: the coordinator reads its key file again (and reopens --access-log)."""
        self.coord.send_signal(signal.SIGHUP)

    # ---- queries -------------------------------------------------------------------------
    def url(self, path):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}{path}"

    def ssl_context(self):
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls["ca"])
        if self.tls.get("client_cert"):
            ctx.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        return ctx

    def get(self, path, timeout=5):
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout, context=self.ssl_context()) as r:
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
        for attempt in range(4):
            try:
                self.start_coordinator()
                for i in range(self.n_engines):
                    self.start_engine(i)
                self.wait_healthy(self.n_engines)
                return self
            except BaseException:
                lost_port = (self.coord is not None and self.coord.poll() is not None
                             and "Address already in use" in self.log("coordinator"))
                self.__exit__(None, None, None)
                if not lost_port or attempt == 3:
                    raise
            # Another process bound one of our ports between free_port() and the coordinator's
            # bind: new ports, the old log kept aside, and again.
            log = os.path.join(self.logdir, "coordinator.log")
            os.replace(log, f"{log}.port-in-use-{attempt}")
            print("     (a port was taken before the coordinator bound it; retrying with new ports)",
                  flush=True)
            self.http_port, self.grpc_port, self.engine_port = free_port(), free_port(), free_port()

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
