"""Helpers of the fault tests (test_faults.py, test_multihost.py): the ranks of one engine,
waits with timings, and streams that record whether they got output before they ended.
The cluster itself is tests/e2e/cluster.py."""
import os
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
sys.path.insert(0, os.path.join(REPO, "tests", "tp"))


def engine_ranks(worker_bin, engine_id):
    """{rank: pid} of the live gemmashard-worker processes of engine_id (found by executable and
    --engine-id, whatever session or namespace launched them)."""
    want = os.path.realpath(worker_bin)
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.path.realpath(f"/proc/{d}/exe") != want:
                continue
            argv = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            if st[st.rindex(")") + 2] == "Z":
                continue
            env = dict(kv.split(b"=", 1) for kv in open(f"/proc/{d}/environ", "rb").read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if engine_id.encode() in argv and b"OMPI_COMM_WORLD_RANK" in env:
            out[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(d)
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rindex(")") + 2] != "Z"
    except OSError:
        return False


def wait_for(pred, timeout, step=0.02):
    """Seconds until pred() held, or None after timeout."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return time.time() - t0
        time.sleep(step)
    return None


def engines_up(cl):
    st, body = cl.health()
    return (body or {}).get("engines", 0)


def wait_ranks(worker_bin, engine_id, n, timeout):
    """{rank: pid} once all n ranks of engine_id run (None after timeout)."""
    got = {}

    def full():
        got.clear()
        got.update(engine_ranks(worker_bin, engine_id))
        return len(got) == n
    return dict(got) if wait_for(full, timeout, 0.05) is not None else None


def kill_pids(pids):
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Streams:
    """n concurrent GenerateStream calls; per request: status code name, whether any token
    came before the end, seconds. started.wait() returns once `first` of them got a token."""

    def __init__(self, stub, pb, n, max_tokens, deadline_s, first=1, prompt="Assessment and plan:"):
        import grpc
        self.res, self.lock = {}, threading.Lock()
        self.started = threading.Event()
        self.n_first = 0

        def run(i):
            t0, got = time.time(), False
            try:
                req = pb.GenerateRequest(prompt=f"{prompt} {i}", max_tokens=max_tokens, temperature=0.0)
                for c in stub.GenerateStream(req, timeout=deadline_s):
                    if c.token_ids and not got:
                        got = True
                        with self.lock:
                            self.n_first += 1
                            if self.n_first >= first:
                                self.started.set()
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            with self.lock:
                self.res[i] = (code, got, time.time() - t0)
        self.th = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
        for t in self.th:
            t.start()

    def join(self, timeout):
        t0 = time.time()
        for t in self.th:
            t.join(max(0.0, timeout - (time.time() - t0)))
        return [t for t in self.th if t.is_alive()]
