#!/usr/bin/env python3
"""Structured output at T = 2 (real mpirun ranks, the worker's --batch mode): the 40 schemas of
tests/unit/grammar_cases.h x 2 seeds (temperature 1, top_k 20: distributed sampling is exact
and bit-identical across T for top_k <= K, docs/ARCHITECTURE.md §3) as batch lines with response_format (plus guided_choice and
structured_outputs lines), at T = 1 and T = 2 on the tiny random-weight model. Every rank
compiles the schema from the step plan and masks its own vocabulary slice, so the outputs must
be identical, text for text; each finished one parses and validates (python's jsonschema when
importable, otherwise that part says Skipped), each cut one (finish_reason length) is not a
complete document. Unsupported keywords come back as error records naming the keyword.
Regular expressions (guided_regex, structured_outputs.regex, response_format regex): every
finished output fullmatches its pattern by python's re (re.ASCII), every cut one is a prefix of
some match by the `regex` module's partial matching (python3-regex; Skipped when absent).

usage: test_structured_tp.py GEMMASHARD WORKER MPIRUN TOKENIZER SCRATCH"""
import ast
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tp"))
from tp_common import make_model, mpirun  # noqa: E402

GS, WORKER, MPIRUN, TOK, SCRATCH = sys.argv[1:6]
os.makedirs(SCRATCH, exist_ok=True)
try:
    import jsonschema
except ImportError:
    jsonschema = None
try:
    import regex as partial_re
except ImportError:
    partial_re = None

# (pattern, max_tokens): short caps on some so that cut outputs are checked too
REGEXES = [(r"\d{3}-\d{4}", 16), (r"(yes|no|maybe)", 8), (r"[A-Z][a-z]{2,8}( [A-Z][a-z]{2,8})?", 16),
           (r"-?\d{1,4}(\.\d{1,2})?", 12), (r"[^\n]{4,40}\.", 24), (r"\w+@\w+\.(com|org)", 24),
           (r"(ab|cd)+e", 6), (r"[α-ω]{2,6}", 12), (r"\((\d\d?, ){2}\d\)", 20), (r"[a-f0-9]{8}", 4)]

# The schema list, read from the C header the in-process tests use (one source of truth).
src = open(os.path.join(os.path.dirname(__file__), "..", "unit", "grammar_cases.h")).read()
block = src[src.index("SCHEMAS[] = {"):src.index("};", src.index("SCHEMAS[] = {"))]
schemas = [json.loads(ast.literal_eval(m)) for m in re.findall(r'^\s*("(?:[^"\\]|\\.)*"),\s*$', block, re.M)]
if len(schemas) != 40:
    sys.exit(f"FAIL: read {len(schemas)} schemas from grammar_cases.h, want 40")

model = make_model(GS, TOK, os.path.join(SCRATCH, "model"), "--preset", "tiny", "--seed", "5")
lines = []
for i, s in enumerate(schemas):
    for seed in range(2):
        lines.append({"id": f"s{i}-{seed}", "prompt": f"Record {i}:", "max_tokens": 32, "temperature": 1.0,
                      "top_k": 20, "seed": seed, "response_format": {"type": "json_schema",
                                                        "json_schema": {"name": f"s{i}", "schema": s,
                                                                        "strict": True}}})
lines.append({"id": "obj", "prompt": "x", "max_tokens": 32, "temperature": 0,
              "response_format": {"type": "json_object"}})
lines.append({"id": "choice", "prompt": "x", "max_tokens": 8, "seed": 3, "top_k": 20, "guided_choice": ["yes", "no", "unsure"]})
lines.append({"id": "so", "prompt": "y", "max_tokens": 8, "seed": 4, "top_k": 20,
              "structured_outputs": {"choice": ["alpha", "beta"]}})
for i, (p, mt) in enumerate(REGEXES):
    for seed in range(2):
        form = i % 3
        field = ({"guided_regex": p} if form == 0 else {"structured_outputs": {"regex": p}} if form == 1
                 else {"response_format": {"type": "regex", "regex": p}})
        lines.append(dict({"id": f"r{i}-{seed}", "prompt": f"Value {i}:", "max_tokens": mt, "temperature": 1.0,
                           "top_k": 20, "seed": seed}, **field))
bad = {"bad-pattern": ({"response_format": {"type": "json_schema", "json_schema": {
          "name": "b", "schema": {"type": "string", "pattern": "^a"}}}}, "unsupported keyword 'pattern'"),
       "bad-regex": ({"guided_regex": "(a)\\1"}, "guided_regex: response_format.regex: backreference"),
       "bad-grammar": ({"guided_grammar": "root ::= x"}, "guided_grammar is not supported"),
       "bad-two": ({"response_format": {"type": "json_object"}, "guided_choice": ["a"]},
                   "response_format and guided_choice: give one of them")}
for k, (extra, _) in bad.items():
    lines.append(dict({"id": k, "prompt": "z", "max_tokens": 4}, **extra))
