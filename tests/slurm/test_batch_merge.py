#!/usr/bin/env python3
"""gemmashard batch-merge (the merge step of a batch job array) and gemmashard-worker
--batch-split, without Slurm (slurm_jobs runs a real split and merge and compares it with a
single run):

  1. merge rules on hand-made parts: identical repeats kept once, input order (without --input:
     order of first appearance); two different records for one id -> exit 4; an id of no part
     -> exit 3 naming it; an id not in the input -> exit 4; a torn last line or a line that is
     not a record -> exit 1 naming file and line; OUT equal to a part -> exit 2; in every
     failure OUT is not written and no record text is printed;
  2. --batch-split refuses malformed values and use without --batch, naming the flag.

usage: test_batch_merge.py GEMMASHARD WORKER SCRATCH"""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tp"))
from tp_common import mpi_env  # noqa: E402

GS, WORKER, SCRATCH = sys.argv[1:4]
SECRET = "PATIENT-TEXT-7f3a"  # record text that must never show up in a message
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)
    return ok


def merge(*args):
    p = subprocess.run([GS, "batch-merge", *args], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stderr


def rec(rid, text=SECRET, fin="length"):
    return json.dumps({"id": rid, "text": text, "finish_reason": fin,
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
                      separators=(",", ":"))


def write(path, lines, end="\n"):
    with open(path, "w") as f:
        f.write("\n".join(lines) + (end if lines else ""))
    return path


def rules():
    d = os.path.join(SCRATCH, "rules")
    os.makedirs(d)
    inp = write(os.path.join(d, "in.jsonl"), [json.dumps({"id": i, "prompt": "x"}) for i in ("a", "b", "c", "d")])
    p1 = write(os.path.join(d, "p1"), [rec("c"), rec("a")])
    p2 = write(os.path.join(d, "p2"), [rec("b"), "", rec("d"), rec("a")])  # a: identical repeat
    out = os.path.join(d, "out.jsonl")
    rc, err = merge("--input", inp, out, p1, p2)
    got = [json.loads(l)["id"] for l in open(out)] if os.path.exists(out) else []
    check(rc == 0 and got == ["a", "b", "c", "d"] and "1 identical repeats dropped" in err,
          f"identical repeat kept once, input order -> exit {rc}, {got}")
    rc, err = merge(os.path.join(d, "out2.jsonl"), p2, p1)
    got = [json.loads(l)["id"] for l in open(os.path.join(d, "out2.jsonl"))]
    check(rc == 0 and got == ["b", "d", "a", "c"], f"without --input: order of first appearance ({got})")

    def refused(args, want_rc, want_msg, what):
        if os.path.exists(out):
            os.remove(out)
        rc, err = merge(*args)
        check(rc == want_rc and want_msg in err and not os.path.exists(out) and SECRET not in err,
              f"{what} -> exit {rc}: {err.strip().splitlines()[0] if err.strip() else ''}")

    conflict = write(os.path.join(d, "conflict"), [rec("a", "other text")])
    refused(["--input", inp, out, p1, p2, conflict], 4, 'id "a"', "two different records for one id")
    refused(["--input", inp, out, p1], 3, 'id "b" (input line 2) is in no part', "ids missing")
    extra = write(os.path.join(d, "extra"), [rec("zz")])
    refused(["--input", inp, out, p1, p2, extra], 4, 'id "zz"', "an id that is not in the input")
    torn = write(os.path.join(d, "torn"), [rec("b"), rec("d")[:20]], end="")
    refused(["--input", inp, out, p1, torn], 1, "torn:2: the last line is incomplete", "a torn last line")
    foreign = write(os.path.join(d, "foreign"), [rec("b"), json.dumps({"id": "d", "prompt": SECRET})])
    refused(["--input", inp, out, p1, foreign], 1, "foreign:2: not a batch result record", "a line that is not a record")
    refused([p1, p1, p2], 2, "is also one of the parts", "OUT is one of the parts")


def split_flag():
    env = mpi_env()
    # MPI keeps allocations LeakSanitizer cannot attribute (tests/run.sh runs every mpirun test
    # without leak checking); the merge tool above is leak-checked
    if "ASAN_OPTIONS" in env:
        env["ASAN_OPTIONS"] += ":detect_leaks=0"
    model = os.path.join(SCRATCH, "model")  # never read: arguments are checked first
    for bad in ("3/3", "1/2x"):
        p = subprocess.run([WORKER, "--model", model, "--batch", "/dev/null", "--out", os.path.join(SCRATCH, "x"),
                            "--batch-split", bad], capture_output=True, text=True, env=env, timeout=60)
        check(p.returncode == 2 and f'--batch-split wants K/N with 0 <= K < N (e.g. 2/8), got "{bad}"' in p.stderr,
              f"--batch-split {bad} refused (exit {p.returncode})")
    p = subprocess.run([WORKER, "--model", model, "--tokens", "2,3", "--batch-split", "1/2"], capture_output=True,
                       text=True, env=env, timeout=60)
    check(p.returncode == 2 and "--batch-split needs --batch" in p.stderr, "--batch-split without --batch refused")


def main():
    shutil.rmtree(SCRATCH, ignore_errors=True)
    os.makedirs(SCRATCH)
    rules()
    split_flag()
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
