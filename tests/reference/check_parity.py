#!/usr/bin/python3
"""Forward-pass parity: gemmashard (CPU, fp32 activations) vs the float64 reference gemma3_ref.py.

For one named case:
  1. `gemmashard make-test-model --out CKPT --tokenizer TOK --seed S <case flags>` writes a random
     bf16 checkpoint; the written config.json / tensor names / shards are checked against the
     requested shape so a generator that ignores a flag cannot make the case vacuous;
  2. a deterministic pseudo-random token list (first token 2, all ids < vocab) is run through
     `gemmashard logits --model CKPT --tokens ... --out F [--chunk N]` (float32 [T x V], no header)
     and through gemma3_ref.forward (float64);
  3. at EVERY position: relative L2 of the logits row <= 1e-3, and top-1 equal wherever the
     reference margin between the two best logits exceeds 1e-2. Chunked runs must also agree
     with the one-shot run of the engine to <= 1e-5 relative L2.
  4. power check: where the case exercises one spec rule, the reference with that rule broken
     must differ from the correct reference by > 1e-2 on this very checkpoint (otherwise the
     case could not detect the mistake and fails as vacuous).

Exit status 0 only if everything above holds; any missing binary, non-zero exit, wrong output
size or non-finite value is a failure.

Usage:
  check_parity.py --gemmashard BIN --tokenizer tokenizer.json --workdir DIR --case NAME
  check_parity.py --list
Options: --case all runs every case (sub-directories of --workdir); --engine-args '--threads 1'
passes extra flags to `gemmashard logits`.
"""
import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gemma3_ref as R  # noqa: E402

REL_L2_MAX = 1e-3        # engine vs float64 reference, every position
REL_L2_MIN = 0.0         # --rel-l2-min: the worst position must be at least this far (mode applied)
TOP1_MARGIN = 1e-2       # top-1 must match where the reference margin exceeds this
CHUNK_SELF_MAX = 1e-5    # chunked vs one-shot engine runs
POWER_MIN = 1e-2         # a broken-rule reference must be at least this far away
CMD_TIMEOUT_S = 240      # one engine command (tiny models take well under a second)
ENGINE_ARGS = []         # extra flags for `gemmashard logits` (--engine-args, e.g. "--threads 1")

# Base shape for every case; each case overrides some flags (None removes a flag).
BASE = {
    "--preset": "tiny",
    "--layers": 6,          # default pattern rule: layers 0-4 sliding, layer 5 full
    "--hidden": 64,
    "--heads": 4,
    "--kv-heads": 2,
    "--head-dim": 16,
    "--intermediate": 128,
    "--window": 16,
    "--qpas": 16,
    "--layout": "causal",
}


def alt_cfg(**kw):
    """Power check: reference with config fields replaced."""
    def f(model):
        m = copy.copy(model)
        m.cfg = dict(model.cfg)
        for k, v in kw.items():
            m.cfg[k] = v(model.cfg) if callable(v) else v
        return m
    return f