inp = os.path.join(SCRATCH, "in.jsonl")
with open(inp, "w") as f:
    f.writelines(json.dumps(x) + "\n" for x in lines)


def run(np_):
    out = os.path.join(SCRATCH, f"out-t{np_}.jsonl")
    if os.path.exists(out):
        os.remove(out)
    rc, _, err, secs = mpirun(MPIRUN, np_, [WORKER, "--model", model, "--batch", inp, "--out", out,
                                            "--max-seqs", "16", "--ctx", "128", "--threads", "1"])
    if rc != 0:
        sys.exit(f"FAIL T={np_}: worker exit {rc}\n{err[-3000:]}")
    with open(out) as f:
        res = {r["id"]: r for r in map(json.loads, f)}
    print(f"T={np_}: {secs:.1f} s, {len(res)} records")
    return res


def text_of(r):
    return r.get("text"), r.get("finish_reason")


fails = []
t1, t2 = run(1), run(2)
if len(t1) != len(lines):
    fails.append(f"T=1: {len(t1)} records for {len(lines)} lines")
diff = [k for k in t1 if json.dumps(t1[k], sort_keys=True) != json.dumps(t2.get(k), sort_keys=True)]
if diff:
    fails.append(f"T=2 differs from T=1 in {len(diff)} records: {diff[:5]}")
n_valid = n_cut = 0
for i, s in enumerate(schemas):
    for seed in range(2):
        r = t1.get(f"s{i}-{seed}")
        if r is None or r.get("error"):
            fails.append(f"s{i}-{seed}: {r and r.get('error')}")
            continue
        txt, fin = text_of(r)
        if fin == "stop":
            try:
                doc = json.loads(txt)
            except ValueError:
                fails.append(f"s{i}-{seed}: not JSON: {txt!r}")
                continue
            if jsonschema is not None:
                try:
                    jsonschema.validate(doc, s)
                except jsonschema.ValidationError as ex:
                    fails.append(f"s{i}-{seed}: invalid: {txt!r}: {ex.message}")
            n_valid += 1
        elif fin == "length":
            try:
                json.loads(txt)
                complete = True
            except ValueError:
                complete = False
            if complete and not re.fullmatch(r"-?\d+(\.\d+)?([eE][+-]?\d+)?", txt or ""):
                fails.append(f"s{i}-{seed}: cut by length but a complete document: {txt!r}")
            n_cut += 1
        else:
            fails.append(f"s{i}-{seed}: finish_reason {fin}")
if jsonschema is None:
    print("Skipped: jsonschema validation (python module absent); parsed only")
txt, fin = text_of(t1.get("obj", {}))
if fin == "stop":
    try:
        if not isinstance(json.loads(txt), dict):
            fails.append(f"json_object gave a non-object: {txt!r}")
    except ValueError:
        fails.append(f"json_object: not JSON: {txt!r}")
for k, allowed in (("choice", ("yes", "no", "unsure")), ("so", ("alpha", "beta"))):
    txt, fin = text_of(t1.get(k, {}))
    if fin != "stop" or txt not in allowed:
        fails.append(f"{k}: {txt!r} ({fin}) not one of {allowed}")
n_rx_stop = n_rx_cut = 0
for i, (p, _) in enumerate(REGEXES):
    for seed in range(2):
        r = t1.get(f"r{i}-{seed}")
        if r is None or r.get("error"):
            fails.append(f"r{i}-{seed}: {r and r.get('error')}")
            continue
        txt, fin = text_of(r)
        if fin == "stop":
            n_rx_stop += 1
            if not re.fullmatch(p, txt, re.ASCII):
                fails.append(f"r{i}-{seed}: {txt!r} does not fullmatch {p!r}")
        elif fin == "length":
            n_rx_cut += 1
            if partial_re is not None and not partial_re.fullmatch(p, txt, partial_re.ASCII, partial=True):
                fails.append(f"r{i}-{seed}: cut output {txt!r} is not a prefix of a match of {p!r}")
        else:
            fails.append(f"r{i}-{seed}: finish_reason {fin}")
if partial_re is None:
    print("Skipped: prefix check of cut regex outputs (python3-regex absent)")
print(f"regex: {n_rx_stop} outputs fullmatch their pattern (python re), {n_rx_cut} cut by max_tokens")
if n_rx_stop < 10:
    fails.append(f"only {n_rx_stop} regex outputs finished: too few to check")
for k, (_, want) in bad.items():
    err = json.dumps(t1.get(k, {}).get("error"))
    if want not in err:
        fails.append(f"{k}: error {err} does not say {want!r}")
print(f"{n_valid} documents valid, {n_cut} cut by max_tokens, T=2 == T=1 on {len(t1) - len(diff)} records")
for f_ in fails:
    print("FAIL", f_)
print(f"{len(fails)} failures")
sys.exit(1 if fails else 0)
