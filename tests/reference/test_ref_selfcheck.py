#!/usr/bin/python3
"""Self-check of the float64 Gemma 3 reference (gemma3_ref.py), independent of the C engine.

1. A second, deliberately naive implementation (one token at a time, explicit KV cache,
   per-head / per-element Python loops, math.* scalar functions) must agree with the
   vectorised reference to ~1e-12 on tiny random models covering GQA, MQA, qpas != head_dim,
   head_dim 24, linear RoPE scaling, explicit layer_types, window < sequence, softcaps.
2. Invariants: prefix property; sliding-window locality when every layer is sliding.
3. Loader: the same weights written as safetensors in every supported layout (causal,
   conditional old/new names, sharded index, F16/F32/BF16, explicit lm_head) give
   bit-identical logits; config resolution rules (pattern rule, layer_types, defaults,
   rope_parameters) and bf16 embedding scales from the spec table.
4. Negative controls: breaking one spec rule (qpas, GELU, +1 norm, RoPE pairing, RoPE
   scaling, RoPE bases, window off-by-one) moves the logits by >> 1e-3 relative L2, so the
   parity criterion used by check_parity.py would detect such a mistake.

Usage: test_ref_selfcheck.py [-v]   (exit status != 0 on failure; also a ctest)
"""
import json
import math
import os
import shutil
import sys
import tempfile
import unittest

import numpy as np

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gemma3_ref as R  # noqa: E402