CASES = {
    # window shorter than the sequence
    "window": dict(seed=11, ntok=60, flags={"--window": 8},
                   expect={"sliding_window": 8},
                   power=("window 9 instead of 8", alt_cfg(sliding_window=9))),
    "gqa": dict(seed=12, ntok=24, flags={"--heads": 4, "--kv-heads": 2},
                expect={"num_attention_heads": 4, "num_key_value_heads": 2},
                power=("q head h -> kv head h % Nkv", "gqa_modulo")),
    "mqa": dict(seed=13, ntok=24, flags={"--heads": 4, "--kv-heads": 1},
                expect={"num_attention_heads": 4, "num_key_value_heads": 1}),
    "mha": dict(seed=14, ntok=24, flags={"--heads": 4, "--kv-heads": 4},
                expect={"num_attention_heads": 4, "num_key_value_heads": 4}),
    # 27B-like: head_dim 32 but qpas = hidden / heads = 24
    "qpas": dict(seed=15, ntok=24, flags={"--hidden": 96, "--head-dim": 32, "--qpas": 24},
                 expect={"head_dim": 32, "query_pre_attn_scalar": 24.0},
                 power=("scale head_dim**-0.5", "scale_head_dim")),
    # linear RoPE scaling 8 on the full layers only
    "rope_scaling": dict(seed=16, ntok=40, flags={"--rope-scaling": 8},
                         expect={"rope_factor": [1.0, 1.0, 1.0, 1.0, 1.0, 8.0]},
                         power=("scaling also on sliding layers", alt_cfg(rope_factor=lambda c: [8.0] * len(c["rope_factor"])))),
    "headdim_24": dict(seed=17, ntok=24, flags={"--head-dim": 24, "--qpas": 24},
                       expect={"head_dim": 24},
                       power=("interleaved RoPE pairs", "rope_interleaved")),
    "headdim_40": dict(seed=18, ntok=24, flags={"--head-dim": 40, "--qpas": 40},
                       expect={"head_dim": 40},
                       power=("interleaved RoPE pairs", "rope_interleaved")),
    "layout_causal": dict(seed=19, ntok=20, flags={"--layout": "causal"}, layout="causal"),
    "conditional_old": dict(seed=20, ntok=20, flags={"--layout": "conditional", "--names": "orig"},
                            layout="conditional", names="orig"),
    "conditional_new": dict(seed=21, ntok=20, flags={"--layout": "conditional", "--names": "new"},
                            layout="conditional", names="new"),
    "sharded": dict(seed=22, ntok=20, flags={"--shards": 3}, shards=3),
    "layer_types": dict(seed=23, ntok=40, flags={"--layer-types": "fssfsf", "--window": 8},
                        expect={"is_sliding": [False, True, True, False, True, False]},
                        power=("pattern rule instead of layer_types",
                               alt_cfg(is_sliding=[True] * 5 + [False]))),
    "all_sliding": dict(seed=24, ntok=30, flags={"--layers": 4, "--layer-types": "ssss", "--window": 4},
                        expect={"is_sliding": [True] * 4, "sliding_window": 4},
                        power=("window 5 instead of 4", alt_cfg(sliding_window=5))),
    # prefill then decode through the KV cache (window 8 < sequence, so the ring buffer wraps)
    "chunk1": dict(seed=25, ntok=30, flags={"--window": 8}, chunks=[1]),
    "chunk7": dict(seed=26, ntok=30, flags={"--window": 8}, chunks=[7]),
    # the "small" preset as written by make-test-model (hidden 256, 8 layers, MQA, head_dim 64,
    # window 32, linear scaling 8), 48 tokens, one-shot and chunk 5
    "preset_small": dict(seed=27, ntok=48, chunks=[5],
                         flags={"--preset": "small", "--layers": None, "--hidden": None, "--heads": None,
                                "--kv-heads": None, "--head-dim": None, "--intermediate": None,
                                "--window": None, "--qpas": None},
                         expect={"num_hidden_layers": 8, "hidden_size": 256, "num_attention_heads": 4,
                                 "num_key_value_heads": 1, "head_dim": 64, "intermediate_size": 512,
                                 "sliding_window": 32, "query_pre_attn_scalar": 64.0,
                                 "rope_factor": [1.0] * 5 + [8.0] + [1.0] * 2}),
}


class Fail(Exception):
    pass


def run(cmd, what):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=CMD_TIMEOUT_S)
    except OSError as e:
        raise Fail("%s: cannot run %s: %s" % (what, cmd[0], e))
    except subprocess.TimeoutExpired:
        raise Fail("%s: timed out: %s" % (what, " ".join(cmd)))
    out = p.stdout.decode("utf-8", "replace")
    if p.returncode != 0:
        raise Fail("%s failed (exit %d): %s\n%s" % (what, p.returncode, " ".join(cmd), out[-4000:]))
    print("  [%5.1fs] %s" % (time.time() - t0, " ".join(cmd)))
    return out


def case_tokens(seed, n, vocab):
    rng = np.random.default_rng(1000 + seed)
    return [2] + [int(t) for t in rng.integers(0, vocab, n - 1)]


