#!/usr/bin/env python3
"""The systemd units of deploy/systemd/, checked three ways (no systemd is running here):

  1. static: hardening and restart settings, a dedicated user, settings only from
     /etc/gemmashard/*.env, secrets only as paths (example env files included);
  2. `systemd-analyze verify` on copies whose binaries and EnvironmentFile point at this build
     and at test env files (any warning fails), and `systemd-analyze security --offline` with an
     exposure bound;
  3. every --flag of each ExecStart exists in that program's --help (a renamed flag fails), and
     the ExecStart lines, expanded the way systemd expands them (${VAR} one word, $VAR split,
     %i/%H) from env files like the examples, really run: the coordinator and one engine of
     T = 2 under mpirun register over mutual TLS (certificates from deploy/make-cluster-certs.sh),
     answer a request with the API key and refuse one without; ExecReload (SIGHUP) re-reads the
     key file; the stop the units ask for (coordinator: SIGTERM; engine: KillMode=mixed,
     SIGTERM to mpirun only) ends every process within TimeoutStopSec.

usage: test_units.py BUILD_DIR TOKENIZER_JSON MPIRUN SCRATCH"""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
UNITS = os.path.join(REPO, "deploy", "systemd")
sys.path.insert(0, os.path.join(REPO, "tests", "tp"))
from tp_common import free_port, make_model, mpi_env  # noqa: E402

BUILD, TOK, MPIRUN, SCRATCH = sys.argv[1:5]
BUILD, SCRATCH = os.path.abspath(BUILD), os.path.abspath(SCRATCH)
MPIRUN = shutil.which(MPIRUN) or MPIRUN
BIN = {"/usr/local/bin/gemmashard-coordinator": os.path.join(BUILD, "coordinator", "gemmashard-coordinator"),
       "/usr/local/bin/gemmashard-worker": os.path.join(BUILD, "worker", "gemmashard-worker"),
       "/usr/bin/mpirun": MPIRUN}
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)
    return ok


def parse_unit(path):
    """{section: [(key, value), ...]} with continuation lines joined."""
    out, sec, pending = {}, None, ""
    for raw in open(path):
        line = raw.rstrip("\n")
        if pending:
            line = pending + " " + line.strip()
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("[") and s.endswith("]"):
            sec = s[1:-1]
            out.setdefault(sec, [])
            continue
        k, _, v = s.partition("=")
        out[sec].append((k.strip(), v.strip()))
    return out


def values(unit, sec, key):
    return [v for k, v in unit.get(sec, []) if k == key]


def parse_env(path):
    """systemd EnvironmentFile: KEY=value, # and ; comments, optional quotes."""
    env = {}
    for raw in open(path):
        s = raw.strip()
        if not s or s[0] in "#;":
            continue
        k, _, v = s.partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        env[k.strip()] = v
    return env


def expand_exec(line, env, instance="0", host=None):
    """ExecStart the way systemd expands it: specifiers, then ${VAR} as one word and a lone $VAR
    split on whitespace (nothing when empty)."""
    host = host or socket.gethostname()
    line = line.replace("%i", instance).replace("%H", host).replace("%%", "%")
    argv = []
    for word in shlex.split(line):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if m:
            argv += env.get(m.group(1), "").split()
            continue
        argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda mm: env.get(mm.group(1), ""), word))
    return argv


def unit_environment(unit):
    env = {}
    for v in values(unit, "Service", "Environment"):
        for w in shlex.split(v):
            k, _, val = w.partition("=")
            env[k] = val
    return env


def split_programs(argv):
    """[(program, its args)]: mpirun's own args, then the program it runs."""
    progs, cur = [], None
    for a in argv:
        if a in BIN or a in BIN.values():
            cur = (BIN.get(a, a), [])
            progs.append(cur)
        elif cur:
            cur[1].append(a)
    return progs


def help_text(prog):
    env = mpi_env()
    p = subprocess.run([prog, "--help", "all"] if prog == MPIRUN else [prog, "--help"], capture_output=True,
                       text=True, env=env, timeout=60)
    return p.stdout + p.stderr


def http(url, key=None, body=None, timeout=30):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}
    except (urllib.error.URLError, OSError):
        return 0, {}


def live(pids):
    out = []
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(p)
        except OSError:
            pass
    return out


