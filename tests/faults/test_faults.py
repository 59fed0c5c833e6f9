#!/usr/bin/env python3
"""Faults of an engine on one host, each with its promised outcome (ARCHITECTURE.md §7), with a
real coordinator, two real `mpirun -np 2 gemmashard-worker` engines under a relaunch loop (what
systemd's Restart=on-failure or the Slurm serving job's supervisor does) and real grpcio clients:

  1. SIGKILL the leader (rank 0) of engine 0 mid-generation, then (once it is back) a follower:
     the coordinator marks the engine down within 3 s; each stream ends OK (it ran elsewhere,
     or had no output yet and moved) or UNAVAILABLE, none hangs; every other rank of that
     engine exits within 30 s; the launcher starts it again and it registers again.
  2. SIGSTOP a follower mid-generation (a hung peer, not a dead one: nothing tells mpirun): the
     leader stops sending heartbeats (it waits in a collective), so the engine is marked down
     after the heartbeat timeout; the leader's collective watchdog ends it with a message that
     names the collective, mpirun takes down the stopped follower, and the engine comes back.
  3. A batch job (`mpirun -np 2 gemmashard-worker --batch`) SIGKILLed at a random point three
     times in a row, then run to the end: every id exactly once, every record equal to an
     uninterrupted run.

Timings are printed (detection, slowest rank exit, re-registration, batch overhead per restart).

usage: test_faults.py BUILD_DIR TOKENIZER_JSON MPIRUN SCRATCH"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faults_common import (REPO, Streams, alive, engine_ranks, engines_up, wait_for,  # noqa: E402
                           wait_ranks)
from checks import check, exit_status  # noqa: E402
from cluster import Cluster  # noqa: E402
from tp_common import kill_session, make_model, mpi_env, mpirun  # noqa: E402
from test_grpc import compile_protos  # noqa: E402

ENGINE_ARGS = ["--ctx", "640", "--max-seqs", "2", "--threads", "1"]
N_BATCH = 32


def rank_fault(cl, stub, pb, rank, sig, what, detect_bound):
    """Signal `rank` of engine-0 while streams run; check the outcome; returns the timings."""
    worker = cl.worker_bin
    ranks = wait_ranks(worker, "engine-0", cl.tp, 60)
    if not check(ranks is not None, f"{what}: both ranks of engine-0 running"):
        return None
    # short enough for ASan builds (about 20 ms a token there), long enough to be running at the fault
    st = Streams(stub, pb, n=6, max_tokens=240, deadline_s=120, first=3)
    check(st.started.wait(60), f"{what}: streams are generating")
    t0 = time.time()
    os.kill(ranks[rank], sig)
    det = wait_for(lambda: engines_up(cl) < 2, 20)
    check(det is not None and det <= detect_bound,
          f"{what}: the coordinator marks engine-0 down in {det if det is None else round(det, 2)} s "
          f"(bound {detect_bound} s)")
    others = [p for r, p in ranks.items() if r != rank or sig == signal.SIGSTOP]
    # then, watched together: the other ranks' exits and the relaunched engine's registration
    gone = back = None
    while time.time() - t0 < 90 and (gone is None or back is None):
        if gone is None and not any(alive(p) for p in others):
            gone = time.time() - t0
        if back is None and gone is not None and engines_up(cl) == 2:
            back = time.time() - t0
        time.sleep(0.02)
    check(gone is not None and gone <= 30, f"{what}: every other rank of engine-0 exits, the slowest "
          f"{gone if gone is None else round(gone, 2)} s after the fault (bound 30 s)")
    check(back is not None, f"{what}: relaunched by the launcher, engine-0 registers again "
          f"{back if back is None else round(back, 2)} s after the fault")
    hung = st.join(120)
    check(not hung, f"{what}: no stream hangs ({len(hung)} still open)")
    codes = {}
    for code, got, _ in st.res.values():
        codes.setdefault(code, [0, 0])[got] += 1
    seen = {k: {"no output": v[0], "output": v[1]} for k, v in codes.items()}
    check(set(codes) <= {"OK", "UNAVAILABLE"} and "OK" in codes, f"{what}: streams end OK or UNAVAILABLE ({seen})")
    check(codes.get("UNAVAILABLE", [0, 0])[1] >= 1 and codes.get("UNAVAILABLE", [0, 0])[0] == 0,
          f"{what}: UNAVAILABLE only for streams that had output (the rest moved or finished)")
    wait_for(lambda: engines_up(cl) == 2, 60)
    return det, gone, back


def batch_faults(build, model, mpirun_bin, scratch):
    """Kill a T = 2 batch run three times at random points, then finish it."""
    worker = os.path.join(build, "worker", "gemmashard-worker")
    inp = os.path.join(scratch, "batch.in.jsonl")
    with open(inp, "w") as f:
        for i in range(N_BATCH):
            r = {"id": f"b{i:02d}", "prompt": f"Clinical note {i}: follow-up.", "max_tokens": 6 + (i * 5) % 14}
            if i % 2:
                r.update(temperature=0.8, top_k=40, seed=77 + i)
            f.write(json.dumps(r) + "\n")
    argv = ["--model", model, "--batch", inp, "--ctx", "256", "--max-seqs", "2", "--max-batch-tokens", "16",
            "--threads", "1"]

    def records(path):
        data = open(path, "rb").read() if os.path.exists(path) else b""
        lines = data.split(b"\n")
        whole = [json.loads(x) for x in lines[:-1]]  # a torn last line is the run's to repair
        return whole, data

    ref_out = os.path.join(scratch, "batch.ref.jsonl")
    if os.path.exists(ref_out):
        os.remove(ref_out)
    rc, so, se, t_ref = mpirun(mpirun_bin, 2, [worker, *argv, "--out", ref_out], timeout=600)
    ref, _ = records(ref_out)
    if not check(rc == 0 and len(ref) == N_BATCH, f"batch: uninterrupted T=2 run: {len(ref)} records in {t_ref:.2f} s"):
        print(se[-2000:])
        return
    out = os.path.join(scratch, "batch.out.jsonl")
    if os.path.exists(out):
        os.remove(out)
    seed = int(os.environ.get("GS_FAULTS_SEED", str(random.randrange(1 << 30))))
    rnd = random.Random(seed)
    t_runs = 0.0
    for k in range(3):
        p = subprocess.Popen([mpirun_bin, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "2",
                              worker, *argv, "--out", out], env=mpi_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        t0 = time.time()
        n0 = len(records(out)[0])
        # a random point before the end: kill k falls once a random number of records in the
        # (k+1)-th quarter of the file are written (so the third leaves at least a quarter to do,
        # however fast the machine), plus up to 10 ms
        lo = max(n0 + 1, k * N_BATCH // 4 + 1)
        target = rnd.randint(lo, max(lo, (k + 1) * N_BATCH // 4))
        wait_for(lambda: len(records(out)[0]) >= target or p.poll() is not None, 120, 0.005)
        time.sleep(rnd.uniform(0.0, 0.01))
        kill_session(p.pid)
        p.wait()
        t_runs += time.time() - t0
        got, data = records(out)
        ids = [r["id"] for r in got]
        torn = ", and a torn last line" if data and not data.endswith(b"\n") else ""
        check(len(ids) == len(set(ids)) and len(ids) < N_BATCH,
              f"batch: killed run {k + 1}/3 (seed {seed}) left {len(ids)} records, no id twice{torn}")
    t0 = time.time()
    rc, so, se, _ = mpirun(mpirun_bin, 2, [worker, *argv, "--out", out], timeout=600)
    t_runs += time.time() - t0
    got, data = records(out)
    ids = [r["id"] for r in got]
    check(rc == 0 and data.endswith(b"\n"), f"batch: the fourth run completes (rc {rc}) and the file ends "
          f"with a whole line")
    check(sorted(ids) == sorted(r["id"] for r in ref) and len(ids) == len(set(ids)),
          f"batch: every id exactly once ({len(set(ids))} distinct of {len(ids)} records)")
    by = {r["id"]: r for r in ref}
    diff = [r["id"] for r in got if r != by.get(r["id"])]
    check(not diff, f"batch: every record equals the uninterrupted run ({len(diff)} differ"
          f"{', first ' + diff[0] if diff else ''})")
    print(f"figure: batch resume overhead {(t_runs - t_ref) / 3:.2f} s per restart "
          f"(4 runs {t_runs:.2f} s against {t_ref:.2f} s uninterrupted)", flush=True)


def main():
    build, tok, mpirun_bin, scratch = sys.argv[1:5]
    # a TERM (ctest's timeout, a person) still runs the clean-up below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    mpirun_bin = shutil.which(mpirun_bin) or mpirun_bin
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    compile_protos(REPO, os.path.join(scratch, "py"))
    import gemmashard.v1.inference_pb2 as pb
    import gemmashard.v1.inference_pb2_grpc as pbg
    import grpc

    gs = os.path.join(build, "tools", "gemmashard")
    model = make_model(gs, tok, os.path.join(scratch, "tiny"), "--preset", "tiny", "--max-pos", "1024")
    cl = Cluster(build, model, engines=2, tp=2, engine_args=ENGINE_ARGS, mpirun=mpirun_bin, relaunch=True,
                 logdir=os.path.join(scratch, "logs"))
    figures = {}
    try:
        with cl:
            stub = pbg.InferenceStub(grpc.insecure_channel(f"127.0.0.1:{cl.grpc_port}"))
            figures["leader"] = rank_fault(cl, stub, pb, 0, signal.SIGKILL, "leader killed", 3.0)
            figures["follower"] = rank_fault(cl, stub, pb, 1, signal.SIGKILL, "follower killed", 3.0)
            # heartbeats stop: detection is the coordinator's 3 s heartbeat timeout (+ its 50 ms
            # monitor period and this test's polling)
            figures["hung"] = rank_fault(cl, stub, pb, 1, signal.SIGSTOP, "follower hung (SIGSTOP)", 3.5)
            line = next((x.strip() for x in cl.log("engine-0").split("launcher: starting the engine")[3].splitlines()
                         if x.startswith("[gemmashard r0] fatal: watchdog")), "")
            check("MPI_" in line and "after a stop signal" not in line,
                  f"hung follower: the leader's watchdog ends it, naming the collective: {line or '(no line)'}")
            starts = cl.log("engine-0").count("launcher: starting the engine")
            check(starts == 4, f"engine-0 was started 4 times, 3 of them by the relaunch loop ({starts})")
    finally:
        for i in range(2):
            leftovers = engine_ranks(cl.worker_bin, f"engine-{i}")
            for p in leftovers.values():
                os.kill(p, signal.SIGKILL)
    check(cl.coord_rc == 0, f"coordinator exits cleanly ({cl.coord_rc})")
    for k, v in figures.items():
        if v:
            print(f"figure: {k}: after the fault, marked down {v[0]:.2f} s, slowest other rank gone "
                  f"{v[1] if v[1] is None else round(v[1], 2)} s, registered again "
                  f"{v[2] if v[2] is None else round(v[2], 2)} s", flush=True)

    batch_faults(build, model, mpirun_bin, scratch)
    return exit_status(lambda: cl.log("engine-0") + cl.log("coordinator"))


if __name__ == "__main__":
    sys.exit(main())
