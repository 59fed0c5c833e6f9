#!/usr/bin/env python3
"""The Slurm jobs of deploy/slurm/ on a real one-node Slurm 22.05 cluster that this test starts
in its scratch directory (munged, slurmctld, slurmd; slurm_cluster.py) and stops afterwards:

  a. gemmashard-batch.sbatch at T = 2 (srun --mpi=pmix) runs to completion, and its output
     equals `mpirun -np 2 gemmashard-worker --batch` on the same input, record for record;
  b. the same script at T = 1 is interrupted twice: USR1 (what --signal=B:USR1@secs sends before
     the time limit; the script checkpoints and requeues itself) and `scontrol requeue` (an
     administrator or preemption). Every id exactly once, records equal to an uninterrupted run;
  c. a 3-task job array (--array=0-2): each task its own part; task 0's merge job
     (gemmashard batch-merge, after the array) joins them: every id exactly once, in input
     order, equal to a single run (`gemmashard run --batch`);
  d. gemmashard-serve.sbatch: coordinator + 2 engines of T = 2 over the allocation, engine link
     over mutual TLS with certificates the job makes, API key file; a python grpcio client and
     curl get the answers of the batch reference; `scancel` leaves no process within a bound;
  e. the same script serving two models (repeated --model, per-model --tp/--engines/--served-name):
     1 engine of T = 2 of one and 1 of T = 1 of another; GET /v1/models lists both, each name
     answers with its own model's reference text, an unknown name gets 404; scancel cleans up; a
     job with fewer tasks than the models need is refused.

Prints the figures (job run times, resume overhead per requeue, scancel -> no process).
If Slurm is missing or a daemon cannot start, the test fails and says why.

usage: test_slurm.py BUILD_DIR TOKENIZER_JSON MPIRUN SCRATCH"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "tp"))
from slurm_cluster import SlurmCluster, SlurmError, free_port, tagged_pids  # noqa: E402
from tp_common import make_model, mpi_env  # noqa: E402

BUILD, TOK, MPIRUN, SCRATCH = [os.path.abspath(a) if i != 2 else a for i, a in enumerate(sys.argv[1:5])]
GS = os.path.join(BUILD, "tools", "gemmashard")
WORKER = os.path.join(BUILD, "worker", "gemmashard-worker")
BATCH = os.path.join(REPO, "deploy", "slurm", "gemmashard-batch.sbatch")
SERVE = os.path.join(REPO, "deploy", "slurm", "gemmashard-serve.sbatch")
failures = []
figures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)
    return ok


def figure(what):
    print("figure: " + what, flush=True)
    figures.append(what)


# ---- inputs and reference runs --------------------------------------------------------------------
def write_input_a(path):
    """Greedy and seeded sampling, chat, stop strings, logprobs, a line without an id (its id is
    its line number in the whole file), a repeated id and a malformed line (error records)."""
    topics = ["hypertension", "metformin 500 mg BID", "troponin negative chest pain", "CKD stage 3",
              "sepsis bundle", "warfarin INR 3.2", "pediatric fever", "asthma exacerbation"]
    lines = []
    for i in range(27):
        t = topics[i % len(topics)]
        r = {"id": f"a{i:02d}", "max_tokens": 4 + (i * 5) % 13}
        if i % 3 == 0:
            r["messages"] = [{"role": "user", "content": f"Explain {t} ({i})."}]
        else:
            r["prompt"] = f"Clinical note {i}: {t}. Assessment:"
        if i % 2:
            r["temperature"] = 0
        else:
            r.update(temperature=0.8, top_k=40, top_p=0.95, seed=500 + i)
        if i % 7 == 0:
            r["stop"] = ["e"]
        if i % 9 == 4:
            r.update(logprobs=True, top_logprobs=2)
        lines.append(json.dumps(r))
    lines.insert(10, json.dumps({"prompt": "no id on this line", "max_tokens": 5, "temperature": 0}))
    lines.insert(15, json.dumps({"id": "a03", "prompt": "repeated id", "max_tokens": 3}))
    lines.insert(20, '{"id": "broken", "prompt": ')
    lines.insert(21, "")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return len([l for l in lines if l])


def write_input_b(path, n=48):
    with open(path, "w") as f:
        for i in range(n):
            r = {"id": f"b{i:02d}", "prompt": f"Discharge summary {i}: pneumonia, day {i % 7}.", "max_tokens": 16}
            if i % 2:
                r["temperature"] = 0
            else:
                r.update(temperature=0.7, seed=900 + i)
            f.write(json.dumps(r) + "\n")
    return n


def read_records(path, what):
    """id -> raw line; a duplicate id or a torn line is a failure."""
    recs = {}
    with open(path, "rb") as f:
        data = f.read()
    check(data.endswith(b"\n") or not data, f"{what}: ends with a complete line")
    for line in data.decode("utf-8").splitlines():
        if not line.strip():
            continue
        rid = json.loads(line)["id"]
        if rid in recs:
            failures.append(f"{what}: id {rid} twice")
        recs[rid] = line
    return recs


def same_records(got, want, what):
    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    check(not diff and len(got) == len(want),
          f"{what}: {len(got)} records equal the reference's {len(want)}, record for record"
          + (f" (differ: {diff[:5]})" if diff else ""))


def reference_mpirun(np_, model, inp, out, extra=()):
    if os.path.exists(out):
        os.remove(out)
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(np_), WORKER,
           "--model", model, "--batch", inp, "--out", out, "--threads", "1", *extra]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env(), timeout=300)
    secs = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"reference mpirun -np {np_}: {p.stderr[-2000:]}")
    return read_records(out, f"reference T={np_}"), secs


def log_of(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def wait_for(cond, timeout, what, poll=0.05):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {timeout} s")


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


# ---- the checks ----------------------------------------------------------------------------------
def check_a(sc, model, inp, ref2):
    out = os.path.join(SCRATCH, "a.out.jsonl")
    log = os.path.join(SCRATCH, "a.job.log")
    t0 = time.time()
    jid = sc.sbatch(cwd=SCRATCH, argv=["-n", "2", "-o", log, BATCH, "--model", model, "--in", inp, "--out", out, "--bin", BUILD,
                     "--threads", "1"])
    j = sc.wait_job(jid, 120)
    wall = time.time() - t0
    check(j.get("JobState") == "COMPLETED" and j.get("ExitCode") == "0:0",
          f"a. batch job {jid} at T=2 completed ({j.get('JobState')}, exit {j.get('ExitCode')})")
    text = log_of(log)
    check("TP=2" in text, "a. the worker step ran with T=2 ranks from the allocation (srun --mpi=pmix)")
    same_records(read_records(out, "a. job output"), ref2, "a. sbatch T=2 vs mpirun -np 2 --batch")
    m = re.search(r"done in ([0-9.]+) s", text)
    figure(f"a. batch job T=2, {len(ref2)} records: {wall:.1f} s submit to COMPLETED"
           f" ({m.group(1) if m else '?'} s in the script)")


def release(sc, jid, restarts, timeout=60):
    """Wait until the job is back in the queue after its restarts-th requeue, then lift Slurm's
    ~120 s requeue hold (EligibleTime) so the test does not sit through it."""
    t0 = time.time()
    j = wait_for(lambda: (lambda j: j if j.get("JobState") == "PENDING" and j.get("Restarts") == str(restarts)
                          else None)(sc.job(jid)), timeout, f"job {jid} pending after requeue {restarts}")
    held = j.get("EligibleTime", "?")
    # The hold lets the node finish with the old run: a step launched while the old run's
    # slurmstepd of the same step id is still exiting fails. Wait for that instead.
    wait_for(lambda: not sc.stepd_pids(jid), timeout, f"job {jid}: the previous run's slurmstepd exits", poll=0.1)
    # Slurm may set the hold again while it finishes the requeue (the job still completing):
    # release it until the job runs.
    last = 0.0

    def running():
        nonlocal last
        j = sc.job(jid)
        if j.get("JobState") in ("RUNNING", "COMPLETED"):
            return True
        if j.get("JobState") == "PENDING" and time.time() - last > 1.0:
            sc.cmd(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=False)
            last = time.time()
        return False
    try:
        wait_for(running, timeout, f"job {jid} restarted", poll=0.1)
    except TimeoutError as e:
        j = sc.job(jid)
        raise TimeoutError(f"{e} (state {j.get('JobState')}, reason {j.get('Reason')}, "
                           f"eligible {j.get('EligibleTime')})") from None
    return time.time() - t0, held


def check_b(sc, model, inp, ref1, ref_secs, n):
    out = os.path.join(SCRATCH, "b.out.jsonl")
    log = os.path.join(SCRATCH, "b.job.log")
    t0 = time.time()
    jid = sc.sbatch(cwd=SCRATCH, argv=["-n", "1", "-o", log, BATCH, "--model", model, "--in", inp, "--out", out, "--bin", BUILD,
                     "--threads", "1", "--", "--max-seqs", "1", "--ctx", "1024"])
    first = max(6, n // 6)
    wait_for(lambda: count_lines(out) >= first, 120, f"{first} records before the first interruption")
    at1 = count_lines(out)
    sc.cmd(["scancel", "--batch", "--signal=USR1", jid])  # what --signal=B:USR1@secs delivers
    lat1, held = release(sc, jid, 1)
    second = min(n - 6, count_lines(out) + n // 3)
    wait_for(lambda: count_lines(out) >= second, 120, f"{second} records before the second interruption")
    at2 = count_lines(out)
    check(at2 < n, f"b. second interruption lands mid-run ({at2} of {n} records written)")
    sc.cmd(["scontrol", "requeue", jid])
    lat2, _ = release(sc, jid, 2)
    j = sc.wait_job(jid, 180)
    wall = time.time() - t0
    text = log_of(log)
    check(j.get("JobState") == "COMPLETED" and j.get("Restarts") == "2",
          f"b. job {jid} completed after 2 requeues ({j.get('JobState')}, Restarts={j.get('Restarts')})")
    check("USR1 after" in text and "requeued; the rerun resumes" in text,
          "b. USR1 (the time-limit warning): the script stopped the worker and requeued itself")
    check("TERM after" in text, "b. scontrol requeue: the script stopped the worker on TERM")
    check(re.search(r"start: restart 2, .*\(([1-9]\d*) of \d+ records there\)", text) is not None,
          "b. the reruns started from the records already written")
    got = read_records(out, "b. job output")
    check(len(got) == n, f"b. every id exactly once after two requeues ({len(got)} of {n})")
    same_records(got, ref1, "b. requeued twice vs an uninterrupted run")
    # Each run's time in the script, start to its last word (a run stopped by scontrol requeue
    # may be killed before it says "worker stopped"; then its "TERM after" counts).
    segs = []
    for run in text.split("gemmashard-batch[")[1:]:
        if " start: restart " in run.split("\n", 1)[0]:
            segs.append(None)
        m = re.match(r"\d+\]: (?:worker stopped after|TERM after|USR1 after|done in) ([0-9.]+) s", run)
        if m and segs:
            segs[-1] = float(m.group(1))
    if len(segs) == 3 and None not in segs:
        total = sum(segs)
        figure(f"b. resume overhead per requeue: {(total - ref_secs) / 2:.1f} s (3 runs {segs[0]:.1f} + "
               f"{segs[1]:.1f} + {segs[2]:.1f} s = {total:.1f} s vs {ref_secs:.1f} s for mpirun uninterrupted; "
               f"interrupted at {at1} and {at2} of {n} records)")
    else:
        check(False, f"b. three runs with their times in the job log ({segs})")
    figure(f"b. requeue to running again: {lat1:.1f} s and {lat2:.1f} s with StartTime=now "
           f"(Slurm's own hold would have been until {held}); whole job {wall:.1f} s")


def check_c(sc, model, inp, ref1):
    out = os.path.join(SCRATCH, "c.out.jsonl")
    log = os.path.join(SCRATCH, "c.job-%a.log")
    t0 = time.time()
    jid = sc.sbatch(cwd=SCRATCH, argv=["--array=0-2", "-n", "1", "-o", log, BATCH, "--model", model, "--in", inp, "--out", out,
                     "--bin", BUILD, "--threads", "1"])
    marker = out + ".merge-job"
    mjob = wait_for(lambda: (open(marker).read().strip() if os.path.exists(marker) else "").isdigit()
                    and open(marker).read().strip(), 60, "task 0 submits the merge job")
    j = sc.wait_job(mjob, 180)
    wall = time.time() - t0
    tasks = [sc.job(f"{jid}_{k}") for k in range(3)]
    check(all(t.get("JobState") == "COMPLETED" for t in tasks),
          f"c. array {jid}: 3 tasks completed ({[t.get('JobState') for t in tasks]})")
    check(j.get("JobState") == "COMPLETED" and j.get("ExitCode") == "0:0",
          f"c. merge job {mjob} (afterok:{jid}) completed ({j.get('JobState')}, exit {j.get('ExitCode')})")
    ids_in_parts = []
    for k in range(3):
        part = f"{out}.part-{k}-of-3"
        recs = read_records(part, f"c. part {k}") if os.path.exists(part) else {}
        ids_in_parts += list(recs)
        check(len(recs) > 0, f"c. part {k} of 3 has {len(recs)} records")
    check(len(ids_in_parts) == len(set(ids_in_parts)), "c. no id in two parts")
    got = read_records(out, "c. merged output") if os.path.exists(out) else {}
    check(len(got) == len(ref1), f"c. merged: every id exactly once ({len(got)} of {len(ref1)})")
    same_records(got, ref1, "c. 3-task array merged vs a single run (gemmashard run --batch)")
    with open(out) as f:
        order = [json.loads(l)["id"] for l in f if l.strip()]
    check(order == sorted(order, key=lambda i: INPUT_ORDER.get(i, 1e9)), "c. merged records are in input order")
    figure(f"c. 3-task array + merge, {len(got)} records: {wall:.1f} s submit to merged")


def grpc_stubs(out):
    os.makedirs(out, exist_ok=True)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(REPO, "proto"),
                    f"--python_out={out}", f"--grpc_python_out={out}",
                    os.path.join(REPO, "proto", "gemmashard", "v1", "inference.proto")], check=True)
    sys.path.insert(0, out)


def check_d(sc, model, ref2, inp_a):
    import grpc
    grpc_stubs(os.path.join(SCRATCH, "py"))
    import gemmashard.v1.inference_pb2 as pb
    import gemmashard.v1.inference_pb2_grpc as pbg

    key = "sk-slurm-" + os.urandom(12).hex()
    keyfile = os.path.join(SCRATCH, "api-keys")
    with open(os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(f"slurm-test {key}\n")
    ports = {"http": free_port(), "grpc": free_port(), "engine": free_port()}
    log = os.path.join(SCRATCH, "d.job.log")
    t0 = time.time()
    jid = sc.sbatch(cwd=SCRATCH, argv=["-n", "4", "-o", log, SERVE, "--model", model, "--tp", "2", "--bin", BUILD, "--bind",
                     "127.0.0.1", "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
                     "--engine-port", str(ports["engine"]), "--api-key-file", keyfile, "--threads", "1",
                     "--stop-timeout", "10", "--", "--ctx", "1024", "--max-seqs", "8"])
    ep_file = os.path.join(SCRATCH, f"gemmashard-{jid}.endpoints")
    try:
        wait_for(lambda: os.path.exists(ep_file) or sc.job(jid).get("JobState") not in ("PENDING", "RUNNING"),
                 150, "the serve job writes its endpoints")
    except TimeoutError as e:
        check(False, f"d. {e}:\n{log_of(log)[-3000:]}")
        return
    ready = time.time() - t0
    if not check(os.path.exists(ep_file), f"d. serve job {jid} wrote {os.path.basename(ep_file)}"):
        print(log_of(log)[-3000:])
        return
    with open(ep_file) as f:
        ep_text = f.read()
    ep = dict(l.split("=", 1) for l in ep_text.splitlines() if "=" in l)
    check(ep.get("GS_HTTP_URL") == f"http://127.0.0.1:{ports['http']}/v1" and
          ep.get("GS_GRPC_ADDR") == f"127.0.0.1:{ports['grpc']}" and ep.get("GS_ENGINES") == "2",
          f"d. endpoints: {ep.get('GS_HTTP_URL')}, gRPC {ep.get('GS_GRPC_ADDR')}, {ep.get('GS_ENGINES')} engines")
    check(key not in ep_text, "d. the endpoints file holds no secret")
    steps = sc.cmd(["squeue", "-h", "-s", "-j", jid, "-o", "%i %N"]).stdout.split()
    check(sum(1 for s in steps if re.fullmatch(rf"{jid}\.\d+", s)) == 3,
          f"d. three job steps: the coordinator and two engines ({steps})")
    text = log_of(log)
    check(text.count("over TLSv1.3") >= 2, "d. both engines registered over mutual TLS 1.3")
    certs = os.path.join(SCRATCH, f".gemmashard-{jid}", "certs")
    check(os.path.exists(os.path.join(certs, "engine.crt")) and not os.path.exists(os.path.join(certs, "ca.key"))
          and (os.stat(os.path.dirname(certs)).st_mode & 0o077) == 0,
          "d. the job's certificates are in a directory only the user can open, its CA key already deleted")
    tasks = []
    for k in range(3):
        st = sc.cmd(["scontrol", "show", "step", f"{jid}.{k}"], check=False).stdout
        m = re.search(r"\bTasks=(\d+)", st)
        tasks.append(int(m.group(1)) if m else None)
    check(sorted(t or 0 for t in tasks) == [1, 2, 2], f"d. steps: the coordinator 1 task, each engine 2 ({tasks})")

    # the batch reference's greedy requests, asked through gRPC and HTTP
    with open(inp_a) as f:
        reqs = [json.loads(l) for l in f if l.strip().startswith("{") and l.strip().endswith("}")]
    greedy = [r for r in reqs if r.get("temperature") == 0 and "prompt" in r and "stop" not in r
              and "logprobs" not in r and r.get("id", "").startswith("a")][:3]
    ch = grpc.insecure_channel(ep["GS_GRPC_ADDR"])
    stub = pbg.InferenceStub(ch)
    md = [("authorization", f"Bearer {key}")]
    for r in greedy:
        resp = stub.Generate(pb.GenerateRequest(prompt=r["prompt"], max_tokens=r["max_tokens"], temperature=0),
                             metadata=md, timeout=60)
        want = json.loads(ref2[r["id"]])["text"]
        check(resp.text == want, f"d. gRPC Generate {r['id']}: the batch reference's text ({len(want)} chars)")
    try:
        stub.Generate(pb.GenerateRequest(prompt="x", max_tokens=2), timeout=20)
        check(False, "d. gRPC without the API key is refused")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.UNAUTHENTICATED, f"d. gRPC without the API key -> {e.code()}")
    ch.close()
    r = greedy[0]
    body = json.dumps({"model": ep["GS_MODEL_NAME"], "prompt": r["prompt"], "max_tokens": r["max_tokens"],
                       "temperature": 0})
    p = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "--max-time", "60", "-H", f"Authorization: Bearer {key}",
                        "-H", "Content-Type: application/json", "-d", body, ep["GS_HTTP_URL"] + "/completions"],
                       capture_output=True, text=True)
    out, _, code = p.stdout.rpartition("\n")
    ok = code == "200"
    text_http = json.loads(out)["choices"][0]["text"] if ok else None
    check(ok and text_http == json.loads(ref2[r["id"]])["text"],
          f"d. curl POST /v1/completions -> {code}, the batch reference's text")
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                        ep["GS_HTTP_URL"] + "/models"], capture_output=True, text=True)
    check(p.stdout == "401", f"d. curl without the API key -> {p.stdout}")

    # scancel: no gemmashard process of this job may be left
    scancel_and_check(sc, jid, log, ep_file, [model], 5, "d", "the coordinator, 4 ranks, their srun",
                      f"serve job ready (2 engines x T=2 registered) {ready:.1f} s after sbatch")


def scancel_and_check(sc, jid, log, ep_file, models, n_min, case, procs_what, ready_what):
    """scancel a serve job: no gemmashard process of it (one naming a model of it) left within a
    bound, its endpoints file and certificates removed."""
    model_tags = [os.path.abspath(m) for m in models]

    def job_procs():
        pids = []
        for pid in tagged_pids(sc.tag):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "gemmashard" in cmd and any(t in cmd for t in model_tags):
                pids.append(pid)
        return pids
    before = job_procs()
    check(len(before) >= n_min, f"{case}. {len(before)} gemmashard processes running ({procs_what})")
    t1 = time.time()
    sc.cmd(["scancel", jid])
    bound = 30.0
    try:
        wait_for(lambda: not job_procs(), bound, "no gemmashard process after scancel")
        gone = time.time() - t1
    except TimeoutError:
        gone = None
    check(gone is not None, f"{case}. scancel: no gemmashard process left within {bound:.0f} s"
          + (f" ({gone:.2f} s)" if gone is not None else f" (left: {job_procs()})"))
    j = sc.wait_job(jid, 30)
    wait_for(lambda: "stopped after" in log_of(log), 15, "the serve script's cleanup finished")
    check(not os.path.exists(ep_file), f"{case}. the endpoints file is removed when the job stops")
    check(not os.path.exists(os.path.join(SCRATCH, f".gemmashard-{jid}")), f"{case}. the job's certificates are removed")
    if gone is not None:
        figure(f"{case}. scancel to no gemmashard process: {gone:.2f} s (bound {bound:.0f} s); {ready_what}; "
               f"job state {j.get('JobState')}")


def http(method_url, body=None, timeout=60):
    """curl: (status code, body text)."""
    cmd = ["curl", "-s", "-w", "\n%{http_code}", "--max-time", str(timeout)]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    p = subprocess.run(cmd + [method_url], capture_output=True, text=True)
    out, _, code = p.stdout.rpartition("\n")
    return code, out


def check_e(sc, model, ref2, inp_a):
    """Two models in one serve job: "alpha" (model, 1 engine of T = 2) and "beta" (another seed,
    1 engine of T = 1). Each name answers with its own model's greedy reference."""
    model2 = make_model(GS, TOK, os.path.join(SCRATCH, "model2"), "--preset", "tiny", "--seed", "6", "--max-pos", "2048")
    with open(inp_a) as f:
        reqs = [json.loads(l) for l in f if l.strip().startswith("{") and l.strip().endswith("}")]
    r = [q for q in reqs if q.get("temperature") == 0 and "prompt" in q and "stop" not in q
         and "logprobs" not in q and q.get("id", "").startswith("a")][0]
    want_a = json.loads(ref2[r["id"]])["text"]
    # beta's reference: gemmashard run --batch on model2 (outputs are batch- and T-invariant)
    inp2, out2 = os.path.join(SCRATCH, "e.in.jsonl"), os.path.join(SCRATCH, "e.ref.jsonl")
    with open(inp2, "w") as f:
        f.write(json.dumps({"id": r["id"], "prompt": r["prompt"], "max_tokens": r["max_tokens"], "temperature": 0}) + "\n")
    p = subprocess.run([GS, "run", "--model", model2, "--batch", inp2, "--out", out2, "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"gemmashard run --batch (model2): {p.stderr[-2000:]}")
    want_b = json.loads(read_records(out2, "e. reference of model2")[r["id"]])["text"]
    check(want_a != want_b, "e. the two test models answer the prompt differently (so routing is visible)")

    ports = {"http": free_port(), "grpc": free_port(), "engine": free_port()}
    log = os.path.join(SCRATCH, "e.job.log")
    common = ["--bin", BUILD, "--bind", "127.0.0.1", "--http-port", str(ports["http"]), "--grpc-port",
              str(ports["grpc"]), "--engine-port", str(ports["engine"]), "--threads", "1", "--stop-timeout", "10"]
    models = ["--model", model, "--served-name", "alpha", "--tp", "2", "--engines", "1",
              "--model", model2, "--tp", "1", "--served-name", "beta"]
    t0 = time.time()
    jid = sc.sbatch(cwd=SCRATCH, argv=["-n", "3", "-o", log, SERVE, "--engines", "1", *models, *common,
                                       "--", "--ctx", "1024", "--max-seqs", "4"])
    ep_file = os.path.join(SCRATCH, f"gemmashard-{jid}.endpoints")
    try:
        wait_for(lambda: os.path.exists(ep_file) or sc.job(jid).get("JobState") not in ("PENDING", "RUNNING"),
                 150, "the two-model serve job writes its endpoints")
    except TimeoutError as e:
        check(False, f"e. {e}:\n{log_of(log)[-3000:]}")
        return
    ready = time.time() - t0
    if not check(os.path.exists(ep_file), f"e. two-model serve job {jid} wrote {os.path.basename(ep_file)}"):
        print(log_of(log)[-3000:])
        return
    with open(ep_file) as f:
        ep = dict(l.split("=", 1) for l in f.read().splitlines() if "=" in l)
    check(ep.get("GS_MODEL_NAMES") == "alpha,beta" and ep.get("GS_MODEL_NAME") == "alpha" and ep.get("GS_ENGINES") == "2"
          and ep.get("GS_MODEL_TPS") == "2,1" and ep.get("GS_MODEL_ENGINES") == "1,1",
          f"e. endpoints: names {ep.get('GS_MODEL_NAMES')} (first {ep.get('GS_MODEL_NAME')}), {ep.get('GS_ENGINES')} "
          f"engines, T {ep.get('GS_MODEL_TPS')}, engines {ep.get('GS_MODEL_ENGINES')}")
    tasks = []
    for k in range(3):
        st = sc.cmd(["scontrol", "show", "step", f"{jid}.{k}"], check=False).stdout
        m = re.search(r"\bTasks=(\d+)", st)
        tasks.append(int(m.group(1)) if m else None)
    check(sorted(t or 0 for t in tasks) == [1, 1, 2], f"e. steps: the coordinator 1 task, alpha's engine 2, beta's 1 ({tasks})")
    code, out = http(ep["GS_HTTP_URL"] + "/models", timeout=20)
    ids = sorted(m.get("id") for m in json.loads(out).get("data", [])) if code == "200" else None
    check(ids == ["alpha", "beta"], f"e. GET /v1/models -> {code}, {ids}")
    for name, want in (("alpha", want_a), ("beta", want_b)):
        code, out = http(ep["GS_HTTP_URL"] + "/completions",
                         {"model": name, "prompt": r["prompt"], "max_tokens": r["max_tokens"], "temperature": 0})
        got = json.loads(out)["choices"][0]["text"] if code == "200" else out[:300]
        check(code == "200" and got == want, f"e. POST /v1/completions model {name} -> {code}, its own model's reference text"
              + ("" if got == want else f" (got {got!r}, want {want!r})"))
    code, out = http(ep["GS_HTTP_URL"] + "/completions", {"model": "gamma", "prompt": "x", "max_tokens": 2}, timeout=20)
    check(code == "404", f"e. POST /v1/completions model gamma (not served) -> {code}")
    scancel_and_check(sc, jid, log, ep_file, [model, model2], 4, "e", "the coordinator, 3 ranks, their srun",
                      f"two-model serve job ready (1 engine x T=2 + 1 x T=1 registered) {ready:.1f} s after sbatch")

    # too few tasks for the models: refused before anything starts (exit status 2)
    log2 = os.path.join(SCRATCH, "e.job-small.log")
    jid2 = sc.sbatch(cwd=SCRATCH, argv=["-n", "2", "-o", log2, SERVE, *models, *common])
    j = sc.wait_job(jid2, 60)
    text = log_of(log2)
    check(j.get("JobState") == "FAILED" and j.get("ExitCode", "").startswith("2:") and "need 3 tasks; the job has 2" in text,
          f"e. 3 tasks asked of a 2-task job: {j.get('JobState')} {j.get('ExitCode')}, {text.strip()[-200:]!r}")

INPUT_ORDER = {}


def main():
    shutil.rmtree(SCRATCH, ignore_errors=True)
    os.makedirs(SCRATCH)
    t_all = time.time()
    model = make_model(GS, TOK, os.path.join(SCRATCH, "model"), "--preset", "tiny", "--seed", "5", "--max-pos", "2048")
    inp_a = os.path.join(SCRATCH, "a.in.jsonl")
    inp_b = os.path.join(SCRATCH, "b.in.jsonl")
    n_a = write_input_a(inp_a)
    n_b = write_input_b(inp_b)

    # references outside Slurm
    ref_a2, _ = reference_mpirun(2, model, inp_a, os.path.join(SCRATCH, "a.ref2.jsonl"))
    ref_b1, ref_b_secs = reference_mpirun(1, model, inp_b, os.path.join(SCRATCH, "b.ref1.jsonl"),
                                          ["--max-seqs", "1", "--ctx", "1024"])
    a_ref1 = os.path.join(SCRATCH, "a.ref1.jsonl")
    p = subprocess.run([GS, "run", "--model", model, "--batch", inp_a, "--out", a_ref1, "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"gemmashard run --batch: {p.stderr[-2000:]}")
    ref_a1 = read_records(a_ref1, "reference gemmashard run --batch")
    check(len(ref_a1) == n_a and len(ref_a2) == n_a, f"references: one record per input line ({n_a})")
    check(any('"finish_reason":"error"' in v for v in ref_a1.values()) and "line-11" in ref_a1,
          "references hold the error records and the generated id line-11")
    # the input order of the ids, assigned as the worker does (line-N for a missing or repeated id)
    with open(inp_a) as f:
        k = 0
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rid = json.loads(line).get("id")
            except ValueError:
                rid = None
            INPUT_ORDER[rid if rid is not None and rid not in INPUT_ORDER else f"line-{no}"] = k
            k += 1

    cluster_dir = os.path.join(SCRATCH, "slurm")
    env = mpi_env()
    try:
        sc = SlurmCluster(cluster_dir, cpus=4, extra_env=env).start()
    except SlurmError as e:
        print(f"FAIL the Slurm cluster could not start here: {e}", flush=True)
        return 1
    try:
        figure(f"cluster: munged + slurmctld + slurmd up, node idle after {sc.startup_s:.1f} s")
        p = sc.cmd(["srun", "--mpi=list"], check=False)
        check("pmix" in (p.stdout + p.stderr), "srun --mpi=list offers pmix")
        for name, fn in (("a", lambda: check_a(sc, model, inp_a, ref_a2)),
                         ("b", lambda: check_b(sc, model, inp_b, ref_b1, ref_b_secs, n_b)),
                         ("c", lambda: check_c(sc, model, inp_a, ref_a1)),
                         ("d", lambda: check_d(sc, model, ref_a2, inp_a)),
                         ("e", lambda: check_e(sc, model, ref_a2, inp_a))):
            try:
                fn()
            except (SlurmError, TimeoutError, RuntimeError, OSError) as e:
                check(False, f"{name}. {type(e).__name__}: {e}")
                for lg in sorted(os.listdir(SCRATCH)):
                    if lg.startswith(name + ".job"):
                        print(f"--- {lg} ---\n{log_of(os.path.join(SCRATCH, lg))[-2500:]}")
    finally:
        sc.stop()
    left = tagged_pids(sc.tag)
    check(not left, f"nothing of the cluster is left running ({left})")
    figure(f"whole test {time.time() - t_all:.1f} s")
    print("\nfigures:\n  " + "\n  ".join(figures))
    for f in failures:
        print("FAIL", f[:3000])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
