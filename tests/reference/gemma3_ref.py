#!/usr/bin/python3
"""Independent float64 reference of the Gemma 3 text decoder, with image tokens.

Written from /work/shared/reference/gemma3.md sections 1-3, 4.4, 4.5 and 7 (not from the C engine).

CLI:
    gemma3_ref.py --model DIR --tokens 2,105,2364 --out FILE [--image-rgb A.rgb,B.rgb]
writes the logits of every position as raw little-endian float64, row-major
[n_tokens x vocab], no header (vocab = rows of the embedding tensor). With --image-rgb the
tokens are used as given (they must already hold each image's soft tokens, 262144 by default),
the images (preprocessed S x S x 3 RGB) go through siglip_ref.py's float64 tower.

Module use:
    m = gemma3_ref.load_model(DIR)          # Model(cfg, weights)
    logits = gemma3_ref.forward(m, ids)     # np.ndarray float64 [T, V]
    logits = gemma3_ref.forward(m, ids, image_rows=R, image_token_id=262144)
        R: [number of image tokens in ids, H] projector outputs, in order (spec 4.4): they
        replace those embeddings unscaled, and each run of image tokens attends to itself in
        both directions in every layer (spec 4.5).

Numerics: every activation is float64; weights are the checkpoint values (bf16/f16/f32)
converted exactly to float64. The embedding scale is bf16(sqrt(hidden_size)) (spec 2.1 / 7.2),
exactly as HF does with a bf16 checkpoint. No rounding of activations anywhere.

`forward(..., perturb=...)` exists only for the negative controls of test_ref_selfcheck.py:
it deliberately breaks one spec rule to prove the parity criterion can see the mistake.
"""
import argparse
import json
import math
import mmap
import os
import sys

import numpy as np

# ----------------------------------------------------------------------------------------
# Config (spec 1.1 defaults = Gemma3TextConfig.__init__ defaults)
# ----------------------------------------------------------------------------------------
TEXT_DEFAULTS = {
    "vocab_size": 262208,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_theta": 1000000.0,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "rope_local_base_freq": 10000.0,
    "sliding_window_pattern": 6,
    "rope_scaling": None,
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    # Not in the spec table: HF defaults, only used when neither config nor tensors tell.
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
}


def _rope_scale_factor(rs):
    """rope_scaling dict -> linear factor (1.0 = none). Only 'linear' / 'default' are Gemma 3."""
    if rs is None:
        return 1.0
    rtype = rs.get("rope_type", rs.get("type", "default"))
    if rtype == "default":
        return 1.0
    if rtype == "linear":
        return float(rs["factor"])
    raise NotImplementedError("rope_scaling type %r not supported by the reference" % rtype)


def resolve_config(raw):
    """config.json dict -> resolved text config dict (python scalars + per-layer lists)."""
    tc = raw.get("text_config")
    if tc is None:
        tc = raw
    c = dict(TEXT_DEFAULTS)
    for k, v in tc.items():
        c[k] = v
    # A conditional checkpoint may carry tie_word_embeddings at the top level.
    if "tie_word_embeddings" not in tc and "tie_word_embeddings" in raw:
        c["tie_word_embeddings"] = raw["tie_word_embeddings"]
    L = int(c["num_hidden_layers"])
    lt = tc.get("layer_types")
    if lt is not None:
        if len(lt) != L:
            raise ValueError("layer_types has %d entries, num_hidden_layers=%d" % (len(lt), L))
        sliding = []
        for t in lt:
            if t == "sliding_attention":
                sliding.append(True)
            elif t == "full_attention":
                sliding.append(False)
            else:
                raise ValueError("unknown layer type %r" % t)
    else:
        p = int(c["sliding_window_pattern"])
        sliding = [bool((i + 1) % p) for i in range(L)]

    # RoPE parameters: classic keys, or newer per-layer-type rope_parameters.
    local_base = float(c["rope_local_base_freq"])
    global_base = float(c["rope_theta"])
    global_factor = _rope_scale_factor(c.get("rope_scaling"))
    local_factor = 1.0
    rp = tc.get("rope_parameters")
    if isinstance(rp, dict) and ("full_attention" in rp or "sliding_attention" in rp):
        if "full_attention" in rp:
            global_base = float(rp["full_attention"].get("rope_theta", global_base))
            global_factor = _rope_scale_factor(rp["full_attention"])
        if "sliding_attention" in rp:
            local_base = float(rp["sliding_attention"].get("rope_theta", local_base))
            local_factor = _rope_scale_factor(rp["sliding_attention"])

    W = c["sliding_window"]
    out = {
        "vocab_size": int(c["vocab_size"]),
        "hidden_size": int(c["hidden_size"]),
        "intermediate_size": int(c["intermediate_size"]),
        "num_hidden_layers": L,
        "num_attention_heads": int(c["num_attention_heads"]),
        "num_key_value_heads": int(c["num_key_value_heads"]),
        "head_dim": int(c["head_dim"]),
        "query_pre_attn_scalar": float(c["query_pre_attn_scalar"]),
        "rms_norm_eps": float(c["rms_norm_eps"]),
        "hidden_activation": c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh",
        "sliding_window": None if W is None else int(W),
        "attn_logit_softcapping": c["attn_logit_softcapping"],
        "final_logit_softcapping": c["final_logit_softcapping"],
        "tie_word_embeddings": bool(c["tie_word_embeddings"]),
        "is_sliding": sliding,
        "rope_local_base": local_base,
        "rope_global_base": global_base,
        "rope_base": [local_base if s else global_base for s in sliding],
        "rope_factor": [local_factor if s else global_factor for s in sliding],
    }
    if out["hidden_activation"] not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise NotImplementedError("hidden_activation %r" % out["hidden_activation"])
    return out


