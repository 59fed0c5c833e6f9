#!/usr/bin/env python3
"""The include rules of docs/ARCHITECTURE.md §2, checked over every C/CUDA source of a tree.

  check_layout.py ROOT            check ROOT (the repository); exit 1 listing every violation
  check_layout.py --selftest      build small trees that break each rule and check that each is
                                  reported (and that a clean one passes): the checker can fail

Rules:
  1. A library includes only its own headers and those of the libraries below it:
       core <- kernels <- comm <- model <- engine <- worker <- tools
     net (streams, TLS) sits on core and proto on net; engine, worker, tools and the
     coordinator may use proto; worker, tools and the coordinator may use net (the engine
     knows nothing of sockets); the coordinator uses only core, net and proto. A quoted
     header is attributed to the folder that holds it.
  2. Only kernels/cuda and comm include CUDA, cuBLAS or NCCL headers.
  3. Only comm includes mpi.h.
Tests (tests/) may include anything.
"""
import os
import re
import shutil
import sys
import tempfile

LIBS = ["core", "net", "proto", "kernels", "comm", "model", "engine", "worker", "coordinator", "tools"]
ALLOWED = {
    "core": {"core"},
    "net": {"net", "core"},
    "proto": {"proto", "net", "core"},
    "kernels": {"kernels", "core"},
    "comm": {"comm", "kernels", "core"},
    "model": {"model", "comm", "kernels", "core"},
    "engine": {"engine", "model", "comm", "kernels", "core", "proto"},
    "worker": {"worker", "engine", "model", "comm", "kernels", "core", "proto", "net"},
    "coordinator": {"coordinator", "core", "proto", "net"},
    "tools": {"tools", "worker", "engine", "model", "comm", "kernels", "core", "proto", "net"},
}
SRC_EXT = (".c", ".h", ".cu", ".cuh")
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
CUDA_HDR = re.compile(r"^(cuda[^/]*\.h|cuda_.*|cublas.*\.h|cublasLt\.h|nccl.*\.h|curand.*\.h|cusparse.*\.h|"
                      r"cooperative_groups.*|mma\.h|cub/.*|thrust/.*)$")
MPI_HDR = re.compile(r"^(mpi\.h|mpi-ext\.h|mpi_.*\.h|pmix.*\.h)$")


def sources(root):
    for lib in LIBS:
        top = os.path.join(root, lib)
        for dirpath, _, files in os.walk(top):
            for f in sorted(files):
                if f.endswith(SRC_EXT):
                    yield lib, os.path.join(dirpath, f)


def header_owners(root):
    """basename (and relative path) of every header -> the set of libraries that hold it."""
    owners = {}
    for lib, path in sources(root):
        if path.endswith((".h", ".cuh")):
            owners.setdefault(os.path.basename(path), set()).add(lib)
            owners.setdefault(os.path.relpath(path, os.path.join(root, lib)), set()).add(lib)
    return owners


def check(root):
    owners = header_owners(root)
    problems = []
    for lib, path in sources(root):
        rel = os.path.relpath(path, root)
        text = open(path, encoding="utf-8", errors="replace").read()
        for m in INCLUDE.finditer(text):
            kind, name = m.group(1), m.group(2)
            line = text.count("\n", 0, m.start()) + 1
            where = f"{rel}:{line}"
            if CUDA_HDR.match(name) and not (rel.startswith("kernels/cuda/") or lib == "comm"):
                problems.append(f"{where}: includes CUDA/NCCL header <{name}>; only kernels/cuda and comm may")
                continue
            if MPI_HDR.match(name) and lib != "comm":
                problems.append(f"{where}: includes MPI header <{name}>; only comm may")
                continue
            if kind == "<":
                continue
            if name.endswith(".pb-c.h"):
                owner = {"proto"}  # protoc-c output, generated into the build tree
            elif os.path.exists(os.path.join(os.path.dirname(path), name)):
                continue  # a file beside it (matmul_impl.h, cuda_common.cuh)
            else:
                owner = owners.get(name) or owners.get(os.path.basename(name))
            if not owner:
                problems.append(f'{where}: includes "{name}", which no library folder holds')
                continue
            if not owner & ALLOWED[lib]:
                problems.append(f'{where}: {lib} includes "{name}" of {"/".join(sorted(owner))}, '
                                f'above it or beside it (allowed: {", ".join(sorted(ALLOWED[lib]))})')
    return problems


