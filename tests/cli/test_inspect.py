#!/usr/bin/env python3
"""gemmashard inspect's T x C memory grid against the formula computed here, independently, from
the config (context-parallel.md): per rank and sequence, KV = global layers x ceil(ctx / C) +
sliding layers x min(window, ctx), times max(1, KV heads / T) x head_dim x 2 (K, V) x 2 bytes.
Checks the built-in 27B and 4B shapes (and the 27B row at T = 8 against context-parallel.md's
table: 1.25 GiB / 640 MiB / 320 MiB global + 52 MiB local at 128K), a --model DIR (the tiny
test checkpoint, its config.json read here) and the refusal of bad --tp / --cp.
Usage: test_inspect.py GEMMASHARD TOKENIZER_JSON SCRATCH_DIR"""
import json
import os
import shutil
import subprocess
import sys

GS, TOK, SCRATCH = sys.argv[1], sys.argv[2], sys.argv[3]
GIB = 1024.0 ** 3
failures = []
checks = 0


def check(ok, what):
    global checks
    checks += 1
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def run(*args):
    p = subprocess.run([GS, *args], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def kv(layers, n_global, window, kvh, hd, max_pos, t, c, ctx):
    ctx = min(ctx, max_pos)
    row = max(1, kvh // t) * hd * 2 * 2
    return (n_global * -(-ctx // c) + (layers - n_global) * min(window, ctx)) * row


def grids(out):
    """{title: {(T, C): [kv8k, kv32k, kv128k] in GiB}} from inspect's output (GiB or MiB)."""
    res, cur, scale = {}, None, 1.0
    for line in out.splitlines():
        if "memory per rank on a T x C grid" in line:
            cur = res.setdefault(line.split(":")[0], {})
            scale = 1.0 / 1024 if "(MiB;" in line else 1.0
            continue
        f = line.split()
        if cur is not None and len(f) == 6 and f[0].isdigit() and f[1].isdigit():
            cur[(int(f[0]), int(f[1]))] = [float(x) * scale for x in f[3:]]
    return res


def compare(name, got, shape, tcs, tol=0.0006):
    """tol: GiB, half a unit of the third decimal printed."""
    layers, n_global, window, kvh, hd, max_pos = shape
    check(sorted(got) == sorted(tcs), f"{name}: grid rows {sorted(got)}")
    for (t, c) in tcs:
        want = [kv(layers, n_global, window, kvh, hd, max_pos, t, c, x) / GIB for x in (8192, 32768, 131072)]
        row = got.get((t, c), [None] * 3)
        check(all(g is not None and abs(g - w) <= tol for g, w in zip(row, want)),
              f"{name} T={t} C={c}: {row} vs {[round(w, 3) for w in want]}")


def main():
    rc, out, err = run("inspect")
    g = grids(out)
    check(rc == 0 and len(g) == 2, f"inspect without --model: rc={rc}, {len(g)} grids {err.strip()}")
    all_tc = [(t, c) for t in (1, 2, 4, 8) for c in (1, 2, 4)]
    # 27B: 62 layers, global every 6th (10), window 1024, 16 KV heads x 128; 4B: 34 layers (5 global),
    # 4 KV heads x 256 (gemma3.md section 1).
    s27, s4 = (62, 10, 1024, 16, 128, 131072), (34, 5, 1024, 4, 256, 131072)
    for title, rows in g.items():
        compare(title, rows, s27 if "27B" in title else s4, all_tc)
    # context-parallel.md's table (T = 8, 128K): global 1.25 GiB / 640 MiB / 320 MiB, local 52 MiB.
    t27 = next((rows for title, rows in g.items() if "27B" in title), {})
    for c, glob in ((1, 1.25 * GIB), (2, 640 * 2 ** 20), (4, 320 * 2 ** 20)):
        want = (glob + 52 * 2 ** 20) / GIB
        got = t27.get((8, c), [0, 0, 0])[2]
        check(abs(got - want) <= 0.0006, f"27B T=8 C={c} 128K: {got} GiB vs context-parallel.md {want:.3f}")

    rc, out, err = run("inspect", "--tp", "8", "--cp", "2")
    g = grids(out)
    for title, rows in g.items():
        compare(title + " (--tp 8 --cp 2)", rows, s27 if "27B" in title else s4, [(8, 2)])

    d = os.path.join(SCRATCH, "tiny")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(SCRATCH, exist_ok=True)
    rc, out, err = run("make-test-model", "--out", d, "--tokenizer", TOK, "--preset", "tiny", "--vocab", "1024")
    check(rc == 0, f"make-test-model: {err.strip()}")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg = cfg.get("text_config", cfg)
    layers = cfg["num_hidden_layers"]
    if "layer_types" in cfg:
        n_global = sum(1 for x in cfg["layer_types"] if x == "full_attention")
    else:
        n_global = sum(1 for i in range(layers) if (i + 1) % cfg.get("sliding_window_pattern", 6) == 0)
    shape = (layers, n_global, cfg["sliding_window"], cfg["num_key_value_heads"], cfg["head_dim"],
             cfg["max_position_embeddings"])
    rc, out, err = run("inspect", "--model", d, "--no-tensors", "--cp", "2")
    g = grids(out)
    check(rc == 0 and len(g) == 1, f"inspect --model: rc={rc} {err.strip()}")
    for title, rows in g.items():
        compare("tiny " + title, rows, shape, [(t, 2) for t in (1, 2, 4, 8) if (t, 2) in rows], 0.0006 / 1024)
        check(len(rows) >= 1 and min(min(r) for r in rows.values()) > 0.001 / 1024,
              f"tiny: valid T rows with nonzero KV in MiB: {rows}")

    for bad in (["--cp", "-1"], ["--tp", "-2"], ["--cp", "5000"]):
        rc, out, err = run("inspect", *bad)
        check(0 < rc < 128 and bad[0] in err, f"inspect {' '.join(bad)} refused: rc={rc} {err.strip()}")

    print(f"{checks} checks, {len(failures)} failures")
    for f in failures:
        print("FAIL", f)
    return 1 if failures or checks == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