# ----------------------------------------------------------------------------------------
# Random tiny checkpoints built in memory
# ----------------------------------------------------------------------------------------
def to_bf16(a):
    """Round a float array to bf16-representable float32 values (RNE)."""
    f = np.ascontiguousarray(a, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return u.view(np.float32)


def make_config(**kw):
    c = {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": 301,
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 6,
        "sliding_window_pattern": 3,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": None,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "tie_word_embeddings": True,
    }
    c.update(kw)
    return c


def make_weights(c, seed=0):
    """Text-relative names ('layers.0....'), bf16-representable float32 values."""
    rng = np.random.default_rng(seed)
    H, F, D = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    Nq, Nkv, V = c["num_attention_heads"], c["num_key_value_heads"], c["vocab_size"]

    def lin(o, i):
        return to_bf16(rng.standard_normal((o, i)) / math.sqrt(i))

    def nrm(n):
        return to_bf16(rng.standard_normal(n) * 0.3)

    w = {"embed_tokens.weight": to_bf16(rng.standard_normal((V, H)) * 0.5),
         "norm.weight": nrm(H)}
    for l in range(c["num_hidden_layers"]):
        p = "layers.%d." % l
        w[p + "input_layernorm.weight"] = nrm(H)
        w[p + "self_attn.q_proj.weight"] = lin(Nq * D, H)
        w[p + "self_attn.k_proj.weight"] = lin(Nkv * D, H)
        w[p + "self_attn.v_proj.weight"] = lin(Nkv * D, H)
        w[p + "self_attn.o_proj.weight"] = lin(H, Nq * D)
        w[p + "self_attn.q_norm.weight"] = nrm(D)
        w[p + "self_attn.k_norm.weight"] = nrm(D)
        w[p + "post_attention_layernorm.weight"] = nrm(H)
        w[p + "pre_feedforward_layernorm.weight"] = nrm(H)
        w[p + "mlp.gate_proj.weight"] = lin(F, H)
        w[p + "mlp.up_proj.weight"] = lin(F, H)
        w[p + "mlp.down_proj.weight"] = lin(H, F)
        w[p + "post_feedforward_layernorm.weight"] = nrm(H)
    return w


def make_model(seed=0, **kw):
    c = make_config(**kw)
    return R.Model(R.resolve_config(c), make_weights(c, seed)), c


def tokens(n, vocab, seed=1):
    rng = np.random.default_rng(seed)
    return [2] + [int(t) for t in rng.integers(0, vocab, n - 1)]


def rel_l2_rows(a, b):
    """Per-row relative L2 of a against the reference b."""
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


# ----------------------------------------------------------------------------------------
# Naive implementation: token by token, explicit KV cache, scalar math
# ----------------------------------------------------------------------------------------
def naive_forward(model, ids):
    c, w = model.cfg, model.w
    H, D = c["hidden_size"], c["head_dim"]
    Nq, Nkv = c["num_attention_heads"], c["num_key_value_heads"]
    eps = c["rms_norm_eps"]
    L = c["num_hidden_layers"]
    W = c["sliding_window"]
    acap = c["attn_logit_softcapping"]
    fcap = c["final_logit_softcapping"]
    # bf16(sqrt(H)): bf16 keeps 8 significant bits -> round sqrt(H) to a multiple of 2^(e-7)
    r = math.sqrt(H)
    e = math.floor(math.log2(r))
    q = 2.0 ** (e - 7)
    m = r / q
    fl = math.floor(m)
    m = fl + 1 if (m - fl > 0.5 or (m - fl == 0.5 and fl % 2 == 1)) else fl
    escale = m * q

    def norm(vec, wt):
        n = len(vec)
        ms = sum(float(t) * float(t) for t in vec) / n
        inv = 1.0 / math.sqrt(ms + eps)
        return np.array([float(vec[i]) * inv * (1.0 + float(wt[i])) for i in range(n)])

    def rope(vec, pos, base, factor):
        out = np.zeros(D)
        half = D // 2
        for j in range(half):
            theta = pos * (base ** (-(2.0 * j) / D)) / factor
            cs, sn = math.cos(theta), math.sin(theta)
            a, b = vec[j], vec[j + half]
            out[j] = a * cs - b * sn
            out[j + half] = b * cs + a * sn
        return out

    def gelu(u):
        return 0.5 * u * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u ** 3)))

    def mat(name):
        return w[name].astype(np.float64)

    kcache = [[[] for _ in range(Nkv)] for _ in range(L)]  # [layer][kv head] -> list of (pos, k)
    vcache = [[[] for _ in range(Nkv)] for _ in range(L)]
    out = []
    for t, tok in enumerate(ids):
        x = w["embed_tokens.weight"][tok].astype(np.float64) * escale
        for l in range(L):
            p = "layers.%d." % l
            sliding = c["is_sliding"][l]
            base = c["rope_local_base"] if sliding else c["rope_global_base"]
            factor = c["rope_factor"][l]
            a = norm(x, w[p + "input_layernorm.weight"])
            qa = mat(p + "self_attn.q_proj.weight").dot(a)
            ka = mat(p + "self_attn.k_proj.weight").dot(a)
            va = mat(p + "self_attn.v_proj.weight").dot(a)
            for g in range(Nkv):
                kg = norm(ka[g * D:(g + 1) * D], w[p + "self_attn.k_norm.weight"])
                kcache[l][g].append((t, rope(kg, t, base, factor)))
                vcache[l][g].append((t, va[g * D:(g + 1) * D].copy()))
            o = np.zeros(Nq * D)
            for h in range(Nq):
                qh = rope(norm(qa[h * D:(h + 1) * D], w[p + "self_attn.q_norm.weight"]), t, base, factor)
                g = (h * Nkv) // Nq
                sc = []
                for (j, kj) in kcache[l][g]:
                    if sliding and W is not None and not (t - j < W):
                        continue
                    s = sum(qh[d] * kj[d] for d in range(D)) / math.sqrt(c["query_pre_attn_scalar"])
                    if acap is not None:
                        s = math.tanh(s / acap) * acap
                    sc.append((j, s))
                mx = max(s for _, s in sc)
                ex = [(j, math.exp(s - mx)) for j, s in sc]
                z = sum(e_ for _, e_ in ex)
                vd = dict(vcache[l][g])
                acc = np.zeros(D)
                for j, e_ in ex:
                    acc += (e_ / z) * vd[j]
                o[h * D:(h + 1) * D] = acc
            x = x + norm(mat(p + "self_attn.o_proj.weight").dot(o), w[p + "post_attention_layernorm.weight"])
            mm = norm(x, w[p + "pre_feedforward_layernorm.weight"])
            gt = mat(p + "mlp.gate_proj.weight").dot(mm)
            up = mat(p + "mlp.up_proj.weight").dot(mm)
            hid = np.array([gelu(gt[i]) * up[i] for i in range(len(gt))])
            x = x + norm(mat(p + "mlp.down_proj.weight").dot(hid), w[p + "post_feedforward_layernorm.weight"])
        xf = norm(x, w["norm.weight"])
        lg = model.lm_head.astype(np.float64).dot(xf)
        if fcap is not None:
            lg = np.array([math.tanh(v / fcap) * fcap for v in lg])
        out.append(lg)
        # Only the cached window is needed for sliding layers: prune to prove it.
        for l in range(L):
            if c["is_sliding"][l] and W is not None:
                for g in range(Nkv):
                    kcache[l][g] = [(j, k) for (j, k) in kcache[l][g] if (t + 1) - j < W]
                    vcache[l][g] = [(j, v) for (j, v) in vcache[l][g] if (t + 1) - j < W]
    return np.array(out)