def check_checkpoint(ckpt, case, model):
    """The generated checkpoint must be what the case asked for."""
    with open(os.path.join(ckpt, "config.json")) as f:
        raw = json.load(f)
    cfg = model.cfg
    errs = []
    flags = dict(BASE)
    flags.update(case["flags"])
    fields = {"--layers": "num_hidden_layers", "--hidden": "hidden_size", "--heads": "num_attention_heads",
              "--kv-heads": "num_key_value_heads", "--head-dim": "head_dim",
              "--intermediate": "intermediate_size", "--window": "sliding_window",
              "--qpas": "query_pre_attn_scalar"}
    want = {}
    for flag, field in fields.items():
        if flags.get(flag) is not None:
            want[field] = float(flags[flag]) if flag == "--qpas" else flags[flag]
    want.update(case.get("expect", {}))
    for k, v in want.items():
        if cfg[k] != v:
            errs.append("config %s = %r, case asked for %r" % (k, cfg[k], v))
    layout = case.get("layout")
    if layout == "conditional" and "text_config" not in raw:
        errs.append("layout conditional but config.json has no text_config")
    if layout == "causal" and "text_config" in raw:
        errs.append("layout causal but config.json has a text_config")
    if "--layer-types" in case["flags"] and "layer_types" not in raw.get("text_config", raw):
        errs.append("--layer-types given but config.json has no layer_types")
    # tensor names / shards
    idx = os.path.join(ckpt, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        names, files = list(wm), sorted(set(wm.values()))
    else:
        with open(os.path.join(ckpt, "model.safetensors"), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            names = [k for k in json.loads(f.read(n)) if k != "__metadata__"]
        files = ["model.safetensors"]
    if case.get("shards", 1) != len(files):
        errs.append("%d safetensors files, case asked for %d" % (len(files), case.get("shards", 1)))
    if layout == "conditional":
        prefix = {"orig": "language_model.model.layers.", "new": "model.language_model.layers."}[case["names"]]
    elif layout == "causal":
        prefix = "model.layers."
    else:
        prefix = None
    if prefix and not any(k.startswith(prefix) for k in names):
        errs.append("no tensor named %s*" % prefix)
    if errs:
        raise Fail("generated checkpoint does not match the case:\n  " + "\n  ".join(errs))


def compare(name, got, ref):
    """Per-position criteria; returns worst rel L2."""
    if not np.all(np.isfinite(got)):
        raise Fail("%s: non-finite logits at positions %s" % (name, np.where(~np.isfinite(got).all(1))[0][:10]))
    rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    decisive = margin > TOP1_MARGIN
    mism = np.where(decisive & (np.argmax(got, axis=1) != np.argmax(ref, axis=1)))[0]
    worst = int(np.argmax(rel))
    print("  %-22s worst rel L2 %.3e at position %d (mean %.3e); top-1 checked at %d/%d positions, %d mismatches"
          % (name, rel[worst], worst, rel.mean(), int(decisive.sum()), len(rel), len(mism)))
    bad = np.where(rel > REL_L2_MAX)[0]
    if len(bad):
        raise Fail("%s: relative L2 > %.0e at %d positions (first %s, worst %.3e)"
                   % (name, REL_L2_MAX, len(bad), bad[:10].tolist(), rel.max()))
    if len(mism):
        raise Fail("%s: top-1 differs at positions %s (margins %s)"
                   % (name, mism[:10].tolist(), margin[mism[:10]].tolist()))
    return float(rel.max())


def engine_logits(binpath, ckpt, ids, vocab, out, chunk=None):
    cmd = [binpath, "logits", "--model", ckpt, "--tokens", ",".join(map(str, ids)), "--out", out]
    if chunk is not None:
        cmd += ["--chunk", str(chunk)]
    cmd += ENGINE_ARGS
    if os.path.exists(out):
        os.remove(out)
    run(cmd, "gemmashard logits")
    if not os.path.exists(out):
        raise Fail("gemmashard logits wrote no %s" % out)
    sz = os.path.getsize(out)
    if sz != len(ids) * vocab * 4:
        raise Fail("%s has %d bytes, expected %d x %d float32 = %d" % (out, sz, len(ids), vocab, len(ids) * vocab * 4))
    return np.fromfile(out, dtype="<f4").reshape(len(ids), vocab).astype(np.float64)


def run_case(name, binpath, tokenizer, workdir):
    case = CASES[name]
    if not (os.path.isfile(binpath) and os.access(binpath, os.X_OK)):
        raise Fail("gemmashard binary not found or not executable: %s" % binpath)
    if os.path.isdir(workdir):
        shutil.rmtree(workdir)
    os.makedirs(workdir)
    ckpt = os.path.join(workdir, "ckpt")
    flags = dict(BASE)
    flags.update(case["flags"])
    cmd = [binpath, "make-test-model", "--out", ckpt, "--tokenizer", tokenizer, "--seed", str(case["seed"])]
    for k, v in flags.items():
        if v is not None:
            cmd += [k, str(v)]
    run(cmd, "gemmashard make-test-model")

    t0 = time.time()
    model = R.load_model(ckpt)
    check_checkpoint(ckpt, case, model)
    V = model.vocab_out
    ids = case_tokens(case["seed"], case["ntok"], model.vocab)
    ref = R.forward(model, ids)
    print("  [%5.1fs] float64 reference: %d tokens x %d vocab, layers %s"
          % (time.time() - t0, len(ids), V,
             "".join("s" if s else "f" for s in model.cfg["is_sliding"])))
    np.asarray(ids, dtype=np.int64).tofile(os.path.join(workdir, "tokens.i64"))

    results = {}
    one = engine_logits(binpath, ckpt, ids, V, os.path.join(workdir, "logits.f32"))
    results["one-shot prefill"] = compare("one-shot prefill", one, ref)
    for ch in case.get("chunks", []):
        got = engine_logits(binpath, ckpt, ids, V, os.path.join(workdir, "logits_chunk%d.f32" % ch), chunk=ch)
        key = "chunk %d" % ch
        results[key] = compare(key, got, ref)
        self_rel = (np.linalg.norm(got - one, axis=1) / np.linalg.norm(one, axis=1)).max()
        print("  %-22s vs one-shot engine run: worst rel L2 %.3e" % (key, self_rel))
        if self_rel > CHUNK_SELF_MAX:
            raise Fail("%s: chunked vs one-shot differ by %.3e > %.0e" % (key, self_rel, CHUNK_SELF_MAX))

    if "power" in case:
        what, how = case["power"]
        alt = R.forward(model, ids, perturb=how) if isinstance(how, str) else R.forward(how(model), ids)
        pw = (np.linalg.norm(alt - ref, axis=1) / np.linalg.norm(ref, axis=1)).max()
        print("  power check (%s): reference moves by %.3e (must be > %.0e)" % (what, pw, POWER_MIN))
        if pw <= POWER_MIN:
            raise Fail("case %s is vacuous on this checkpoint: '%s' changes the logits by only %.3e"
                       % (name, what, pw))
    worst = max(results.values())
    if worst < REL_L2_MIN:
        raise Fail("worst rel L2 %.3e is below --rel-l2-min %.0e: the engine did not compute in the numerics "
                   "asked for (%s)" % (worst, REL_L2_MIN, " ".join(ENGINE_ARGS)))
    print("RESULT reference_%s: worst rel L2 %.3e (criterion %.0e)" % (name, worst, REL_L2_MAX))
    return worst


def main():
    global REL_L2_MAX, REL_L2_MIN
    ap = argparse.ArgumentParser(description="gemmashard vs float64 reference parity")
    ap.add_argument("--gemmashard")
    ap.add_argument("--tokenizer")
    ap.add_argument("--workdir")
    ap.add_argument("--case", action="append", help="case name (repeatable; 'all' for every case)")
    ap.add_argument("--engine-args", default="", help="extra flags for gemmashard logits, e.g. '--threads 1'")
    ap.add_argument("--rel-l2-max", type=float, default=REL_L2_MAX,
                    help="per-position relative L2 bound (default 1e-3; measured CPU fp32 errors are ~2e-6, "
                         "and erf-GELU would show as ~4e-4, so 1e-4 is a stricter option)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--needs-gpu", action="store_true",
                    help="exit 77 (ctest: skipped) when this machine has no NVIDIA GPU (for --engine-args '--device cuda')")
    ap.add_argument("--rel-l2-min", type=float, default=0.0,
                    help="the worst position must differ by at least this much: evidence that a rounding mode "
                         "(--engine-args '--numerics bf16') was applied")
    ap.add_argument("--needs-cpu-bf16", action="store_true",
                    help="exit 77 (ctest: skipped) when this CPU lacks AVX512_BF16, or GS_CPU_FEATURES_MASK hides "
                         "it (for --engine-args '--numerics bf16')")
    a = ap.parse_args()
    if a.needs_cpu_bf16:
        try:
            with open("/proc/cpuinfo") as f:
                has = any(ln.startswith("flags") and "avx512_bf16" in ln.split() for ln in f)
        except OSError:
            has = False
        mask = os.environ.get("GS_CPU_FEATURES_MASK", "").split(",")
        if not has or any(m in ("avx512_bf16", "avx512", "avx2") for m in mask):
            print("Skipped: this CPU lacks AVX512_BF16 (the bf16 numerics mode is refused there)")
            return 77
    if a.needs_gpu and not any(os.path.exists("/dev/nvidia%d" % i) for i in range(16)):
        print("SKIP: no NVIDIA GPU on this machine (/dev/nvidia*)")
        return 77
    REL_L2_MAX = a.rel_l2_max
    REL_L2_MIN = a.rel_l2_min
    ENGINE_ARGS.extend(a.engine_args.split())
    if a.list:
        print("\n".join(CASES))
        return 0
    if not (a.gemmashard and a.tokenizer and a.workdir and a.case):
        ap.error("--gemmashard, --tokenizer, --workdir and --case are required")
    names = list(CASES) if a.case == ["all"] else a.case
    status = 0
    for n in names:
        if n not in CASES:
            print("unknown case %r (known: %s)" % (n, ", ".join(CASES)))
            return 2
        print("== case %s" % n)
        try:
            run_case(n, a.gemmashard, a.tokenizer, os.path.join(a.workdir, n) if len(names) > 1 else a.workdir)
        except Fail as e:
            print("FAIL reference_%s: %s" % (n, e))
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
