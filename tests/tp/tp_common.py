"""Shared helpers for the tensor-parallel tests: real mpirun ranks as root, oversubscribed."""
import os
import shutil
import subprocess
import time

import numpy as np

PML = {
    "ob1": ["--mca", "pml", "ob1"],
    "ucx": ["--mca", "pml", "ucx", "--mca", "pml_ucx_tls", "any", "--mca", "pml_ucx_devices", "any"],
}


def mpi_env():
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_mpi_yield_when_idle="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none")
    return env


def mpirun(mpirun_bin, np_, argv, pml="ob1", timeout=300, mpmd=None):
    """Run argv on np_ ranks (or an MPMD list of (np, argv)). Returns (rc, out, err, seconds)."""
    cmd = [mpirun_bin, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", *PML[pml]]
    if mpmd:
        parts = []
        for i, (n, a) in enumerate(mpmd):
            if i:
                parts.append(":")
            parts += ["-np", str(n), *a]
        cmd += parts
    else:
        cmd += ["-np", str(np_), *argv]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=mpi_env())
    return p.returncode, p.stdout, p.stderr, time.time() - t0


def make_model(gs, tok, out, *flags):
    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.run([gs, "make-test-model", "--out", out, "--tokenizer", tok, *flags],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"make-test-model {flags}: {p.stderr}")
    return out


def rel_l2_rows(a, b):
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)