# ----------------------------------------------------------------------------------------
# safetensors writer (for the loader checks)
# ----------------------------------------------------------------------------------------
def _encode(a, dtype):
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "BF16":
        return (a.view(np.uint32) >> 16).astype("<u2").tobytes()
    if dtype == "F16":
        return a.astype("<f2").tobytes()
    if dtype == "F32":
        return a.astype("<f4").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors, dtype="BF16"):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        b = _encode(tensors[name], dtype)
        header[name] = {"dtype": dtype, "shape": list(tensors[name].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(hj).to_bytes(8, "little"))
        f.write(hj)
        for b in blobs:
            f.write(b)


def write_checkpoint(d, cfg, w, layout="causal", names="old", shards=1, dtype="BF16", lm_head=False):
    os.makedirs(d, exist_ok=True)
    if layout == "causal":
        prefix = "model."
        conf = cfg
    else:
        prefix = "language_model.model." if names == "old" else "model.language_model."
        tc = dict(cfg)
        tc["model_type"] = "gemma3_text"
        tc.pop("architectures", None)
        conf = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
                "text_config": tc, "vision_config": {"model_type": "siglip_vision_model"}}
    t = {prefix + k: v for k, v in w.items() if k != "lm_head.weight"}
    if "lm_head.weight" in w:
        t["lm_head.weight"] = w["lm_head.weight"]
    elif lm_head:
        t["lm_head.weight"] = w["embed_tokens.weight"]
    if layout != "causal":  # a vision tensor the text loader must ignore
        vname = "vision_tower.vision_model.post_layernorm.weight" if names == "old" else \
            "model.vision_tower.vision_model.post_layernorm.weight"
        t[vname] = np.ones(8, dtype=np.float32)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(conf, f)
    if shards == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), t, dtype)
        return
    keys = sorted(t)
    wm = {}
    for s in range(shards):
        fn = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        part = {k: t[k] for k in keys[s::shards]}
        write_safetensors(os.path.join(d, fn), part, dtype)
        for k in part:
            wm[k] = fn
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": wm}, f)


