"""The shared harness: subprocess runner (parent side), timing and checking (worker side).

Parent                                            Worker (``python -m bench.harness``, one each)
  write float64 references to refdir/<w>.npz  ->    pin CPUs, set threads, import the framework
  run_framework(): spawn, follow its JSONL    <-    per workload: build + first call (timed),
  log, restart after a crash, kill on timeout        check vs the reference, then median timing

Every line of the JSONL log is one event: ``framework`` (versions, threads), ``skipped``,
``start`` (a workload begins: lets the parent blame a crash or a hang on it) and ``result``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "GRAPHC_NUM_THREADS")


# ----------------------------------------------------------------------------- parent side

def merge_flags(text: str, defaults: dict, force: dict) -> str:
    """'a=1,b=2' with defaults added where absent and ``force`` overriding."""
    flags = dict(item.split("=", 1) for item in filter(None, (s.strip() for s in text.split(",")))
                 if "=" in item)
    for k, v in defaults.items():
        flags.setdefault(k, v)
    flags.update(force)
    return ",".join(f"{k}={v}" for k, v in flags.items())


PYCACHE_PREFIX = Path(tempfile.gettempdir()) / "graphc-bench-pycache"


def byte_compile() -> None:
    """Compile graphc's and bench/'s bytecode once (into PYCACHE_PREFIX when this environment
    writes no bytecode next to the sources), as pip does when it installs a package."""
    env = dict(os.environ)
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_PREFIX)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "graphc", "bench"], cwd=REPO,
                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def worker_env(fw: str, threads: int, device: str, cache: str | None = None) -> dict:
    """The environment of one framework's worker: same thread count for all, explicit caches."""
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        # the peers are installed packages with their bytecode compiled; graphc and bench/ run
        # from this checkout, whose bytecode ``byte_compile`` writes to a scratch prefix, so a
        # fresh worker does not compile graphc from source inside a timed first call
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_PREFIX)
    force = {"compiledir": cache} if cache else {}
    current = merge_flags(env.get("GRAPHC_FLAGS", ""), {}, {})
    if ("device=gpu" in current or "device=cuda" in current) != (device == "gpu"):
        force["device"] = device
    env["GRAPHC_FLAGS"] = merge_flags(env.get("GRAPHC_FLAGS", ""), {"floatX": "float32"}, force)
    # PyTensor 3 defaults to its numba backend, which needs llvmlite < 0.48 (graphc needs 0.50):
    # the classic C backend (CVM) is used unless PYTENSOR_FLAGS names a mode
    force = {"base_compiledir": cache} if cache else {}
    env["PYTENSOR_FLAGS"] = merge_flags(env.get("PYTENSOR_FLAGS", ""),
                                        {"floatX": "float32", "mode": "CVM"}, force)
    if fw == "jax.jit":
        if device == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
        if threads == 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                                " intra_op_parallelism_threads=1").strip()
        if cache:
            env.update(JAX_COMPILATION_CACHE_DIR=cache,
                       JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                       JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    if fw == "torch.compile" and cache:
        env.update(TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"),
                   TORCHINDUCTOR_FX_GRAPH_CACHE="1", TORCHINDUCTOR_AUTOGRAD_CACHE="1")
    return env


def run_framework(fw: str, workloads: list, opts: dict, workdir: Path, cache: str | None = None,
                  first_call_only: bool = False, timeout_s: float = 600.0, budget_s=None,
                  progress=None):
    """Run ``workloads`` on ``fw`` in fresh worker subprocesses; returns (info, results).

    ``results`` maps workload -> list of result dicts (main + variants). A worker that dies or
    hangs costs only the workload it was running: the rest go on in a new worker. With
    ``budget_s``, workloads that would start after that many seconds are skipped.
    """
    env = worker_env(fw, opts["threads"], opts["device"], cache)
    info, results, remaining, attempt = {}, {}, list(workloads), 0
    t_begin = time.monotonic()
    while remaining:
        attempt += 1
        log = workdir / f"{fw}.{attempt}.{os.getpid()}.{time.monotonic_ns()}.jsonl"
        errlog = log.with_suffix(".log")
        cmd = [sys.executable, "-m", "bench.harness", "--framework", fw,
               "--workloads", ",".join(remaining), "--device", opts["device"],
               "--threads", str(opts["threads"]), "--reps", str(opts["reps"]),
               "--warmup", str(opts["warmup"]), "--min-rep-s", str(opts["min_rep_s"]),
               "--max-s", str(opts["max_s"]), "--min-reps", str(opts["min_reps"]),
               "--refdir", str(opts["refdir"]), "--out", str(log)]
        if first_call_only:
            cmd.append("--first-call-only")
        if budget_s is not None:
            cmd += ["--budget-s", str(max(0.0, budget_s - (time.monotonic() - t_begin)))]
        with open(errlog, "w") as err:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=err, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            current, started, seen, killed = None, time.monotonic(), 0, None
            while True:
                rc = proc.poll()
                events = _read_events(log)
                for ev in events[seen:]:
                    if ev["event"] == "start":
                        current, started = ev["workload"], time.monotonic()
                    elif ev["event"] == "result":
                        results.setdefault(ev["workload"], []).append(ev)
                        if progress:
                            progress(fw, ev)
                    elif ev["event"] in ("framework", "skipped"):
                        info = ev
                seen = len(events)
                if rc is not None:
                    break
                if current and time.monotonic() - started > timeout_s:
                    proc.kill()
                    proc.wait()
                    killed = f"timeout: still running after {timeout_s:.0f} s"
                    break
                time.sleep(0.1)
        if info.get("event") == "skipped":
            return info, {}
        done = [w for w in remaining if w in results]
        if current and current not in results:      # died or hung inside a workload
            why = killed or f"worker died (rc={proc.returncode}): {_tail(errlog)}"
            results[current] = [{"workload": current, "status": "error", "error": why}]
        elif len(done) < len(remaining) and not done and rc != 0:
            why = f"worker failed (rc={rc}): {_tail(errlog)}"   # e.g. the import itself failed
            for w in remaining:
                results[w] = [{"workload": w, "status": "error", "error": why}]
            info = info or {"event": "framework", "error": why}
        remaining = [w for w in remaining if w not in results]
    return info, results


def _read_events(path: Path) -> list:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:     # a line being written right now
            break
    return events


def _tail(path: Path, n: int = 300) -> str:
    text = path.read_text(errors="replace").strip() if path.exists() else ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-3:])[-n:] or "no output"


