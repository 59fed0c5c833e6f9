#!/usr/bin/env python3
"""Image tokens in the decoder at T = 1, 2, 4 (real mpirun) against the float64 references.

The checkpoint is `make-test-model --preset tiny-vision` (4 soft tokens per image, window 8) or a
variant. The prompt's <start_of_image> markers (255999) become 108, 255999, N x 262144, 256000, 108
(the recipe of `gemmashard logits --image`); the images are random preprocessed RGB files. The
reference is independent: siglip_ref.py's float64 tower and projector, then gemma3_ref.py's decoder
with the projector rows in place of the image tokens (unscaled) and the bidirectional image block
(spec 4.4, 4.5). Every position of every run (gemmashard-worker --tokens --image --dump-logits
under mpirun, and `gemmashard logits --image`) must be within 1e-4 relative L2; runs with --chunk
put chunk boundaries next to and across the images (an image goes whole into one chunk); greedy
tokens agree across T. Power checks: breaking one image rule in the reference moves the logits by
more than 1e-2 on this very checkpoint.
CASE gpu_NAME: only `gemmashard logits --device cuda` runs of case NAME, within 5e-3 (the bf16 paths
of the GPU, as gpu_reference_*); exit 77 (skipped) without an NVIDIA GPU.

usage: test_tp_images.py CASE GEMMASHARD WORKER MPIRUN TOKENIZER SCRATCH"""
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.dont_write_bytecode = True
import gemma3_ref as R  # noqa: E402
from tp_common import make_model, mpirun, rel_l2_rows  # noqa: E402

CASE, GS, WORKER, MPIRUN, TOK, SCRATCH = sys.argv[1:7]
TOL = 1e-4
POWER_MIN = 1e-2
BOI, EOI, IMG, NL2 = 255999, 256000, 262144, 108

# flags: make-test-model; text: token counts between markers; runs: (T, --chunk or None);
# cli: --chunk values for `gemmashard logits`; power: reference perturbations that must show.
CASES = {
    "one_image": dict(flags=["--preset", "tiny-vision", "--seed", "31"], text=[6, 9],
                      runs=[(1, None), (2, 3), (4, None)], cli=[None, 1],
                      power=["image_causal", "image_scaled"]),
    "two_images": dict(flags=["--preset", "tiny-vision", "--seed", "32"], text=[3, 2, 7],
                       runs=[(1, 5), (2, None), (4, 5)], cli=[None],
                       power=["image_causal", "image_scaled"]),
    # 16 soft tokens per image, window 8: a sliding layer's query sees its image's keys beyond the window
    "long_image": dict(flags=["--preset", "tiny-vision", "--seed", "33", "--vision-mm-tokens", "16"], text=[12, 5],
                       runs=[(2, 7)], cli=[None, 7],
                       power=["image_causal", "image_window"]),
}


def expand(ids, mm):
    out = []
    for t in ids:
        out += [NL2, BOI] + [IMG] * mm + [EOI, NL2] if t == BOI else [t]
    return out


def main():
    global TOL
    name, device = CASE, None
    if CASE.startswith("gpu_"):
        name, device, TOL = CASE[4:], "cuda", 5e-3
        if not any(os.path.exists("/dev/nvidia%d" % i) for i in range(16)):
            print("SKIP: no NVIDIA GPU on this machine (/dev/nvidia*)")
            return 77
    case = dict(CASES[name])
    if device:
        case["runs"] = []
    os.makedirs(SCRATCH, exist_ok=True)
    d = make_model(GS, TOK, os.path.join(SCRATCH, CASE), *case["flags"])
    import siglip_ref
    v = siglip_ref.load_vision(d)
    S, mm = v["cfg"]["S"], v["cfg"]["mm"]
    rng = np.random.default_rng(7)
    marked = [2]
    files = []
    for k, n_text in enumerate(case["text"]):
        marked += [int(x) for x in rng.integers(3, 200000, size=n_text)]
        if k + 1 < len(case["text"]):
            marked.append(BOI)
            f = os.path.join(SCRATCH, f"{CASE}.img{k}.rgb")
            rng.integers(0, 256, size=S * S * 3, dtype=np.uint8).tofile(f)
            files.append(f)
    ids = expand(marked, mm)
    n = len(ids)

    t0 = time.time()
    model = R.load_model(d)
    rows = np.concatenate([siglip_ref.encode(v, np.fromfile(f, dtype=np.uint8).reshape(S, S, 3)) for f in files])
    ref = R.forward(model, ids, image_rows=rows, image_token_id=IMG)
    print(f"{CASE}: {len(files)} images of {mm} tokens, {n} positions; float64 reference {time.time() - t0:.1f} s")
    failures = []
    for p in case["power"]:
        alt = R.forward(model, ids, perturb=p, image_rows=rows, image_token_id=IMG)
        pw = rel_l2_rows(alt, ref).max()
        print(f"  power check {p}: the reference moves by {pw:.3e}")
        if not pw > POWER_MIN:
            failures.append(f"power check {p}: only {pw:.3e} (the case cannot see that mistake)")

    toks, gens = ",".join(map(str, marked)), {}
    for T, chunk in case["runs"]:
        out = os.path.join(SCRATCH, f"{CASE}.tp{T}.c{chunk}.f32")
        argv = [WORKER, "--model", d, "--tokens", toks, "--image", ",".join(files), "--dump-logits", out,
                "--generate", "8", "--threads", "1"] + (["--chunk", str(chunk)] if chunk else [])
        rc, so, se, secs = mpirun(MPIRUN, T, argv)
        if rc != 0:
            failures.append(f"T={T} chunk={chunk}: rc={rc}\n{se[-2000:]}")
            continue
        lg = np.fromfile(out, dtype=np.float32).reshape(n, -1).astype(np.float64)
        e = rel_l2_rows(lg, ref).max()
        gens[(T, chunk)] = so.split()
        print(f"  T={T} chunk={chunk}: max rel L2 vs float64 reference {e:.3e} ({secs:.1f} s)")
        if not e <= TOL:
            failures.append(f"T={T} chunk={chunk}: rel L2 {e:.3e} > {TOL:.0e}")
    first = next(iter(gens.values()), None)
    for k, g in gens.items():
        if g != first or len(g) != 8:
            failures.append(f"greedy tokens of {k} differ: {g} vs {first}")
    for chunk in case["cli"]:
        out = os.path.join(SCRATCH, f"{CASE}.cli.c{chunk}.f32")
        cmd = [GS, "logits", "--model", d, "--tokens", toks, "--image", ",".join(files), "--out", out]
        cmd += ["--chunk", str(chunk)] if chunk else []
        p = subprocess.run(cmd + (["--device", device] if device else []), capture_output=True, text=True)
        if p.returncode != 0:
            failures.append(f"gemmashard logits chunk={chunk}: {p.stderr}")
            continue
        e = rel_l2_rows(np.fromfile(out, dtype=np.float32).reshape(n, -1).astype(np.float64), ref).max()
        print(f"  gemmashard logits chunk={chunk}: max rel L2 {e:.3e}")
        if not e <= TOL:
            failures.append(f"gemmashard logits chunk={chunk}: rel L2 {e:.3e} > {TOL:.0e}")
    # a marker/image count mismatch is refused with a message
    p = subprocess.run([GS, "logits", "--model", d, "--tokens", toks + f",{BOI}", "--image", ",".join(files),
                        "--out", os.path.join(SCRATCH, "x.f32")], capture_output=True, text=True)
    if p.returncode == 0 or "markers but --image gives" not in p.stderr:
        failures.append(f"marker/image mismatch not refused: rc={p.returncode} {p.stderr}")
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
