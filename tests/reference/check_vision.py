#!/usr/bin/python3
"""Vision tower + projector parity: `gemmashard vision-embed` against the float64 reference
(siglip_ref.py) on generated Gemma3ForConditionalGeneration checkpoints, for random RGB images,
at T = 1 (plain CPU and the staged device path) and under real mpirun at T = 2 (and 4 where the
case says so): relative L2 of each image's rows within --rel-l2-max (default 1e-4; ctest passes
1e-5: the fp32 engine measures ~2e-7).

Negative controls prove the criterion sees a mistake: the reference with one rule broken
(erf GELU, pooled tokens in column order, RMSNorm without its 1 + w, no position embeddings)
must be farther than the tolerance from the engine. Bad inputs: an image file of the wrong size
and a text-only model get a non-zero exit naming the problem.

usage: check_vision.py --gemmashard BIN --mpirun MPIRUN --tokenizer TOK --workdir DIR --case NAME"""
import argparse
import math
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import siglip_ref  # noqa: E402

TINY = ["--preset", "tiny-vision", "--seed", "7"]
CASES = {
    # 4 x 4 patches pooled 2 x 2 to 4 tokens; original tensor names
    "orig": {"args": TINY, "tp": [2]},
    # the transformers >= 4.52 names
    "new": {"args": TINY + ["--names", "new"], "tp": [2]},
    # 8 x 8 patches pooled 4 x 4 (the real kernel size), head_dim 12, 3 layers, 3 files, T = 4 too
    "pool4": {"args": TINY + ["--vision-image-size", "112", "--vision-mm-tokens", "4", "--vision-hidden", "48",
                              "--vision-intermediate", "96", "--vision-layers", "3", "--shards", "3"],
              "tp": [2, 4]},
}


def mpi_env():
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_mpi_yield_when_idle="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none", OMPI_MCA_btl="self,vader",
               OMPI_MCA_oob_tcp_if_include="lo")
    return env


def run(cmd, what, env=None, expect_fail=False):
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if (p.returncode != 0) != expect_fail:
        sys.exit("FAIL: %s: exit %d\n%s\n%s" % (what, p.returncode, " ".join(cmd), p.stderr[-3000:]))
    print("  %-44s %.1f s" % (what, time.time() - t0))
    return p


