#!/usr/bin/env python3
"""Offline batch mode through the serving engine, with real processes:
  1. batch invariance: every request's output is identical whether requests run one at a time
     (--max-seqs 1, small prefill chunks) or 64 at a time, at T = 1 and at T = 2 (mpirun); and
     identical on the device path without a GPU (--device cpu-staged) at T = 1 and 2;
  2. resume: SIGKILL a run midway, rerun with the same --out: every id exactly once, same
     content as the uninterrupted run, no torn line;
  3. malformed lines become error records and the rest continue.

usage: test_batch.py GEMMASHARD WORKER MPIRUN TOKENIZER SCRATCH"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tp"))
from tp_common import kill_session, make_model, mpi_env, mpirun  # noqa: E402

GS, WORKER, MPIRUN, TOK, SCRATCH = sys.argv[1:6]
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def write_input(path):
    lines = []
    topics = ["hypertension", "metformin 500 mg BID", "troponin negative chest pain", "CKD stage 3",
              "sepsis bundle", "warfarin INR 3.2", "pediatric fever", "asthma exacerbation"]
    for i in range(72):
        t = topics[i % len(topics)]
        req = {"id": f"q{i:03d}", "max_tokens": 3 + (i * 7) % 22}
        if i % 3 == 0:
            req["prompt"] = f"Clinical note {i}: {t}. Assessment:"
        else:
            req["messages"] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Explain {t} ({i})."}]
        if i % 2:
            req["temperature"] = 0
        else:
            req.update(temperature=0.8, top_k=40, top_p=0.95, seed=1000 + i)
        if i % 5 == 0:
            req["stop"] = ["e"]           # random weights: 'e' shows up soon, exercising stop strings
        if i % 11 == 0:
            req.update(logprobs=True, top_logprobs=3)
        lines.append(json.dumps(req))
    # n > 1 (issue 16): choice i must equal the n = 1 line with seed + i
    nreq = {"prompt": "Clinical note: sepsis bundle started. Assessment:", "max_tokens": 6, "temperature": 0.9,
            "top_k": 40, "logprobs": True, "top_logprobs": 2}
    lines.append(json.dumps({"id": "n3", "n": 3, "seed": 4000, **nreq}))
    lines += [json.dumps({"id": f"n3-s{i}", "seed": 4000 + i, **nreq}) for i in range(3)]
    lines.append(json.dumps({"id": "n2g", "n": 2, **nreq, "temperature": 0}))
    lines.append(json.dumps({"id": "n2g-s", **nreq, "temperature": 0}))
    # Malformed lines: each must become an error record.
    lines += [
        '{"id": "bad-json", "prompt": "x"',
        json.dumps({"id": "bad-type", "prompt": 5}),
        json.dumps({"id": "bad-max", "prompt": "x", "max_tokens": -3}),
        json.dumps({"id": "bad-roles", "messages": [{"role": "assistant", "content": "hi"}]}),
        json.dumps({"id": "bad-empty", "messages": []}),
        json.dumps({"id": "bad-top-p", "prompt": "x", "top_p": 1.5}),
        json.dumps({"id": "too-long", "prompt": "word " * 3000, "max_tokens": 10}),
        json.dumps({"id": "bad-n", "prompt": "x", "n": 9}),
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return [json.loads(l)["id"] if l.startswith("{") and l.endswith("}") else None for l in lines]


def read_out(path):
    recs = {}
    with open(path, "rb") as f:
        data = f.read()
    check(data.endswith(b"\n"), f"{os.path.basename(path)} ends with a complete line")
    for line in data.decode("utf-8").splitlines():
        r = json.loads(line)
        if r["id"] in recs:
            failures.append(f"duplicate id {r['id']} in {path}")
        recs[r["id"]] = r
    return recs


def run_batch(np_, model, inp, out, extra=(), timeout=900):
    if os.path.exists(out):
        os.remove(out)
    argv = [WORKER, "--model", model, "--batch", inp, "--out", out, "--ctx", "2048", *extra]
    rc, so, se, secs = mpirun(MPIRUN, np_, argv, timeout=timeout)
    if rc != 0:
        failures.append(f"batch run np={np_} {extra}: rc={rc}\n{se[-3000:]}")
    return secs


def main():
    os.makedirs(SCRATCH, exist_ok=True)
    model = make_model(GS, TOK, os.path.join(SCRATCH, "model"), "--preset", "tiny", "--seed", "3", "--max-pos", "2048")
    inp = os.path.join(SCRATCH, "in.jsonl")
    ids = write_input(inp)
    good = [i for i in ids if i and not i.startswith("bad") and i not in ("too-long", "n3", "n2g")]

    outs = {}
    for np_ in (1, 2):
        for mode, extra in (("together", ["--max-seqs", "64", "--max-batch-tokens", "96"]),
                            ("alone", ["--max-seqs", "1", "--max-batch-tokens", "7"])):
            path = os.path.join(SCRATCH, f"out.np{np_}.{mode}.jsonl")
            secs = run_batch(np_, model, inp, path, extra + ["--threads", "1"])
            outs[(np_, mode)] = read_out(path) if os.path.exists(path) else {}
            print(f"np={np_} {mode}: {len(outs[(np_, mode)])} records in {secs:.1f} s")

    # The device path without a GPU (--device cpu-staged: weights, KV and index arrays in
    # "device" memory, sampling candidates made by the backend's op, not the host sampler): the
    # same records as the CPU backend at the same T, logprobs included.
    for np_ in (1, 2):
        path = os.path.join(SCRATCH, f"out.np{np_}.staged.jsonl")
        secs = run_batch(np_, model, inp, path, ["--max-seqs", "64", "--max-batch-tokens", "96", "--threads", "1",
                                                  "--device", "cpu-staged"])
        outs[(np_, "staged")] = read_out(path) if os.path.exists(path) else {}
        print(f"np={np_} staged: {len(outs[(np_, 'staged')])} records in {secs:.1f} s")

    ref = outs[(1, "together")]
    check(len(ref) == len(ids), f"T=1: one record per input line ({len(ref)} of {len(ids)})")
    for i in good:
        r = ref.get(i, {})
        if not ("text" in r and r.get("finish_reason") in ("stop", "length")):
            failures.append(f"{i}: not completed: {r}")
    bad_json_id = f"line-{ids.index(None) + 1}"  # an unparsable line has no id of its own
    for bad in ("bad-json", "bad-type", "bad-max", "bad-roles", "bad-empty", "bad-top-p", "too-long", "bad-n"):
        want = bad_json_id if bad == "bad-json" else bad
        errs = [r for r in ref.values() if r.get("finish_reason") == "error" and r["id"] == want]
        check(len(errs) == 1, f"malformed line {bad} -> one error record"
              + (f": {errs[0]['error']['message']}" if errs else ""))
    check(any("stop" in json.loads(l) for l in open(inp) if l.startswith("{\"id\": \"q000\"")), "stop strings present")
    check(ref["q011"].get("logprobs") is not None and len(ref["q011"]["logprobs"]["token_logprobs"]) ==
          ref["q011"]["usage"]["completion_tokens"], "logprobs reported per token")
    for np_ in (1, 2):
        a, b = outs[(np_, "together")], outs[(np_, "alone")]
        diff = [i for i in good if a.get(i) != b.get(i)]
        check(not diff and len(a) == len(b) == len(ids),
              f"T={np_}: every request identical alone and among 64 others ({len(good) - len(diff)}/{len(good)})")

    # n > 1: choice i is the n = 1 line with seed + i (text, finish, logprobs), usage summed;
    # with --max-seqs 1 the 3 choices can never be admitted together: an error record
    def choice_of(r):
        return {k: r.get(k) for k in ("text", "finish_reason", "logprobs")}
    for key in ((1, "together"), (2, "together"), (1, "staged"), (2, "staged")):
        o = outs[key]
        n3, n2g = o.get("n3", {}), o.get("n2g", {})
        singles = [o.get(f"n3-s{i}", {}) for i in range(3)]
        ch = [{k: c.get(k) for k in ("text", "finish_reason", "logprobs")} for c in n3.get("choices", [])]
        check(ch == [choice_of(x) for x in singles] and [c.get("index") for c in n3.get("choices", [])] == [0, 1, 2]
              and choice_of(n3) == ch[0] and len({x.get("text") for x in singles}) > 1 and
              n3.get("usage", {}).get("prompt_tokens") == singles[0].get("usage", {}).get("prompt_tokens") and
              n3.get("usage", {}).get("completion_tokens") ==
              sum(x.get("usage", {}).get("completion_tokens", 0) for x in singles),
              f"T={key[0]} {key[1]}: n=3 choice i equals n=1 with seed + i, usage summed")
        check([choice_of(c) for c in n2g.get("choices", [])] == [choice_of(o.get("n2g-s", {}))] * 2,
              f"T={key[0]} {key[1]}: greedy n=2 gives two choices equal to n=1")
    for np_ in (1, 2):
        e = outs[(np_, "alone")].get("n3", {})
        check(e.get("finish_reason") == "error" and "n = 3" in e.get("error", {}).get("message", ""),
              f"T={np_} --max-seqs 1: n=3 is an error record ({e.get('error')})")

    for np_ in (1, 2):
        a, b = outs[(np_, "together")], outs[(np_, "staged")]
        diff = [i for i in good if a.get(i) != b.get(i)]
        check(not diff and len(a) == len(b) == len(ids),
              f"T={np_}: the device path (cpu-staged, candidates on the backend) gives every record of the CPU "
              f"backend ({len(good) - len(diff)}/{len(good)}{', first ' + diff[0] if diff else ''})")

    # Resume after SIGKILL (T=1, one request at a time so the kill lands mid-run).
    out = os.path.join(SCRATCH, "out.resume.jsonl")
    if os.path.exists(out):
        os.remove(out)
    argv = [WORKER, "--model", model, "--batch", inp, "--out", out, "--ctx", "2048", "--max-seqs", "1",
            "--max-batch-tokens", "7", "--threads", "1"]
    p = subprocess.Popen([MPIRUN, "--allow-run-as-root", "-np", "1", *argv], env=mpi_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 300:
        n = sum(1 for _ in open(out)) if os.path.exists(out) else 0
        if n >= 20:
            break
        time.sleep(0.05)
    # mpirun puts each rank in a process group of its own (same session): kill the whole
    # session, as a node failure would, and wait until no process of it is left holding the
    # output file's lock.
    kill_session(p.pid)
    p.wait()
    n_before = sum(1 for _ in open(out))
    check(20 <= n_before < len(ids), f"killed midway with {n_before} of {len(ids)} records written")
    rc, so, se, secs = mpirun(MPIRUN, 1, argv, timeout=900)
    check(rc == 0, f"resumed run exits 0 (rc {rc}: {se.strip()[-600:]})")
    resumed = read_out(out)
    check(len(resumed) == len(ids), f"resumed file has every id exactly once ({len(resumed)})")
    diff = [i for i in ids if i and resumed.get(i) != outs[(1, "alone")].get(i)]
    check(not diff, f"resumed content equals the uninterrupted run ({len(diff)} differ)")

    for f in failures:
        print("FAIL", f[:2000])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
