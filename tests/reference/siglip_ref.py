#!/usr/bin/python3
"""Independent float64 reference of the Gemma 3 vision path: SigLIP tower + multi-modal projector.

Written from /work/shared/reference/gemma3.md sections 1.3, 3.2, 4.1-4.3 (not from the C engine).

CLI:
    siglip_ref.py --model DIR --image-rgb FILE[,FILE...] --out OUT
reads each FILE as image_size x image_size x 3 uint8 RGB (row-major, interleaved: the
preprocessed bytes of seam 1) and writes the projector outputs as raw little-endian float64,
[n_images * mm_tokens_per_image, text hidden_size], no header.

Module use:
    v = siglip_ref.load_vision(DIR)         # dict of float64 weights + config
    rows = siglip_ref.encode(v, rgb_uint8)   # [mm_tokens, H] float64

Numerics: pixel normalisation exactly as the processor does it in float32
(x * 0.00392156862745098, then (x - 0.5) / 0.5, float32), then float64 everywhere; weights are
the checkpoint values converted exactly.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gemma3_ref import read_safetensors  # noqa: E402  (the shared safetensors reader)

# SiglipVisionConfig defaults for absent keys; Gemma3Config defaults for the top-level ones.
VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "image_size": 224, "patch_size": 16,
                   "layer_norm_eps": 1e-6}
TOWER = ("vision_tower.vision_model.", "model.vision_tower.vision_model.")
PROJ = ("multi_modal_projector.", "model.multi_modal_projector.")


def _files(model_dir):
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    return ["model.safetensors"]


def load_vision(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    vc = dict(VISION_DEFAULTS)
    vc.update(raw["vision_config"])
    if vc.get("vision_use_head"):
        raise NotImplementedError("vision_use_head")
    text = raw.get("text_config", {})
    cfg = {
        "Hv": int(vc["hidden_size"]), "F": int(vc["intermediate_size"]), "L": int(vc["num_hidden_layers"]),
        "heads": int(vc["num_attention_heads"]), "S": int(vc["image_size"]), "P": int(vc["patch_size"]),
        "eps": float(vc["layer_norm_eps"]), "mm": int(raw.get("mm_tokens_per_image", 256)),
        "H": int(text["hidden_size"]),
    }
    w = {}
    for fn in _files(model_dir):
        for name, arr in read_safetensors(os.path.join(model_dir, fn),
                                          want=lambda n: n.startswith(TOWER + PROJ)).items():
            for p in TOWER:
                if name.startswith(p):
                    w["t." + name[len(p):]] = arr.astype(np.float64)
            for p in PROJ:
                if name.startswith(p):
                    w["p." + name[len(p):]] = arr.astype(np.float64)
    return {"cfg": cfg, "w": w}


def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu_tanh(u):
    return 0.5 * u * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u ** 3)))


def normalise(rgb):
    """uint8 [S, S, 3] -> float32 CHW as the processor: rescale then normalise, in float32."""
    x = rgb.astype(np.float32) * np.float32(0.00392156862745098)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return x.transpose(2, 0, 1)


def encode(v, rgb):
    c, w = v["cfg"], v["w"]
    Hv, P, S, nh = c["Hv"], c["P"], c["S"], c["heads"]
    g = S // P
    D = Hv // nh
    px = normalise(rgb).astype(np.float64)                                   # [3, S, S]
    # Conv2d(3 -> Hv, k = s = P, valid): patch (r, c) meets kernel [o, ch, ky, kx]
    patches = px.reshape(3, g, P, g, P).transpose(1, 3, 0, 2, 4).reshape(g * g, 3 * P * P)
    kern = w["t.embeddings.patch_embedding.weight"].reshape(Hv, 3 * P * P)
    e = patches @ kern.T + w["t.embeddings.patch_embedding.bias"]          # [Np, Hv], n = r*g + c
    e = e + w["t.embeddings.position_embedding.weight"]
    for j in range(c["L"]):
        p = "t.encoder.layers.%d." % j
        a = layer_norm(e, w[p + "layer_norm1.weight"], w[p + "layer_norm1.bias"], c["eps"])
        q = a @ w[p + "self_attn.q_proj.weight"].T + w[p + "self_attn.q_proj.bias"]
        k = a @ w[p + "self_attn.k_proj.weight"].T + w[p + "self_attn.k_proj.bias"]
        vv = a @ w[p + "self_attn.v_proj.weight"].T + w[p + "self_attn.v_proj.bias"]
        q, k, vv = (t.reshape(-1, nh, D).transpose(1, 0, 2) for t in (q, k, vv))   # [nh, Np, D]
        s = q @ k.transpose(0, 2, 1) * D ** -0.5
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s = s / s.sum(axis=-1, keepdims=True)
        o = (s @ vv).transpose(1, 0, 2).reshape(-1, Hv)
        e = e + (o @ w[p + "self_attn.out_proj.weight"].T + w[p + "self_attn.out_proj.bias"])
        m = layer_norm(e, w[p + "layer_norm2.weight"], w[p + "layer_norm2.bias"], c["eps"])
        h = gelu_tanh(m @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"])
        e = e + (h @ w[p + "mlp.fc2.weight"].T + w[p + "mlp.fc2.bias"])
    e = layer_norm(e, w["t.post_layernorm.weight"], w["t.post_layernorm.bias"], c["eps"])
    # projector: AvgPool2d(k) over the channels-first g x g grid, token t = r*side + c
    side = int(round(math.sqrt(c["mm"])))
    kk = g // side
    grid = e.reshape(g, g, Hv)
    pooled = grid.reshape(side, kk, side, kk, Hv).mean(axis=(1, 3)).reshape(side * side, Hv)
    # Gemma3RMSNorm(Hv, eps = vision layer_norm_eps): x / sqrt(mean(x^2) + eps) * (1 + w)
    r = pooled / np.sqrt((pooled ** 2).mean(axis=-1, keepdims=True) + c["eps"])
    r = r * (1.0 + w["p.mm_soft_emb_norm.weight"])
    return r @ w["p.mm_input_projection_weight"]                              # [mm, H], x @ W


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--image-rgb", required=True, help="comma-separated raw RGB8 files")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    v = load_vision(a.model)
    S = v["cfg"]["S"]
    rows = []
    for fn in a.image_rgb.split(","):
        raw = np.fromfile(fn, dtype=np.uint8)
        if raw.size != S * S * 3:
            sys.exit("%s: %d bytes, want %d (%d x %d x 3)" % (fn, raw.size, S * S * 3, S, S))
        rows.append(encode(v, raw.reshape(S, S, 3)))
    np.concatenate(rows).astype("<f8").tofile(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