def rel_l2(got, ref):
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def perturbed(v, rgb, which):
    """The reference with one rule broken (negative controls)."""
    w = v["w"]
    if which == "gelu_erf":
        old = siglip_ref.gelu_tanh
        siglip_ref.gelu_tanh = lambda u: 0.5 * u * (1.0 + np.vectorize(math.erf)(u / math.sqrt(2.0)))
        try:
            return siglip_ref.encode(v, rgb)
        finally:
            siglip_ref.gelu_tanh = old
    if which == "pool_transposed":
        side = int(round(math.sqrt(v["cfg"]["mm"])))
        r = siglip_ref.encode(v, rgb)
        return r.reshape(side, side, -1).transpose(1, 0, 2).reshape(side * side, -1)
    if which == "rmsnorm_no_plus_one":
        saved = w["p.mm_soft_emb_norm.weight"]
        w["p.mm_soft_emb_norm.weight"] = saved - 1.0  # encode adds 1 back: gain = w
        try:
            return siglip_ref.encode(v, rgb)
        finally:
            w["p.mm_soft_emb_norm.weight"] = saved
    if which == "no_positions":
        saved = w["t.embeddings.position_embedding.weight"]
        w["t.embeddings.position_embedding.weight"] = np.zeros_like(saved)
        try:
            return siglip_ref.encode(v, rgb)
        finally:
            w["t.embeddings.position_embedding.weight"] = saved
    raise ValueError(which)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gemmashard", required=True)
    ap.add_argument("--mpirun", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--case", required=True, choices=sorted(CASES))
    ap.add_argument("--rel-l2-max", type=float, default=1e-4)
    ap.add_argument("--gpu", action="store_true",
                    help="only --device cuda at T = 1 (exit 77, skipped, without an NVIDIA GPU)")
    a = ap.parse_args()
    if a.gpu and not any(os.path.exists("/dev/nvidia%d" % i) for i in range(16)):
        print("SKIP: no NVIDIA GPU on this machine (/dev/nvidia*)")
        return 77
    case = CASES[a.case]
    os.makedirs(a.workdir, exist_ok=True)
    model = os.path.join(a.workdir, "model")
    run([a.gemmashard, "make-test-model", "--out", model, "--tokenizer", a.tokenizer] + case["args"],
        "make-test-model " + a.case)
    v = siglip_ref.load_vision(model)
    S = v["cfg"]["S"]

    # three images: uniform noise, a smooth gradient, and the extremes 0 / 255
    rng = np.random.default_rng(2024)
    yy, xx = np.mgrid[0:S, 0:S]
    imgs = [rng.integers(0, 256, size=(S, S, 3), dtype=np.uint8),
            np.stack([xx * 255 // (S - 1), yy * 255 // (S - 1), (xx + yy) * 255 // (2 * S - 2)], -1).astype(np.uint8),
            np.where(rng.random((S, S, 3)) < 0.5, 0, 255).astype(np.uint8)]
    files = []
    for i, im in enumerate(imgs):
        f = os.path.join(a.workdir, "img%d.rgb" % i)
        im.tofile(f)
        files.append(f)
    ref = np.concatenate([siglip_ref.encode(v, im) for im in imgs])
    H, mm = v["cfg"]["H"], v["cfg"]["mm"]

    failures = []
    outs = {}
    runs = [("T=1 cpu", None, ["--device", "cpu"]), ("T=1 cpu-staged", None, ["--device", "cpu-staged"])]
    runs += [("T=%d mpirun" % t, t, []) for t in case["tp"]]
    if a.gpu:
        runs = [("T=1 cuda", None, ["--device", "cuda"])]
    for name, tp, extra in runs:
        out = os.path.join(a.workdir, "out_%s.f32" % name.replace(" ", "_").replace("=", ""))
        cmd = [a.gemmashard, "vision-embed", "--model", model, "--image-rgb", ",".join(files), "--out", out,
               "--threads", "1"] + extra
        if tp:
            cmd = [a.mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "pml", "ob1",
                   "-np", str(tp)] + cmd + ["--mpi"]
        run(cmd, "vision-embed " + name, env=mpi_env() if tp else None)
        got = np.fromfile(out, dtype="<f4").astype(np.float64)
        if got.size != ref.size:
            failures.append("%s: %d floats, want %d (%d images x %d x %d)" % (name, got.size, ref.size, len(imgs), mm, H))
            continue
        got = got.reshape(ref.shape)
        outs[name] = got
        for i in range(len(imgs)):
            e = rel_l2(got[i * mm:(i + 1) * mm], ref[i * mm:(i + 1) * mm])
            print("  %-16s image %d: rel L2 %.3g" % (name, i, e))
            if not e <= a.rel_l2_max:
                failures.append("%s image %d: rel L2 %.3g > %.1g" % (name, i, e, a.rel_l2_max))

    # negative controls: each broken rule is visible at this tolerance
    got = outs.get("T=1 cpu")
    if got is not None:
        for which in ("gelu_erf", "pool_transposed", "rmsnorm_no_plus_one", "no_positions"):
            bad = perturbed(v, imgs[0], which)
            e = rel_l2(got[:mm], bad)
            print("  control %-22s rel L2 %.3g (must exceed %.1g)" % (which, e, a.rel_l2_max))
            if not e > a.rel_l2_max:
                failures.append("negative control %s: %.3g is within tolerance" % (which, e))

    # bad input (once, in the orig case): an image of the wrong size; a text-only model
    if a.case != "orig" or a.gpu:
        return finish(failures, a.case)
    bad = os.path.join(a.workdir, "short.rgb")
    imgs[0].reshape(-1)[:-3].tofile(bad)
    p = run([a.gemmashard, "vision-embed", "--model", model, "--image-rgb", bad, "--out", bad + ".out"],
            "bad input: short image file", expect_fail=True)
    if "short.rgb" not in p.stderr or "bytes" not in p.stderr:
        failures.append("short image: message does not name the file and size: %r" % p.stderr)
    text_model = os.path.join(a.workdir, "text")
    run([a.gemmashard, "make-test-model", "--out", text_model, "--tokenizer", a.tokenizer, "--preset", "tiny",
         "--layout", "conditional", "--vocab", "262208"], "make-test-model text-only")
    p = run([a.gemmashard, "vision-embed", "--model", text_model, "--image-rgb", files[0], "--out", bad + ".out"],
            "bad input: text-only model", expect_fail=True)
    if "text-only" not in p.stderr:
        failures.append("text-only model: message does not say so: %r" % p.stderr)
    # a config that contradicts the tensors: the loader names the tensor and both shapes
    import json
    wrong = os.path.join(a.workdir, "wrong_shape")
    os.makedirs(wrong, exist_ok=True)
    with open(os.path.join(model, "config.json")) as f:
        cfg = json.load(f)
    cfg["vision_config"]["intermediate_size"] = 96
    with open(os.path.join(wrong, "config.json"), "w") as f:
        json.dump(cfg, f)
    for fn in ("model.safetensors", "tokenizer.json"):
        if not os.path.exists(os.path.join(wrong, fn)):
            os.symlink(os.path.join(os.path.abspath(model), fn), os.path.join(wrong, fn))
    p = run([a.gemmashard, "vision-embed", "--model", wrong, "--image-rgb", files[0], "--out", bad + ".out"],
            "bad input: vision_config vs tensor shape", expect_fail=True)
    if "mlp.fc1.weight" not in p.stderr or "[64, 32]" not in p.stderr or "[96, 32]" not in p.stderr:
        failures.append("shape mismatch: message does not name the tensor and shapes: %r" % p.stderr)
    # T = 4 with 2 vision heads: refused at load, naming the rule
    two = os.path.join(a.workdir, "two_heads")
    run([a.gemmashard, "make-test-model", "--out", two, "--tokenizer", a.tokenizer] + TINY + ["--vision-heads", "2"],
        "make-test-model 2 vision heads")
    p = run([a.mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "pml", "ob1", "-np", "4",
             a.gemmashard, "vision-embed", "--mpi", "--model", two, "--image-rgb", files[0], "--out", bad + ".out"],
            "bad input: T = 4 over 2 vision heads", env=mpi_env(), expect_fail=True)
    if "does not divide the 2 vision attention heads" not in p.stderr + p.stdout:
        failures.append("T = 4 over 2 heads: no refusal naming the heads: %r" % (p.stderr + p.stdout)[-2000:])

    return finish(failures, a.case)


def finish(failures, case):
    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        return 1
    print("PASS: vision case %s" % case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
