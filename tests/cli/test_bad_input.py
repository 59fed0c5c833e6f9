#!/usr/bin/env python3
"""Bad input through the real CLI: each broken checkpoint, tokenizer or request must end
the command with exit code != 0 (not a signal) and one clear message naming the file or
the problem. Usage: test_bad_input.py GEMMASHARD TOKENIZER_JSON SCRATCH_DIR"""
import json
import os
import shutil
import struct
import subprocess
import sys

GS, TOK, SCRATCH = sys.argv[1], sys.argv[2], sys.argv[3]
failures = []
checks = 0


def run(*args):
    p = subprocess.run([GS, *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def expect_fail(name, args, *needles):
    global checks
    checks += 1
    rc, out, err = run(*args)
    ok = rc > 0 and all(n in err for n in needles)
    if rc < 0 or rc >= 128:
        ok = False
    print(f"{'ok  ' if ok else 'FAIL'} {name}: rc={rc} {err.strip().splitlines()[-1] if err.strip() else ''}")
    if not ok:
        failures.append(f"{name}: rc={rc}, stderr={err!r}, wanted {needles}")


def make_model(name, *extra):
    d = os.path.join(SCRATCH, name)
    shutil.rmtree(d, ignore_errors=True)
    rc, out, err = run("make-test-model", "--out", d, "--tokenizer", TOK, "--preset", "tiny",
                       "--vocab", "1024", *extra)
    if rc != 0:
        raise SystemExit(f"make-test-model failed: {err}")
    return d


def read_st(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data):
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def edit_config(d, **kv):
    p = os.path.join(d, "config.json")
    cfg = json.load(open(p))
    for k, v in kv.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    json.dump(cfg, open(p, "w"))


def main():
    os.makedirs(SCRATCH, exist_ok=True)
    good = make_model("good")
    toks = ["--tokens", "2,105,236,7"]
    logits = lambda d, *a: ["logits", "--model", d, *(a or toks), "--out", os.path.join(SCRATCH, "l.bin")]

    # The good model works (so every failure below is caused by its one defect).
    rc, _, err = run(*logits(good))
    if rc != 0:
        raise SystemExit(f"good model failed: {err}")

    # config.json problems.
    d = make_model("cfg_missing"); edit_config(d, hidden_size=None)
    expect_fail("config missing hidden_size", logits(d), "config.json", "hidden_size")
    d = make_model("cfg_type"); edit_config(d, num_hidden_layers="six")
    expect_fail("config wrong type", logits(d), "config.json", "num_hidden_layers")
    d = make_model("cfg_arch"); edit_config(d, architectures=["MistralForCausalLM"])
    expect_fail("config unknown architecture", logits(d), "config.json", "MistralForCausalLM")
    d = make_model("cfg_shape"); edit_config(d, hidden_size=96)
    expect_fail("config contradicts tensor shapes", logits(d), "model.safetensors", "shape", "embed_tokens")
    d = make_model("cfg_heads"); edit_config(d, num_attention_heads=8)
    expect_fail("config heads contradict q_proj", logits(d), "q_proj", "shape")
    d = make_model("cfg_json")
    open(os.path.join(d, "config.json"), "w").write("{\"hidden_size\": 64,")
    expect_fail("config not JSON", logits(d), "config.json", "JSON")

    # safetensors problems.
    st = lambda d: os.path.join(d, "model.safetensors")
    d = make_model("st_trunc")
    size = os.path.getsize(st(d))
    with open(st(d), "r+b") as f:
        f.truncate(size // 2)
    expect_fail("truncated safetensors", logits(d), "model.safetensors")
    d = make_model("st_hdrlen")
    raw = open(st(d), "rb").read()
    open(st(d), "wb").write(struct.pack("<Q", len(raw) * 4) + raw[8:])
    expect_fail("header length beyond file", logits(d), "model.safetensors", "header")
    d = make_model("st_tiny_file")
    open(st(d), "wb").write(b"\x01\x02")
    expect_fail("file shorter than 8 bytes", logits(d), "model.safetensors")
    d = make_model("st_overlap")
    h, data = read_st(st(d))
    names = sorted(k for k in h if k != "__metadata__")
    a, b = h[names[0]], h[names[1]]
    span = b["data_offsets"][1] - b["data_offsets"][0]
    b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + span]
    write_st(st(d), h, data)
    expect_fail("overlapping tensor offsets", logits(d), "model.safetensors", "overlap")
    d = make_model("st_range")
    h, data = read_st(st(d))
    t = h[names[2]]
    span = t["data_offsets"][1] - t["data_offsets"][0]
    t["data_offsets"] = [len(data) - span // 2, len(data) - span // 2 + span]
    write_st(st(d), h, data)
    expect_fail("tensor offsets out of range", logits(d), "model.safetensors")
    d = make_model("st_dtype")
    h, data = read_st(st(d))
    h["model.norm.weight"]["dtype"] = "F8_E4M3"
    write_st(st(d), h, data)
    expect_fail("unknown dtype", logits(d), "model.safetensors", "F8_E4M3")
    d = make_model("st_missing")
    h, data = read_st(st(d))
    del h["model.layers.3.mlp.up_proj.weight"]
    write_st(st(d), h, data)
    expect_fail("missing tensor", logits(d), "layers.3.mlp.up_proj.weight", "missing")
    d = make_model("st_shards", "--shards", "3")
    shards = sorted(f for f in os.listdir(d) if f.startswith("model-0000"))
    os.remove(os.path.join(d, shards[1]))
    expect_fail("shard named in the index but absent", logits(d), shards[1])

    # tokenizer.json problems (run tokenizes; tokenize too).
    d = make_model("tok_unigram")
    tj = json.load(open(os.path.join(d, "tokenizer.json")))
    tj["model"]["type"] = "Unigram"
    json.dump(tj, open(os.path.join(d, "tokenizer.json"), "w"))
    expect_fail("tokenizer not BPE", ["tokenize", "--model", d, "--text", "hi"], "tokenizer.json", "Unigram")
    expect_fail("tokenizer not BPE (run)", ["run", "--model", d, "--prompt", "hi", "--max-tokens", "2"],
                "tokenizer.json")

    # Requests.
    expect_fail("token id >= vocab", logits(good, "--tokens", "2,1024,5"), "1024", "vocabulary")
    expect_fail("negative token id", logits(good, "--tokens", "2,-5"), "--tokens")
    d = make_model("short_ctx", "--max-pos", "16")
    expect_fail("prompt longer than max_position_embeddings (logits)",
                logits(d, "--tokens", ",".join(["7"] * 20)), "max_position_embeddings")
    expect_fail("prompt longer than max_position_embeddings (run)",
                ["run", "--model", d, "--prompt", "word " * 40, "--max-tokens", "4"], "max_position_embeddings")
    expect_fail("bad sampling value", ["run", "--model", good, "--prompt", "hi", "--top-p", "1.5"], "top_p")
    expect_fail("unknown option", ["logits", "--model", good, "--bogus", "1"], "--bogus")
    # --numerics: an unknown mode names the flag; bf16 on a CPU without AVX512_BF16 (the probe told
    # so by GS_CPU_FEATURES_MASK) names the missing feature, on every command that computes.
    for cmd in (logits(good), ["run", "--model", good, "--prompt", "hi", "--max-tokens", "1"],
                ["bench", "--model", good, "--decode-tokens", "1", "--prompt-tokens", "4", "--bw-mb", "16"]):
        expect_fail(f"unknown numerics ({cmd[0]})", cmd + ["--numerics", "fp16"], "--numerics", "fp16")
        os.environ["GS_CPU_FEATURES_MASK"] = "avx512_bf16"
        expect_fail(f"bf16 numerics without AVX512_BF16 ({cmd[0]})", cmd + ["--numerics", "bf16"], "AVX512_BF16")
        del os.environ["GS_CPU_FEATURES_MASK"]
    expect_fail("missing model dir", logits(os.path.join(SCRATCH, "nope")), "nope")
    # --kv-mem sizes the serving engine's pool: refused where no engine is built, and when too small.
    expect_fail("--kv-mem without --batch", ["run", "--model", good, "--prompt", "hi", "--kv-mem", "16"],
                "--kv-mem")
    expect_fail("--kv-mem negative", ["run", "--model", good, "--prompt", "hi", "--kv-mem", "-3"], "--kv-mem")

    # Every command answers --help with exit 0.
    for cmd in ["run", "logits", "tokenize", "inspect", "bench", "make-test-model"]:
        global checks
        checks += 1
        rc, out, err = run(cmd, "--help")
        if rc != 0 or "usage" not in (out + err).lower():
            failures.append(f"{cmd} --help: rc={rc}")

    print(f"{checks} checks, {len(failures)} failures")
    for f in failures:
        print("FAIL", f)
    return 1 if failures or checks == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
