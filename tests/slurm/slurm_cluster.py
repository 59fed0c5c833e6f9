"""A real one-node Slurm cluster in a scratch directory, for the tests: its own munge key and
munged, slurmctld and slurmd (Slurm 22.05 as packaged by Debian), all on free ports, with every
file under the scratch directory (nothing in /etc, /var or /run is touched). As in
/work/shared/reference/infra.md §5, but private to the test, so that two builds can run it at
the same time.

    with SlurmCluster(scratch, cpus=4) as sc:
        jid = sc.sbatch(["-n", "2", script, ...])
        sc.wait_job(jid, 120)

Every process the cluster starts, and every process of its jobs, carries SLURM_CONF=<this
cluster's slurm.conf> in its environment; stop() (also on an exception, and at interpreter
exit) scancels everything, stops the daemons and then kills whatever still carries it. The
daemons also get SIGTERM when the test process dies (PR_SET_PDEATHSIG), and a new cluster on
the same scratch directory first kills what a killed earlier run left behind.

If a daemon cannot start, SlurmError says which and quotes its log."""
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tp"))
from tp_common import free_port  # noqa: E402,F401  (test_slurm imports it from here)

SLURM_BINARIES = ["munged", "mungekey", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "srun", "scontrol",
                  "squeue", "scancel", "sinfo"]
PMIX_PLUGIN_DIRS = ["/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib/aarch64-linux-gnu/slurm-wlm",
                    "/usr/lib/slurm-wlm", "/usr/lib64/slurm", "/usr/lib/slurm"]


class SlurmError(RuntimeError):
    pass


def _pdeathsig():
    """preexec_fn: SIGTERM to the child when this test process dies; own session."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _environ_has(pid, needle):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read().split(b"\0")
    except OSError:
        return False


def _ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
            pid = int(st[st.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            break
    return pids


def tagged_pids(tag):
    """Live processes whose environment holds the exact entry tag (bytes), not us or our parents."""
    mine = _ancestors()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in mine:
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        if _environ_has(d, tag):
            out.append(int(d))
    return out


def kill_tagged(tag, timeout=10.0):
    """TERM, then KILL, every process tagged; True when none is left."""
    t0 = time.time()
    sig = signal.SIGTERM
    while time.time() - t0 < timeout:
        pids = tagged_pids(tag)
        if not pids:
            return True
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
        if time.time() - t0 > 2:
            sig = signal.SIGKILL
    return not tagged_pids(tag)


def missing_prerequisites():
    """What the machine lacks for a Slurm cluster (binaries, the pmix MPI plugin), or []."""
    miss = [b for b in SLURM_BINARIES if not shutil.which(b) and not os.path.exists(f"/usr/sbin/{b}")]
    if not any(os.path.exists(os.path.join(d, "mpi_pmix.so")) for d in PMIX_PLUGIN_DIRS):
        miss.append("the mpi_pmix plugin (mpi_pmix.so)")
    return miss


class SlurmCluster:
    def __init__(self, scratch, cpus=2, extra_env=None, kill_wait=5):
        self.dir = os.path.abspath(scratch)
        self.cpus = cpus
        self.kill_wait = kill_wait
        self.conf = os.path.join(self.dir, "etc", "slurm.conf")
        self.tag = f"SLURM_CONF={self.conf}".encode()
        self.procs = {}
        self.env = dict(os.environ)
        self.env.update(extra_env or {})
        self.env["SLURM_CONF"] = self.conf
        self.node = socket.gethostname().split(".")[0]
        self.started = False

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self):
        miss = missing_prerequisites()
        if miss:
            raise SlurmError("Slurm is not installed: missing " + ", ".join(miss) +
                             " (deploy/install-deps.sh installs slurmctld slurmd slurm-client munge "
                             "slurm-wlm-basic-plugins)")
        kill_tagged(self.tag)  # leftovers of a run that was killed
        shutil.rmtree(self.dir, ignore_errors=True)
        for sub, mode in (("munge", 0o700), ("run", 0o755), ("etc", 0o755), ("ctld", 0o700), ("spool", 0o755),
                          ("log", 0o755)):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
            os.chmod(os.path.join(self.dir, sub), mode)
        os.chmod(self.dir, 0o755)  # munged wants every directory above its socket searchable
        self.started = True
        self.sock = os.path.join(self.dir, "run", "munge.sock")
        key = os.path.join(self.dir, "munge", "munge.key")
        self._run(["mungekey", "--create", "--keyfile", key], "mungekey")
        self._spawn("munged", ["munged", "-F", f"--socket={self.sock}", f"--key-file={key}",
                               f"--pid-file={self.dir}/run/munged.pid", f"--log-file={self.dir}/log/munged.log",
                               f"--seed-file={self.dir}/munge/seed"])
        t0 = time.time()
        while True:
            p = subprocess.run(f"munge -n -S {self.sock} | unmunge -S {self.sock}", shell=True,
                               capture_output=True, text=True, env=self.env)
            if p.returncode == 0 and "Success" in p.stdout:
                break
            self._alive_or_fail("munged", "log/munged.log")
            if time.time() - t0 > 15:
                raise SlurmError(f"munged does not answer: {p.stderr.strip()}\n{self._tail('log/munged.log')}")
            time.sleep(0.1)
        self.ctld_port, self.slurmd_port = free_port(), free_port()
        with open(self.conf, "w") as f:
            f.write(self.slurm_conf())
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", self.conf])
        self._spawn("slurmd", ["slurmd", "-D", "-f", self.conf])
        t0 = time.time()
        while True:
            self._alive_or_fail("slurmctld", "log/slurmctld.log")
            self._alive_or_fail("slurmd", "log/slurmd.log")
            st = self.cmd(["sinfo", "-h", "-n", self.node, "-o", "%T"], check=False).stdout.strip()
            if st == "idle":
                break
            if time.time() - t0 > 30:
                raise SlurmError(f"node {self.node} did not become idle in 30 s (state '{st}'):\n"
                                 f"slurmctld: {self._tail('log/slurmctld.log')}\nslurmd: {self._tail('log/slurmd.log')}")
            time.sleep(0.2)
        self.startup_s = time.time() - t0
        return self

    def stop(self):
        if not self.started:
            return
        self.started = False
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.cmd(["scancel", "--full", "--partition", "debug"], check=False, timeout=10)
            t0 = time.time()
            while time.time() - t0 < self.kill_wait + 5 and self.cmd(["squeue", "-h"], check=False, timeout=10).stdout.strip():
                time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.leftovers = tagged_pids(self.tag)
        kill_tagged(self.tag)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    # ---- configuration ------------------------------------------------------------------------
    def slurm_conf(self):
        d = self.dir
        return f"""# written by tests/slurm/slurm_cluster.py: a one-node cluster private to this test