# ----------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------
NAIVE_CASES = {
    "base_gqa": dict(),
    "mqa": dict(num_key_value_heads=1),
    "mha": dict(num_key_value_heads=4),
    "qpas_ne_headdim": dict(head_dim=32, query_pre_attn_scalar=12),
    "headdim_24": dict(head_dim=24, query_pre_attn_scalar=24),
    "rope_linear8": dict(rope_scaling={"rope_type": "linear", "factor": 8.0}, sliding_window_pattern=2),
    "layer_types": dict(num_hidden_layers=4, layer_types=["full_attention", "sliding_attention",
                                                          "sliding_attention", "full_attention"]),
    "window2": dict(sliding_window=2),
    "softcaps": dict(attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
    "hidden_odd_scale": dict(hidden_size=40, num_key_value_heads=1),
}


class NaiveAgreement(unittest.TestCase):
    def test_cases(self):
        for ci, (name, kw) in enumerate(NAIVE_CASES.items()):
            with self.subTest(case=name):
                m, c = make_model(seed=100 + ci, **kw)
                ids = tokens(14, c["vocab_size"], seed=3)
                a = R.forward(m, ids)
                b = naive_forward(m, ids)
                err = rel_l2_rows(a, b).max()
                print("  naive vs vectorised [%s]: worst rel L2 %.2e" % (name, err))
                self.assertLess(err, 1e-11, name)


class Invariants(unittest.TestCase):
    def test_prefix(self):
        m, c = make_model(seed=5, sliding_window=4)
        ids = tokens(20, c["vocab_size"], seed=7)
        full = R.forward(m, ids)
        for n in (1, 5, 13):
            part = R.forward(m, ids[:n])
            self.assertLess(np.abs(part - full[:n]).max(), 1e-12)
        # changing a late token must not change earlier rows
        ids2 = list(ids)
        ids2[15] = (ids2[15] + 1) % c["vocab_size"]
        alt = R.forward(m, ids2)
        self.assertLess(np.abs(alt[:15] - full[:15]).max(), 1e-12)
        self.assertGreater(np.abs(alt[15] - full[15]).max(), 1e-3)

    def test_sliding_locality(self):
        L, W, T = 2, 3, 14
        m, c = make_model(seed=9, num_hidden_layers=L, sliding_window=W,
                          layer_types=["sliding_attention"] * L)
        ids = tokens(T, c["vocab_size"], seed=11)
        ids2 = list(ids)
        ids2[1] = (ids2[1] + 17) % c["vocab_size"]
        a, b = R.forward(m, ids), R.forward(m, ids2)
        reach = 1 + L * (W - 1)  # last position token 1 can influence
        d = np.abs(a - b).max(axis=1)
        self.assertEqual(d[0], 0.0)
        for i in range(1, reach + 1):
            self.assertGreater(d[i], 1e-6, "position %d should see token 1" % i)
        for i in range(reach + 1, T):
            self.assertLess(d[i], 1e-12, "position %d is outside the window reach" % i)
        # one global layer restores the long-range dependence
        m2, _ = make_model(seed=9, num_hidden_layers=L, sliding_window=W,
                           layer_types=["sliding_attention", "full_attention"])
        d2 = np.abs(R.forward(m2, ids) - R.forward(m2, ids2)).max(axis=1)
        self.assertGreater(d2[T - 1], 1e-6)

    def test_window_ge_sequence_is_causal(self):
        # a window at least as long as the sequence equals full attention
        m1, c = make_model(seed=4, sliding_window=12, rope_local_base_freq=1e6)
        m2, _ = make_model(seed=4, sliding_window=12, rope_local_base_freq=1e6,
                           layer_types=["full_attention"] * 3)
        ids = tokens(12, c["vocab_size"], seed=2)
        self.assertLess(np.abs(R.forward(m1, ids) - R.forward(m2, ids)).max(), 1e-12)


class Config(unittest.TestCase):
    def test_embed_scale_table(self):  # spec 2.1 table, bf16 column
        for H, s in ((5376, 73.5), (2560, 50.5), (3840, 62.0), (1152, 34.0), (640, 25.25), (64, 8.0)):
            self.assertEqual(R.embed_scale(H), s, H)

    def test_pattern_rule(self):
        c = R.resolve_config({"num_hidden_layers": 62, "hidden_size": 8, "intermediate_size": 8})
        glob = [i for i, s in enumerate(c["is_sliding"]) if not s]
        self.assertEqual(glob, [5, 11, 17, 23, 29, 35, 41, 47, 53, 59])
        c = R.resolve_config({"num_hidden_layers": 4, "sliding_window_pattern": 2,
                              "rope_scaling": {"type": "linear", "factor": 8.0}})
        self.assertEqual(c["is_sliding"], [True, False, True, False])
        self.assertEqual(c["rope_base"], [10000.0, 1e6, 10000.0, 1e6])
        self.assertEqual(c["rope_factor"], [1.0, 8.0, 1.0, 8.0])

    def test_defaults_and_text_config(self):
        c = R.resolve_config({"text_config": {"num_hidden_layers": 2, "hidden_size": 8}})
        self.assertEqual(c["sliding_window"], 4096)
        self.assertEqual((c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]), (8, 4, 256))
        self.assertEqual(c["query_pre_attn_scalar"], 256.0)
        self.assertIsNone(c["final_logit_softcapping"])
        self.assertEqual(c["hidden_size"], 8)

    def test_layer_types_and_rope_parameters(self):
        c = R.resolve_config({"num_hidden_layers": 3,
                              "layer_types": ["full_attention", "sliding_attention", "full_attention"],
                              "rope_parameters": {
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                  "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}})
        self.assertEqual(c["is_sliding"], [False, True, False])
        self.assertEqual(c["rope_factor"], [8.0, 1.0, 8.0])
        self.assertEqual(c["rope_base"], [1e6, 1e4, 1e6])


class Loader(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="gs_ref_selfcheck_")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_layouts(self):
        c = make_config(num_hidden_layers=2, sliding_window_pattern=2)
        w = make_weights(c, seed=21)
        ids = tokens(9, c["vocab_size"], seed=4)
        want = R.forward(R.Model(R.resolve_config(c), w), ids)
        variants = [
            dict(layout="causal"),
            dict(layout="conditional", names="old"),
            dict(layout="conditional", names="new"),
            dict(layout="causal", shards=3),
            dict(layout="conditional", names="new", shards=2, lm_head=True),
            dict(layout="causal", dtype="F32"),
            dict(layout="causal", dtype="F16"),
        ]
        for i, v in enumerate(variants):
            with self.subTest(**v):
                d = os.path.join(self.tmp, "m%d" % i)
                write_checkpoint(d, c, w, **v)
                m = R.load_model(d)
                got = R.forward(m, ids)
                if v.get("dtype") == "F16":  # bf16 values are not all representable in f16
                    self.assertLess(rel_l2_rows(got, want).max(), 1e-2)
                else:
                    self.assertEqual(np.abs(got - want).max(), 0.0)

    def test_untied_lm_head_used(self):
        c = make_config(num_hidden_layers=1)
        w = make_weights(c, seed=2)
        w2 = dict(w)
        w2["lm_head.weight"] = to_bf16(np.random.default_rng(0).standard_normal(w["embed_tokens.weight"].shape))
        d = os.path.join(self.tmp, "u")
        write_checkpoint(d, c, w2)
        m = R.load_model(d)
        self.assertIs(m.lm_head, m.w["lm_head.weight"])
        ids = [2, 5, 7]
        tied = R.forward(R.Model(R.resolve_config(c), w), ids)
        self.assertGreater(rel_l2_rows(R.forward(m, ids), tied).min(), 0.1)

    def test_cli_raw_output(self):
        c = make_config(num_hidden_layers=2)
        w = make_weights(c, seed=3)
        d = os.path.join(self.tmp, "cli")
        write_checkpoint(d, c, w, layout="conditional", names="old")
        out = os.path.join(self.tmp, "logits.f64")
        ids = [2, 105, 7, 9]
        self.assertEqual(R.main(["--model", d, "--tokens", ",".join(map(str, ids)), "--out", out]), 0)
        got = np.fromfile(out, dtype="<f8")
        self.assertEqual(got.size, len(ids) * c["vocab_size"])
        want = R.forward(R.Model(R.resolve_config(c), w), ids)
        self.assertEqual(np.abs(got.reshape(len(ids), -1) - want).max(), 0.0)


class CaseList(unittest.TestCase):
    def test_cmake_lists_every_parity_case(self):
        import re
        import check_parity
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "CMakeLists.txt")) as f:
            txt = f.read()
        m = re.search(r"set\(GS_REF_CASES(.*?)\)", txt, re.S)
        self.assertIsNotNone(m)
        self.assertEqual(m.group(1).split(), list(check_parity.CASES))


class NegativeControls(unittest.TestCase):
    """Each deliberate spec mistake must exceed the 1e-3 parity criterion by a wide margin."""
    MUST_DETECT = ["scale_head_dim", "norm_no_plus1", "rope_interleaved",
                   "no_rope_scaling", "rope_base_swap", "window_off_by_one", "gqa_modulo"]
    # Measured but NOT detectable at 1e-3: erf-GELU differs from tanh-GELU by <~2e-4 absolute,
    # giving ~1e-4 relative L2 on the logits; the exact vs bf16 embedding scale differs by
    # < 0.4% in one scalar that the RMSNorms mostly absorb. Reported for the record.
    INFO_ONLY = ["gelu_erf", "embed_exact"]

    def test_perturbations(self):
        # qpas != head_dim, linear scaling on the global layers, window < sequence
        m, c = make_model(seed=13, num_hidden_layers=4, hidden_size=72, head_dim=32, num_key_value_heads=2,
                          query_pre_attn_scalar=20, sliding_window=5, sliding_window_pattern=2,
                          rope_scaling={"rope_type": "linear", "factor": 8.0})
        ids = tokens(24, c["vocab_size"], seed=5)
        ref = R.forward(m, ids)
        for p in self.MUST_DETECT + self.INFO_ONLY:
            err = rel_l2_rows(R.forward(m, ids, perturb=p), ref).max()
            print("  negative control %-18s worst rel L2 %.3e" % (p, err))
            if p in self.MUST_DETECT:
                with self.subTest(perturb=p):
                    self.assertGreater(err, 2e-2, p)  # >= 20x the 1e-3 criterion


if __name__ == "__main__":
    unittest.main(verbosity=2)
