#!/usr/bin/env python3
"""Bad input to a tensor-parallel job: each ends the whole job with one clear message from
the rank that saw it, exit != 0, and no rank left hanging (the job ends within seconds).

usage: test_tp_bad_input.py GEMMASHARD WORKER MPIRUN TOKENIZER SCRATCH"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from tp_common import make_model, mpirun  # noqa: E402

GS, WORKER, MPIRUN, TOK, SCRATCH = sys.argv[1:6]
failures = []


def expect(name, res, *needles, max_lines=1, max_secs=30):
    rc, out, err, secs = res
    lines = [l for l in err.splitlines() if "error:" in l]
    ok = rc != 0 and all(n in err for n in needles) and 1 <= len(lines) <= max_lines and secs < max_secs
    print(f"{'ok  ' if ok else 'FAIL'} {name}: rc={rc} {secs:.1f}s {lines}")
    if not ok:
        failures.append(f"{name}: rc={rc} secs={secs:.1f} stderr:\n{err}")


def main():
    os.makedirs(SCRATCH, exist_ok=True)
    a = make_model(GS, TOK, os.path.join(SCRATCH, "a"), "--preset", "tiny", "--vocab", "1000", "--heads", "4",
                   "--kv-heads", "2")
    b = make_model(GS, TOK, os.path.join(SCRATCH, "b"), "--preset", "tiny", "--vocab", "1000", "--heads", "4",
                   "--kv-heads", "2", "--seed", "99")
    c = make_model(GS, TOK, os.path.join(SCRATCH, "c"), "--preset", "tiny", "--vocab", "1000", "--shards", "2")
    os.remove(os.path.join(c, "model-00002-of-00002.safetensors"))
    w = [WORKER, "--tokens", "2,5,6,7", "--generate", "2", "--threads", "1"]

    expect("T does not divide the query heads", mpirun(MPIRUN, 3, [*w, "--model", a]),
           "tensor-parallel degree 3", "4 query heads")
    expect("ranks given different model folders",
           mpirun(MPIRUN, 0, None, mpmd=[(1, [*w, "--model", a]), (1, [*w, "--model", b])]),
           "different checkpoint", a, b)
    expect("a rank cannot open its shard",
           mpirun(MPIRUN, 0, None, mpmd=[(1, [*w, "--model", a]), (1, [*w, "--model", c])]),
           "[gemmashard r1]", "model-00002-of-00002.safetensors")
    expect("token id beyond the vocabulary", mpirun(MPIRUN, 2, [*w[:1], "--tokens", "2,5000", "--model", a]),
           "5000", "vocabulary")
    expect("unknown option on one rank only",
           mpirun(MPIRUN, 0, None, mpmd=[(1, [*w, "--model", a]), (1, [*w, "--model", a, "--bogus", "1"])]),
           "--bogus")
    expect("unknown device", mpirun(MPIRUN, 2, [*w, "--model", a, "--device", "tpu"]),
           "--device must be cpu or cuda", "tpu")
    expect("unknown numerics", mpirun(MPIRUN, 2, [*w, "--model", a, "--numerics", "fp16"]),
           "--numerics must be fp32 or bf16", "fp16")
    expect("numerics with --device cuda", mpirun(MPIRUN, 2, [*w, "--model", a, "--device", "cuda", "--numerics", "bf16"]),
           "--numerics is a CPU mode")
    os.environ["GS_CPU_FEATURES_MASK"] = "avx512_bf16"  # every rank's probe: no AVX512_BF16
    expect("bf16 numerics on CPUs without AVX512_BF16", mpirun(MPIRUN, 2, [*w, "--model", a, "--numerics", "bf16"]),
           "creating the CPU backend", "AVX512_BF16")
    del os.environ["GS_CPU_FEATURES_MASK"]
    if not os.path.exists("/dev/nvidia0"):
        expect("--device cuda on a host without a GPU", mpirun(MPIRUN, 2, [*w, "--model", a, "--device", "cuda"]),
               "setting up the device", "--device cuda: ")
    else:
        print("(a GPU is present: the no-GPU --device cuda case is not applicable here)")
    # Control: the same job with good input works on 2 ranks.
    rc, out, err, secs = mpirun(MPIRUN, 2, [*w, "--model", a])
    if rc != 0 or len(out.split()) != 2:
        failures.append(f"control run failed: rc={rc} out={out!r} err={err}")
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