ClusterName=gst{os.getpid() % 100000}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.sock}
CredType=cred/munge
StateSaveLocation={d}/ctld
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait={self.kill_wait}
MinJobAge=600
InactiveLimit=0
SchedulerParameters=sched_interval=1
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""

    # ---- commands -----------------------------------------------------------------------------
    def cmd(self, argv, check=True, timeout=30):
        p = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and p.returncode != 0:
            raise SlurmError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
        return p

    def sbatch(self, argv, cwd=None):
        """Submits from cwd (the job's SLURM_SUBMIT_DIR); returns the job id."""
        p = subprocess.run(["sbatch", "--parsable", *argv], capture_output=True, text=True, env=self.env, timeout=30,
                           cwd=cwd)
        if p.returncode != 0:
            raise SlurmError(f"sbatch {' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
        return p.stdout.strip().split(";")[0]

    def job(self, jid):
        """scontrol show job as a dict (the first record; {} once the job is gone)."""
        p = self.cmd(["scontrol", "show", "job", "-o", str(jid)], check=False)
        if p.returncode != 0 or not p.stdout.strip():
            return {}
        out = {}
        for tok in p.stdout.splitlines()[0].split():
            k, _, v = tok.partition("=")
            out.setdefault(k, v)
        return out

    def stepd_pids(self, jid):
        """slurmstepd processes of job jid on this node (their title is "slurmstepd: [JID.STEP]")."""
        out = []
        for pid in tagged_pids(self.tag):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith(f"slurmstepd: [{jid}."):
                out.append(pid)
        return out

    def wait_job(self, jid, timeout, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                             "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED")):
        t0 = time.time()
        while time.time() - t0 < timeout:
            j = self.job(jid)
            if j.get("JobState") in states:
                return j
            time.sleep(0.2)
        raise SlurmError(f"job {jid} not done in {timeout} s: {self.job(jid).get('JobState')}")

    # ---- internals ----------------------------------------------------------------------------
    def _run(self, argv, what):
        p = subprocess.run(argv, capture_output=True, text=True, env=self.env)
        if p.returncode != 0:
            raise SlurmError(f"{what} failed: {p.stderr.strip()}")

    def _spawn(self, name, argv):
        log = open(os.path.join(self.dir, "log", f"{name}.out"), "w")
        self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, preexec_fn=_pdeathsig)
        log.close()

    def _tail(self, rel, n=15):
        text = ""
        for path in (os.path.join(self.dir, rel), os.path.join(self.dir, "log", os.path.basename(rel).split(".")[0] + ".out")):
            try:
                with open(path, errors="replace") as f:
                    text += "".join(f.readlines()[-n:])
            except OSError:
                pass
        return text.strip() or "(no log)"

    def _alive_or_fail(self, name, log):
        p = self.procs[name]
        if p.poll() is not None:
            raise SlurmError(f"{name} exited with status {p.returncode} at start-up:\n{self._tail(log)}")