def selftest():
    cases = {
        "engine includes a worker header": ("engine/bad.c", '#include "gs_link.h"\n', "engine includes \"gs_link.h\""),
        "model includes an engine header": ("model/bad.c", '#include "gs_engine.h"\n', "model includes \"gs_engine.h\""),
        "coordinator includes the model": ("coordinator/bad.c", '#include "gs_model.h"\n', "coordinator includes"),
        "engine includes mpi.h": ("engine/bad.c", "#include <mpi.h>\n", "MPI header <mpi.h>"),
        "model includes cuda_runtime.h": ("model/bad.c", "#include <cuda_runtime.h>\n", "CUDA/NCCL header"),
        "worker includes nccl.h": ("worker/bad.c", "#include <nccl.h>\n", "CUDA/NCCL header"),
        "kernels/cpu includes cublas": ("kernels/cpu/bad.c", "#include <cublas_v2.h>\n", "CUDA/NCCL header"),
        "unknown header": ("engine/bad.c", '#include "gs_nowhere.h"\n', "no library folder holds"),
        "engine includes the socket layer": ("engine/bad.c", '#include "gs_net.h"\n', "engine includes \"gs_net.h\""),
        "net includes a proto header": ("net/bad.c", '#include "gs_frame.h"\n', "net includes \"gs_frame.h\""),
    }
    base = {
        "core/gs_status.h": "", "kernels/gs_kernels.h": '#include "gs_status.h"\n',
        "kernels/cuda/k.cu": "#include <cuda_runtime.h>\n#include <cublas_v2.h>\n",
        "comm/gs_comm.h": "", "comm/comm_mpi.c": "#include <mpi.h>\n#include <nccl.h>\n",
        "net/gs_net.h": '#include "gs_status.h"\n', "proto/gs_frame.h": '#include "gs_net.h"\n',
        "model/gs_model.h": '#include "gs_kernels.h"\n#include "gs_comm.h"\n',
        "engine/gs_engine.h": '#include "gs_model.h"\n#include "engine.pb-c.h"\n',
        "worker/gs_link.h": '#include "gs_engine.h"\n',
        "coordinator/c.c": '#include "gs_status.h"\n', "tools/t.c": '#include "gs_link.h"\n',
    }
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        def tree(extra):
            root = os.path.join(tmp, "t")
            shutil.rmtree(root, ignore_errors=True)
            for rel, body in list(base.items()) + list(extra.items()):
                os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
                with open(os.path.join(root, rel), "w") as f:
                    f.write(body)
            return root
        clean = check(tree({}))
        print(("ok  " if not clean else "FAIL") + " a tree that keeps the rules passes" + "".join("\n    " + p for p in clean))
        failed += bool(clean)
        for what, (rel, body, expect) in cases.items():
            got = check(tree({rel: body}))
            ok = len(got) == 1 and expect in got[0] and got[0].startswith(rel + ":1:")
            print(("ok  " if ok else "FAIL") + f" {what}: {got}")
            failed += not ok
    return 1 if failed else 0


def main():
    if sys.argv[1:] == ["--selftest"]:
        return selftest()
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = sys.argv[1]
    n = sum(1 for _ in sources(root))
    problems = check(root)
    for p in problems:
        print(p)
    print(f"{n} sources checked, {len(problems)} violation(s) of the include rules")
    return 1 if problems or n == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