def short_error(exc: BaseException, n: int = 120) -> str:
    msg = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:n]


# ----------------------------------------------------------------------------- checking

def check_outputs(outs, ref, tol: float, names=()) -> dict:
    """Compare each output with its float64 reference: max |out - ref| / max |ref| <= tol."""
    report = {"ran": True, "tol": tol, "max_err": 0.0, "worst": None, "dtypes": []}
    if len(outs) != len(ref):
        return dict(report, ok=False, problem=f"{len(outs)} outputs, expected {len(ref)}")
    names = list(names) + [f"out{i}" for i in range(len(names), len(ref))]
    for name, out, r in zip(names, outs, ref):
        out = np.asarray(out)
        report["dtypes"].append(str(out.dtype))
        if out.shape != r.shape:
            return dict(report, ok=False, worst=name,
                        problem=f"{name}: shape {out.shape}, expected {r.shape}")
        diff = np.abs(out.astype(np.float64) - r)
        err = float(np.max(diff)) / max(float(np.max(np.abs(r))), 1e-30) if r.size else 0.0
        if not np.isfinite(err):
            err = float("inf")
        if report["worst"] is None or err > report["max_err"]:
            report["max_err"], report["worst"] = err, name
    return dict(report, ok=report["max_err"] <= tol)


# ----------------------------------------------------------------------------- timing