# ----------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------
def _st_to_f64(dtype, buf, shape):
    if dtype == "BF16":
        u = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
        a = u.view(np.float32)
    elif dtype == "F16":
        a = np.frombuffer(buf, dtype="<f2")
    elif dtype == "F32":
        a = np.frombuffer(buf, dtype="<f4")
    elif dtype == "F64":
        a = np.frombuffer(buf, dtype="<f8")
    else:
        raise NotImplementedError("safetensors dtype %s" % dtype)
    # float32 keeps bf16/f16/f32 values exactly and halves the memory of the big embedding;
    # it is widened to float64 where it is used.
    if a.dtype != np.float64:
        a = a.astype(np.float32)
    return a.reshape(shape)


def read_safetensors(path, want=None):
    """Return {name: ndarray} (float32 for <=32-bit dtypes, float64 for F64).
    want: optional predicate on the name."""
    out = {}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n).decode("utf-8"))
        base = 8 + n
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if want is not None and not want(name):
                    continue
                s, e = info["data_offsets"]
                shape = tuple(int(x) for x in info["shape"])
                nbytes = e - s
                esz = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}.get(info["dtype"])
                if esz is None:
                    raise NotImplementedError("safetensors dtype %s (%s)" % (info["dtype"], name))
                if nbytes != esz * int(np.prod(shape, dtype=np.int64)):
                    raise ValueError("%s: %s bytes %d do not match shape %s" % (path, name, nbytes, shape))
                buf = mm[base + s:base + e]
                out[name] = _st_to_f64(info["dtype"], buf, shape).copy()
        finally:
            mm.close()
    return out


TEXT_PREFIXES = ("language_model.model.", "model.language_model.", "model.")


def text_name(name):
    """Checkpoint tensor name -> text-decoder-relative name, or None if not a text tensor."""
    if name in ("lm_head.weight", "language_model.lm_head.weight"):
        return "lm_head.weight"
    for p in TEXT_PREFIXES:
        if name.startswith(p):
            rest = name[len(p):]
            if rest.startswith(("embed_tokens.", "layers.", "norm.")):
                return rest
            return None
    return None


def load_weights(model_dir):
    files = []
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        files = sorted(set(wm.values()))
    elif os.path.exists(single):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError("no model.safetensors or model.safetensors.index.json in %s" % model_dir)
    w = {}
    for fn in files:
        t = read_safetensors(os.path.join(model_dir, fn), want=lambda n: text_name(n) is not None)
        for k, v in t.items():
            tn = text_name(k)
            if tn in w:
                raise ValueError("tensor %s present twice (%s)" % (tn, k))
            w[tn] = v
    return w