def session_pids(sid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read().rsplit(")", 1)[1].split()
                if int(st[3]) == sid and st[0] != "Z":
                    out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def seconds(v):
    m = re.fullmatch(r"(\d+)s?", v)
    return int(m.group(1)) if m else 90


def main():
    shutil.rmtree(SCRATCH, ignore_errors=True)
    os.makedirs(SCRATCH)
    units = {n: parse_unit(os.path.join(UNITS, n)) for n in ("gemmashard-coordinator.service",
                                                                "gemmashard-engine@.service")}
    examples = {n: parse_env(os.path.join(UNITS, f"{n}.env.example")) for n in ("coordinator", "engine")}

    # ---- 1. static --------------------------------------------------------------------------------
    for name, u in units.items():
        svc = dict(u.get("Service", []))
        for k, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                        ("ProtectHome", "yes"), ("Restart", "on-failure"), ("User", "gemmashard"),
                        ("CapabilityBoundingSet", "")):
            check(svc.get(k) == want, f"{name}: {k}={want} (got {svc.get(k)!r})")
        envfiles = values(u, "Service", "EnvironmentFile")
        check(envfiles and all(re.fullmatch(r"-?/etc/gemmashard/[A-Za-z0-9%_.@-]+\.env", e) for e in envfiles),
              f"{name}: settings from /etc/gemmashard/*.env ({envfiles})")
        text = open(os.path.join(UNITS, name)).read()
        check("--api-key " not in text and "GEMMASHARD_API_KEY" not in text and
              not any("KEY" in w.split("=")[0] for v in values(u, "Service", "Environment") for w in shlex.split(v)),
              f"{name}: no key inline (only the path of a key file)")
    for n, env in examples.items():
        secrets = {k: v for k, v in env.items() if re.search(r"(_FILE|_CA|_CERT|_KEY)$", k)}
        check(secrets and all(v.startswith("/etc/gemmashard/") for v in secrets.values()),
              f"{n}.env.example: every secret is a path under /etc/gemmashard ({sorted(secrets)})")

    # ---- 3a. every flag exists -------------------------------------------------------------------
    helps = {}
    for name, u in units.items():
        env = {**examples["coordinator" if "coordinator" in name else "engine"]}
        argv = expand_exec(values(u, "Service", "ExecStart")[0], env)
        for prog, args in split_programs(argv):
            helps.setdefault(prog, help_text(prog))
            flags = [a for a in args if a.startswith("-") and not re.fullmatch(r"-?\d+", a)]
            bad = [f for f in flags if not re.search(rf"(^|[\s|,\[]){re.escape(f)}($|[\s=<\]|,])", helps[prog], re.M)]
            check(flags and not bad, f"{name}: {os.path.basename(prog)} knows {len(flags)} flags of ExecStart"
                  + (f"; unknown: {bad}" if bad else ""))

    # ---- test env files, certificates, keys, model ----------------------------------------------------
    etc = os.path.join(SCRATCH, "etc")
    os.makedirs(etc)
    certs = os.path.join(etc, "cluster")
    p = subprocess.run([os.path.join(REPO, "deploy", "make-cluster-certs.sh"), certs], capture_output=True, text=True)
    if not check(p.returncode == 0, "make-cluster-certs.sh made the engine-link certificates"):
        print(p.stderr)
        return 1
    key, key2 = "sk-unit-" + os.urandom(12).hex(), "sk-unit2-" + os.urandom(12).hex()
    keyfile = os.path.join(etc, "api-keys")
    with open(os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(f"unit-test {key}\n")
    model = make_model(os.path.join(BUILD, "tools", "gemmashard"), TOK, os.path.join(SCRATCH, "model"), "--preset",
                       "tiny", "--max-pos", "2048")
    hp, gp, ep = free_port(), free_port(), free_port()
    cenv = {**examples["coordinator"], "GS_MODEL": model, "GS_HTTP": f"127.0.0.1:{hp}", "GS_GRPC": f"127.0.0.1:{gp}",
            "GS_ENGINE_LISTEN": f"127.0.0.1:{ep}", "GS_API_KEY_FILE": keyfile,
            "GS_CLUSTER_CA": f"{certs}/ca.crt", "GS_CLUSTER_CERT": f"{certs}/coordinator.crt",
            "GS_CLUSTER_KEY": f"{certs}/coordinator.key", "GS_COORDINATOR_ARGS": "--served-name unit-model"}
    eenv = {**examples["engine"], "GS_MODEL": model, "GS_TP": "2", "GS_COORDINATOR": f"127.0.0.1:{ep}",
            "GS_CLUSTER_CA": f"{certs}/ca.crt", "GS_CLUSTER_CERT": f"{certs}/engine.crt",
            "GS_CLUSTER_KEY": f"{certs}/engine.key",
            "GS_WORKER_ARGS": "--served-name unit-model --threads 1 --ctx 1024 --max-seqs 8"}
    for n, env in (("coordinator", cenv), ("engine", eenv)):
        with open(os.path.join(etc, f"{n}.env"), "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in env.items()))

    # ---- 2. systemd-analyze ------------------------------------------------------------------------
    sa = shutil.which("systemd-analyze")
    if not check(sa is not None, "systemd-analyze is installed (package systemd, deploy/install-deps.sh)"):
        return 1
    vdir = os.path.join(SCRATCH, "units")
    os.makedirs(vdir)
    for name in units:
        text = open(os.path.join(UNITS, name)).read()
        for a, b in BIN.items():
            text = text.replace(a + " ", b + " ")
        text = text.replace("/etc/gemmashard/", etc + "/")
        with open(os.path.join(vdir, name), "w") as f:
            f.write(text)
    names = [os.path.join(vdir, "gemmashard-coordinator.service"), os.path.join(vdir, "gemmashard-engine@0.service")]
    p = subprocess.run([sa, "verify", "--man=no", *names], capture_output=True, text=True, timeout=60)
    check(p.returncode == 0 and not p.stderr.strip() and not p.stdout.strip(),
          f"systemd-analyze verify: exit {p.returncode}, no warnings" + (f": {p.stderr.strip()}" if p.stderr.strip() else ""))
    for path, bound in ((names[0], 2.0), (names[1], 4.0)):
        p = subprocess.run([sa, "security", "--offline=true", path], capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", p.stdout + p.stderr)
        level = float(m.group(1)) if m else 99
        check(level <= bound, f"systemd-analyze security {os.path.basename(path)}: exposure {level} (bound {bound})")
        print(f"figure: {os.path.basename(path)} exposure level {level} of 10")

    # ---- 3b. run the ExecStart lines -------------------------------------------------------------------
    cu, eu = units["gemmashard-coordinator.service"], units["gemmashard-engine@.service"]
    cargv = [BIN.get(a, a) for a in expand_exec(values(cu, "Service", "ExecStart")[0], cenv)]
    eargv = [BIN.get(a, a) for a in expand_exec(values(eu, "Service", "ExecStart")[0], eenv, instance="7")]
    run_env = {**mpi_env(), **unit_environment(eu)}  # as root here: mpi_env allows it (the unit runs as gemmashard)
    logs = {n: open(os.path.join(SCRATCH, f"{n}.log"), "w") for n in ("coordinator", "engine")}
    coord = subprocess.Popen(cargv, stdout=logs["coordinator"], stderr=subprocess.STDOUT, env=mpi_env(),
                             start_new_session=True)
    engine = subprocess.Popen(eargv, stdout=logs["engine"], stderr=subprocess.STDOUT, env=run_env,
                              start_new_session=True)
    base = f"http://127.0.0.1:{hp}"
    try:
        t0 = time.time()
        up = False
        while time.time() - t0 < 90 and coord.poll() is None and engine.poll() is None:
            code, body = http(base + "/health", timeout=2)
            if code == 200 and body.get("engines", 0) >= 1:
                up = True
                break
            time.sleep(0.2)
        check(up, f"the units' ExecStart: coordinator + engine of T=2 up in {time.time() - t0:.1f} s")
        elog = open(os.path.join(SCRATCH, "engine.log")).read()
        check(f"engine '{socket.gethostname()}-7'" in elog and "TLSv1.3" in elog,
              "the engine registered as %H-%i over mutual TLS 1.3")
        req = {"model": "unit-model", "prompt": "Blood pressure", "max_tokens": 4, "temperature": 0}
        code, body = http(base + "/v1/completions", key, req)
        check(code == 200 and body.get("choices"), f"request with the key from GS_API_KEY_FILE -> {code}")
        code, _ = http(base + "/v1/completions", None, req)
        check(code == 401, f"request without a key -> {code}")
        with open(keyfile, "a") as f:
            f.write(f"second {key2}\n")
        reload = expand_exec(values(cu, "Service", "ExecReload")[0].replace("$MAINPID", str(coord.pid)), cenv)
        subprocess.run(reload, check=True)
        t1 = time.time()
        while time.time() - t1 < 10 and http(base + "/v1/completions", key2, req)[0] != 200:
            time.sleep(0.2)
        check(http(base + "/v1/completions", key2, req)[0] == 200, "ExecReload (SIGHUP): a key added to the file works")

        # systemctl stop: the engine (KillMode=mixed: SIGTERM to mpirun only), then the coordinator
        pids = session_pids(engine.pid)
        limit = seconds(dict(eu["Service"]).get("TimeoutStopSec", "90"))
        t2 = time.time()
        os.kill(engine.pid, signal.SIGTERM)
        while live(pids) and time.time() - t2 < limit:
            time.sleep(0.05)
        left = live(pids)
        check(not left, f"engine stop (SIGTERM to mpirun): all {len(pids)} processes gone in {time.time() - t2:.2f} s "
              f"(TimeoutStopSec {limit} s){'; left: ' + str(left) if left else ''}")
        t3 = time.time()
        coord.send_signal(signal.SIGTERM)
        try:
            rc = coord.wait(seconds(dict(cu["Service"]).get("TimeoutStopSec", "90")))
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, f"coordinator stop (SIGTERM): exit {rc} in {time.time() - t3:.2f} s")
    finally:
        for p in (engine, coord):
            for pid in session_pids(p.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
    if failures:
        for n in ("coordinator", "engine"):
            print(f"--- {n}.log ---\n" + open(os.path.join(SCRATCH, f"{n}.log"), errors="replace").read()[-2000:])
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