def time_steps(step, sync, reps: int, warmup: int, min_rep_s: float, max_s: float,
               min_reps: int = 3, first_s: float | None = None) -> dict:
    """Median seconds per call: warm-up calls, then ``reps`` timed batches of ``inner`` calls
    (enough calls that one batch lasts ``min_rep_s``); stops early after ``max_s`` once
    ``min_reps`` batches are timed. ``warmup=0`` (--quick) still warms up once unless the first
    call (``first_s``, already made) took over a third of ``max_s``."""
    t = first_s or 0.0
    if warmup == 0 and (first_s is None or first_s < max_s / 3):
        warmup = 1
    for _ in range(warmup):
        t0 = time.perf_counter()
        sync(step())
        t = time.perf_counter() - t0
    inner = int(min(10_000, max(1, min_rep_s / max(t, 1e-7))))
    times, deadline = [], time.perf_counter() + max_s
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(inner):
                raw = step()
            sync(raw)
            times.append((time.perf_counter() - t0) / inner)
            if len(times) >= min_reps and time.perf_counter() > deadline:
                break
    finally:
        if gc_was_on:
            gc.enable()
    return {"ms": 1e3 * statistics.median(times), "times_ms": [1e3 * x for x in times],
            "reps": len(times), "inner": inner}


# ----------------------------------------------------------------------------- worker side

def pin_cpus(threads: int) -> list:
    """Restrict this process to ``threads`` CPUs (a hard bound for pools we cannot size)."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])
    return sorted(os.sched_getaffinity(0))


def run_workload(w, fw, args, emit):
    inp = w.inputs(args.device)
    with np.load(Path(args.refdir) / f"{w.name}.npz") as z:
        ref = [z[f"ref{i}"] for i in range(len(z.files))]
    for variant in [None] + w.variants(fw):
        res = {"workload": w.name, "variant": variant}
        try:
            fresh = {k: v.copy() for k, v in inp.items()}
            t0 = time.perf_counter()
            step, collect = w.build(fw, fresh, variant)
            res["build_s"] = time.perf_counter() - t0
            raw = step()
            fw.sync(raw)
            res["first_call_s"] = time.perf_counter() - t0
            outs = w.compare_form(tuple(collect(raw)), inp)
            res["check"] = check_outputs(outs, ref, w.tol, w.output_names())
            res["status"] = "ok" if res["check"]["ok"] else "mismatch"
            del raw, outs
            if not args.first_call_only:
                reps = max(args.min_reps, int(round(args.reps * w.reps_scale)))
                res.update(time_steps(step, fw.sync, reps, args.warmup, args.min_rep_s,
                                      args.max_s * w.reps_scale, args.min_reps,
                                      res["first_call_s"]))
        except Exception as exc:
            res.update(status="error", error=short_error(exc),
                       traceback=traceback.format_exc(limit=-8))
        emit(dict(res, event="result"))


def worker_main(argv=None):
    from . import frameworks
    from .workloads import by_name
    p = argparse.ArgumentParser(prog="python -m bench.harness",
                                description="one framework's worker")
    p.add_argument("--framework", required=True, choices=frameworks.FRAMEWORKS)
    p.add_argument("--workloads", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-rep-s", type=float, default=0.01)
    p.add_argument("--max-s", type=float, default=20.0)
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument("--refdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--first-call-only", action="store_true")
    p.add_argument("--budget-s", type=float, help="skip workloads that would start after this")
    args = p.parse_args(argv)
    t_begin = time.monotonic()
    out = open(args.out, "a")

    def emit(ev):
        out.write(json.dumps(ev, default=str) + "\n")
        out.flush()

    cpus = pin_cpus(args.threads)
    fw = frameworks.make(args.framework)
    try:
        info = fw.setup(args.device, args.threads)
    except frameworks.Skip as why:
        emit({"event": "skipped", "reason": str(why)})
        return 0
    emit(dict(info, event="framework", cpus=cpus,
              env={v: os.environ.get(v) for v in THREAD_VARS + ("GRAPHC_FLAGS", "PYTENSOR_FLAGS")}))
    table = by_name()
    for name in args.workloads.split(","):
        emit({"event": "start", "workload": name})
        if args.budget_s is not None and time.monotonic() - t_begin > args.budget_s:
            emit({"event": "result", "workload": name, "status": "skipped",
                  "reason": f"--quick: this framework's {args.budget_s:.0f} s budget is spent"})
        elif name.startswith("models"):
            from .models import run_models
            run_models(fw, args, emit)
        else:
            run_workload(table[name], fw, args, emit)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