class Model:
    def __init__(self, cfg, weights):
        self.cfg = cfg
        self.w = weights
        E = weights["embed_tokens.weight"]
        self.vocab = E.shape[0]
        H = cfg["hidden_size"]
        if E.shape[1] != H:
            raise ValueError("embed_tokens %s vs hidden_size %d" % (E.shape, H))
        D, Nq, Nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        for l in range(cfg["num_hidden_layers"]):
            p = "layers.%d." % l
            exp = {
                "self_attn.q_proj.weight": (Nq * D, H),
                "self_attn.k_proj.weight": (Nkv * D, H),
                "self_attn.v_proj.weight": (Nkv * D, H),
                "self_attn.o_proj.weight": (H, Nq * D),
                "self_attn.q_norm.weight": (D,),
                "self_attn.k_norm.weight": (D,),
                "input_layernorm.weight": (H,),
                "post_attention_layernorm.weight": (H,),
                "pre_feedforward_layernorm.weight": (H,),
                "post_feedforward_layernorm.weight": (H,),
                "mlp.gate_proj.weight": (cfg["intermediate_size"], H),
                "mlp.up_proj.weight": (cfg["intermediate_size"], H),
                "mlp.down_proj.weight": (H, cfg["intermediate_size"]),
            }
            for k, shp in exp.items():
                if p + k not in weights:
                    raise KeyError("missing tensor %s" % (p + k))
                if tuple(weights[p + k].shape) != shp:
                    raise ValueError("%s shape %s, expected %s" % (p + k, weights[p + k].shape, shp))
        if Nq % Nkv:
            raise ValueError("num_attention_heads %d not a multiple of num_key_value_heads %d" % (Nq, Nkv))
        # Tied LM head unless the checkpoint carries its own lm_head.weight.
        if "lm_head.weight" not in weights and not cfg["tie_word_embeddings"]:
            raise KeyError("tie_word_embeddings is false but there is no lm_head.weight")
        self.lm_head = weights.get("lm_head.weight", E)
        if self.lm_head.shape[1] != H:
            raise ValueError("lm_head shape %s" % (self.lm_head.shape,))
        self.vocab_out = self.lm_head.shape[0]


def load_model(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    w = load_weights(model_dir)
    # Structural fields absent from config.json are taken from the tensor shapes
    # (HF defaults would not match the tensors anyway).
    tc = dict(raw.get("text_config", raw))
    if "hidden_size" not in tc:
        tc["hidden_size"] = w["embed_tokens.weight"].shape[1]
    if "intermediate_size" not in tc and "layers.0.mlp.gate_proj.weight" in w:
        tc["intermediate_size"] = w["layers.0.mlp.gate_proj.weight"].shape[0]
    if "num_hidden_layers" not in tc:
        n = 0
        while ("layers.%d.input_layernorm.weight" % n) in w:
            n += 1
        tc["num_hidden_layers"] = n
    if "text_config" in raw:
        raw = dict(raw)
        raw["text_config"] = tc
    else:
        raw = tc
    return Model(resolve_config(raw), w)


# ----------------------------------------------------------------------------------------
# Forward pass (spec section 2), float64, vectorised over all positions
# ----------------------------------------------------------------------------------------
def bf16_round(x):
    """Round a float to the nearest bfloat16 (round-to-nearest-even), via float32 (spec 2.1)."""
    f = np.array([x], dtype=np.float32)
    u = f.view(np.uint32)[0].item()
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return float(np.array([u], dtype=np.uint32).view(np.float32)[0])


def embed_scale(H):
    return bf16_round(math.sqrt(H))


def rms_norm(x, w, eps, plus_one=True):
    x = np.asarray(x, dtype=np.float64)
    r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    g = (1.0 + w.astype(np.float64)) if plus_one else w.astype(np.float64)
    return x * r * g


def gelu_tanh(u):
    return 0.5 * u * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u * u * u)))


def gelu_erf(u):
    from math import erf
    return 0.5 * u * (1.0 + np.vectorize(erf)(u / math.sqrt(2.0)))


def rope_neox(x, pos, base, factor, D, interleaved=False):
    """x: [T, N, D]; pos: [T] ints. NeoX half-rotation: pairs (j, j + D/2)."""
    half = D // 2
    inv_freq = 1.0 / (base ** (np.arange(0, D, 2, dtype=np.float64) / D))  # [D/2]
    inv_freq = inv_freq / factor
    ang = pos.astype(np.float64)[:, None] * inv_freq[None, :]  # [T, D/2]
    c = np.cos(ang)[:, None, :]
    s = np.sin(ang)[:, None, :]
    if interleaved:  # wrong (GPT-J) pairing, negative control only
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x1 * c - x2 * s
        out[..., 1::2] = x2 * c + x1 * s
        return out
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def _softcap(x, cap):
    return np.tanh(x / cap) * cap


def image_groups(ids, image_token_id):
    """Spec 4.5: group id of each position (-1: not an image token); a run of image tokens is one image."""
    tt = np.asarray(ids) == image_token_id
    start = tt & ~np.concatenate([[False], tt[:-1]])
    return np.where(tt, np.cumsum(start) - 1, -1)


def forward(model, ids, perturb=None, image_rows=None, image_token_id=None):
    """ids: sequence of token ids (positions 0..T-1). Returns float64 logits [T, V].

    perturb (negative controls only): None or one of
      'scale_head_dim'  attention scale head_dim**-0.5 instead of query_pre_attn_scalar**-0.5
      'gelu_erf'        erf GELU instead of tanh GELU
      'norm_no_plus1'   RMSNorm gain w instead of (1 + w)
      'embed_exact'     embedding scale sqrt(H) exact instead of bf16-rounded
      'rope_interleaved' GPT-J pairing (2j, 2j+1)
      'window_off_by_one' sliding visible iff i - j <= W
      'no_rope_scaling' ignore linear rope scaling
      'rope_base_swap'  sliding layers use rope_theta and full layers rope_local_base_freq
      'gqa_modulo'      q head h uses kv head h % Nkv instead of h // (Nq/Nkv)
      'image_causal'    image tokens causal like text (no bidirectional block)
      'image_scaled'    image rows multiplied by the embedding scale like token embeddings
      'image_window'    the bidirectional block limited by the sliding window on sliding layers
    """
    cfg, w = model.cfg, model.w
    ids = np.asarray(ids, dtype=np.int64)
    T = ids.shape[0]
    if T == 0:
        return np.zeros((0, model.vocab))
    is_img = np.zeros(T, dtype=bool)
    if image_rows is not None:
        is_img = ids == image_token_id
        if int(is_img.sum()) != image_rows.shape[0]:
            raise ValueError("%d image tokens but %d projector rows" % (int(is_img.sum()), image_rows.shape[0]))
    looked_up = np.where(is_img, 0, ids)  # HF replaces image ids by 0 for the lookup when >= vocab
    if looked_up.min() < 0 or looked_up.max() >= model.vocab:
        raise ValueError("token id out of range [0, %d)" % model.vocab)
    H = cfg["hidden_size"]
    D, Nq, Nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    rep = Nq // Nkv
    eps = cfg["rms_norm_eps"]
    plus1 = perturb != "norm_no_plus1"
    if perturb == "scale_head_dim":
        scale = D ** -0.5
    else:
        scale = cfg["query_pre_attn_scalar"] ** -0.5
    act = gelu_erf if perturb == "gelu_erf" else gelu_tanh
    es = math.sqrt(H) if perturb == "embed_exact" else embed_scale(H)

    pos = np.arange(T)
    E = w["embed_tokens.weight"]
    x = E[looked_up].astype(np.float64) * es  # [T, H]
    if image_rows is not None:  # spec 4.4: masked_scatter of the projector outputs, not scaled
        x[is_img] = np.asarray(image_rows, dtype=np.float64) * (es if perturb == "image_scaled" else 1.0)

    i_idx = pos[:, None]
    j_idx = pos[None, :]
    causal = j_idx <= i_idx
    Wn = cfg["sliding_window"]
    if Wn is None:
        sliding_mask = causal
    elif perturb == "window_off_by_one":
        sliding_mask = causal & (i_idx - j_idx <= Wn)
    else:
        sliding_mask = causal & (i_idx - j_idx < Wn)
    if image_rows is not None and perturb != "image_causal":
        # spec 4.5: OR-ed into both masks: same image, both directions
        g = image_groups(ids, image_token_id)
        same = (g[:, None] >= 0) & (g[:, None] == g[None, :])
        causal = causal | same
        if perturb == "image_window" and Wn is not None:
            sliding_mask = sliding_mask | (same & (np.abs(i_idx - j_idx) < Wn))
        else:
            sliding_mask = sliding_mask | same

    def f64(name):
        return w[name].astype(np.float64)

    for l in range(cfg["num_hidden_layers"]):
        p = "layers.%d." % l
        sl = cfg["is_sliding"][l]
        base = cfg["rope_base"][l]
        factor = cfg["rope_factor"][l]
        if perturb == "no_rope_scaling":
            factor = 1.0
        if perturb == "rope_base_swap":
            base = cfg["rope_global_base"] if sl else cfg["rope_local_base"]
        mask = sliding_mask if sl else causal

        a = rms_norm(x, w[p + "input_layernorm.weight"], eps, plus1)
        q = (a @ f64(p + "self_attn.q_proj.weight").T).reshape(T, Nq, D)
        k = (a @ f64(p + "self_attn.k_proj.weight").T).reshape(T, Nkv, D)
        v = (a @ f64(p + "self_attn.v_proj.weight").T).reshape(T, Nkv, D)
        q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps, plus1)
        k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps, plus1)
        q = rope_neox(q, pos, base, factor, D, interleaved=(perturb == "rope_interleaved"))
        k = rope_neox(k, pos, base, factor, D, interleaved=(perturb == "rope_interleaved"))

        qh = q.transpose(1, 0, 2)                       # [Nq, T, D]
        if perturb == "gqa_modulo":
            kh = np.tile(k.transpose(1, 0, 2), (rep, 1, 1))
            vh = np.tile(v.transpose(1, 0, 2), (rep, 1, 1))
        else:
            kh = np.repeat(k.transpose(1, 0, 2), rep, axis=0)  # [Nq, T, D]; q head h -> kv head h // rep
            vh = np.repeat(v.transpose(1, 0, 2), rep, axis=0)
        s = (qh @ kh.transpose(0, 2, 1)) * scale        # [Nq, T, T]
        if cfg["attn_logit_softcapping"] is not None:
            s = _softcap(s, float(cfg["attn_logit_softcapping"]))
        s = np.where(mask[None], s, -np.inf)
        s = s - s.max(axis=-1, keepdims=True)
        pr = np.exp(s)
        pr = pr / pr.sum(axis=-1, keepdims=True)
        o = (pr @ vh).transpose(1, 0, 2).reshape(T, Nq * D)  # head-major concat
        o = o @ f64(p + "self_attn.o_proj.weight").T
        x = x + rms_norm(o, w[p + "post_attention_layernorm.weight"], eps, plus1)

        m = rms_norm(x, w[p + "pre_feedforward_layernorm.weight"], eps, plus1)
        g = m @ f64(p + "mlp.gate_proj.weight").T
        u = m @ f64(p + "mlp.up_proj.weight").T
        m = (act(g) * u) @ f64(p + "mlp.down_proj.weight").T
        x = x + rms_norm(m, w[p + "post_feedforward_layernorm.weight"], eps, plus1)

    x = rms_norm(x, w["norm.weight"], eps, plus1)
    head = model.lm_head
    V = head.shape[0]
    logits = np.empty((T, V), dtype=np.float64)
    step = 16384
    for r0 in range(0, V, step):
        logits[:, r0:r0 + step] = x @ head[r0:r0 + step].astype(np.float64).T
    if cfg["final_logit_softcapping"] is not None:
        logits = _softcap(logits, float(cfg["final_logit_softcapping"]))
    return logits


def image_rows_of(model_dir, files):
    """Projector outputs of preprocessed RGB files through siglip_ref.py's tower, and the image token id."""
    import siglip_ref
    v = siglip_ref.load_vision(model_dir)
    S = v["cfg"]["S"]
    rows = []
    for fn in files:
        raw = np.fromfile(fn, dtype=np.uint8)
        if raw.size != S * S * 3:
            raise ValueError("%s: %d bytes, want %d x %d x 3" % (fn, raw.size, S, S))
        rows.append(siglip_ref.encode(v, raw.reshape(S, S, 3)))
    with open(os.path.join(model_dir, "config.json")) as f:
        raw_cfg = json.load(f)
    tok = int(raw_cfg.get("image_token_index", raw_cfg.get("image_token_id", 262144)))
    return np.concatenate(rows), tok


def parse_tokens(s):
    return [int(t) for t in s.replace(" ", "").split(",") if t != ""]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", required=True, help="raw float64 LE [n_tokens x vocab]")
    ap.add_argument("--image-rgb", help="comma-separated preprocessed RGB files, one per image in the tokens")
    a = ap.parse_args(argv)
    m = load_model(a.model)
    ids = parse_tokens(a.tokens)
    if a.image_rgb:
        rows, tok = image_rows_of(a.model, a.image_rgb.split(","))
        lg = forward(m, ids, image_rows=rows, image_token_id=tok)
    else:
        lg = forward(m, ids)
    lg.astype("<f8").tofile(a.out)
    print("wrote %s: %d x %d float64" % (a.out, lg.shape[0], lg.shape[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
