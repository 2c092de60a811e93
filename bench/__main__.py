"""``python -m bench``: graphc side by side with numpy, PyTorch, torch.compile, jax.jit, PyTensor.

    python -m bench                       # the full suite, every installed peer
    python -m bench --quick               # < 2 minutes: fewer repetitions, same sizes
    python -m bench --only mlp_step,compile --peers numpy,jax --reps 10 --json out.json
    GRAPHC_FLAGS=device=gpu python -m bench    # GPU sizes; peers on CUDA / CuPy

Exit status 1 when any graphc result raised or disagreed with the float64 reference.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import frameworks, report
from .harness import REPO, THREAD_VARS, byte_compile, worker_env, run_framework
from .limits import machine_info
from .models import discover as discover_models
from .workloads import all_workloads

EXTRA = ("compile", "models", "limits")
COMPILERS = ("graphc", "pytensor", "torch.compile", "jax.jit")   # have a persistent compile cache
QUICK_SKIP = {("torch.compile", "lstm_step"): "--quick: its 50-step unrolled compile takes ~1 min",
              ("pytensor", "lstm_step"): "--quick: compiling its scan gradient takes ~9 s",
              ("pytensor", "dispatch"): "--quick: its optimizer takes ~10 s on the 200-op chain"}
# --quick runs the cheap workloads first, so that a spent budget skips the expensive ones
QUICK_ORDER = ("dispatch", "softmax_xent_grad", "scan_overhead", "elemwise", "mlp_step",
               "convnet_step", "lstm_step")
QUICK_PEER_TIMEOUT_S = 30          # --quick: one peer workload running longer is skipped
QUICK_PEER_BUDGET_S = 12           # --quick: a peer's workloads starting later are skipped
QUICK_COMPILE_BUDGET_S = 15        # --quick: compile rows starting later are skipped


def parse_args(argv):
    names = [w.name for w in all_workloads()] + list(EXTRA)
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="workloads: " + ", ".join(names))
    p.add_argument("--quick", action="store_true", help="fewer repetitions (same sizes), "
                   "compile workload on graphc only, slow peer compiles skipped; < 2 minutes")
    p.add_argument("--only", help="comma-separated workloads (default: all)")
    p.add_argument("--reps", type=int, help="timed repetitions per workload (default 20, quick 5)")
    p.add_argument("--peers", help="comma-separated peers (default: all installed): "
                   + ",".join(frameworks.PEERS) + "; 'none' for graphc alone")
    p.add_argument("--json", default=str(REPO / "bench" / "results" / "latest.json"),
                   help="where to write the JSON record (default bench/results/latest.json)")
    p.add_argument("--chart", help="PNG path (default: the JSON path with .png)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads for every framework (default: all usable cores)")
    p.add_argument("--device", choices=("cpu", "gpu"),
                   help="default: from GRAPHC_FLAGS (device=gpu or cuda), else cpu")
    p.add_argument("--timeout", type=float, help="seconds one workload may run in a worker")
    args = p.parse_args(argv)
    only = [s.strip() for s in (args.only or "").split(",") if s.strip()]
    bad = [s for s in only if s not in names]
    if bad:
        p.error(f"unknown workload(s) {bad}; choose from {names}")
    args.only = only or names
    peers = [s.strip() for s in (args.peers or ",".join(frameworks.PEERS)).split(",") if s.strip()]
    peers = [frameworks.ALIASES.get(s, s) for s in peers if s != "none"]
    bad = [s for s in peers if s not in frameworks.PEERS]
    if bad:
        p.error(f"unknown peer(s) {bad}; choose from {list(frameworks.PEERS)}")
    args.peers = peers
    return args


def resolve_device(arg) -> str:
    if arg:
        return arg
    flags = dict(s.split("=", 1) for s in os.environ.get("GRAPHC_FLAGS", "").split(",") if "=" in s)
    return "gpu" if flags.get("device", "cpu").strip() in ("gpu", "cuda") else "cpu"


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def progress(fw, ev):
    name = ev["workload"] + (f" [{ev['variant']}]" if ev.get("variant") else "")
    if ev.get("status") in ("ok", "mismatch"):
        msg = f"{report.fmt_ms(ev.get('ms'))}, first call {report.fmt_s(ev.get('first_call_s'))}"
        if ev["status"] == "mismatch":
            c = ev["check"]
            msg += (f"  !!! MISMATCH vs float64 reference: max rel. error {c['max_err']:.3g} > "
                    f"{c['tol']:g} in {c.get('worst')} {c.get('problem', '')}")
    else:
        msg = ev.get("error") or ev.get("note") or ev.get("status")
    say(f"  [{fw}] {name}: {msg}")


def write_references(workloads, device, refdir: Path) -> dict:
    """float64 references, computed once in the parent; returns each workload's work dict."""
    work = {}
    for w in workloads:
        inp = w.inputs(device)
        ref = w.reference(inp)
        np.savez(refdir / f"{w.name}.npz", **{f"ref{i}": np.asarray(r) for i, r in enumerate(ref)})
        work[w.name] = w.work(inp)
    return work


def measure_limits(args, device) -> dict:
    env = worker_env("numpy", args.threads, device)
    cmd = [sys.executable, "-m", "bench.limits", "--threads", str(args.threads), "--device", device,
           "--reps", "2" if args.quick else "5"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return {"cpu": {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}}
    return json.loads(proc.stdout)


def main(argv=None) -> int:
    t_start = time.monotonic()
    args = parse_args(argv)
    device = resolve_device(args.device)
    opts = {"threads": args.threads, "device": device,
            "reps": args.reps or (5 if args.quick else 20), "warmup": 0 if args.quick else 3,
            "min_rep_s": 0.003 if args.quick else 0.02, "max_s": 1.5 if args.quick else 15.0,
            "min_reps": 1 if args.quick else 3}
    timeout = args.timeout or (120 if args.quick else 900)
    base = [w for w in all_workloads() if w.name in args.only]
    compile_targets = (base or all_workloads()) if "compile" in args.only else []
    workdir = Path(tempfile.mkdtemp(prefix="graphc-bench-"))
    opts["refdir"] = workdir
    record = new_record(args, device, opts, argv)
    fws = record["frameworks"]
    say(f"graphc bench: device={device}, threads={args.threads}, reps={opts['reps']}"
        f"{', quick' if args.quick else ''}; workdir {workdir}")

    byte_compile()
    work = write_references({w.name: w for w in base + compile_targets}.values(), device, workdir)
    if "limits" in args.only or any(w.bound for w in base):
        say("measuring machine limits ...")
        record["limits"] = measure_limits(args, device)
    results = run_steady(base, fws, args, opts, workdir, timeout)
    lim = (record.get("limits") or {}).get("gpu" if device == "gpu" else "cpu")
    record["workloads"] = {}
    for w in base:
        wres = results[w.name]
        variants = [v for r in wres.values() for v in r.get("extra", {}).values()]
        for r in list(wres.values()) + variants:
            r["rate"] = report.rate(work[w.name], r.get("ms"))
        record["workloads"][w.name] = {
            "description": w.description, "work": work[w.name], "bound": w.bound,
            "bound_ms": report.bound_ms(w.bound, work[w.name], lim), "tol": w.tol,
            "results": wres, "graphc_over_best": report.ratios(wres)}
    if compile_targets:
        record["compile"] = run_compile(compile_targets, fws, args, opts, workdir, timeout)
    if "models" in args.only:
        record["models"] = run_models(opts, workdir, timeout)

    for info in fws.values():
        if info["status"] == "pending":
            info.update(status="not run", reason="no selected workload ran it")
    failures = graphc_failures(record)
    record["graphc_failures"] = failures
    record["wall_s"] = round(time.monotonic() - t_start, 1)
    record["machine"]["loadavg_end"] = os.getloadavg()
    json_path = Path(args.json)
    report.write_json(record, json_path)
    print(report.markdown(record))
    print()
    chart = Path(args.chart) if args.chart else json_path.with_suffix(".png")
    say(report.write_chart(record, chart))
    say(f"json: {json_path}  ({record['wall_s']} s)")
    shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        say("\n" + "!" * 72 + "\ngraphc FAILURES:\n" + "\n".join(f"  {f}" for f in failures)
            + "\n" + "!" * 72)
        return 1
    return 0


def new_record(args, device, opts, argv) -> dict:
    """The JSON record's header: command, machine, settings, and which frameworks will run."""
    machine = dict(machine_info(), loadavg_start=os.getloadavg())
    record = {"schema": 1, "created": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": ["python", "-m", "bench"] + list(sys.argv[1:] if argv is None else argv),
              "quick": args.quick, "device": device, "threads": args.threads,
              "settings": {k: v for k, v in opts.items() if k != "refdir"},
              "thread_env": {v: str(args.threads) for v in THREAD_VARS},
              "machine": machine, "notes": []}
    busy = machine["loadavg_start"][0]
    if busy > 0.5 * machine["usable_cpus"] and args.threads > 1:
        record["notes"].append(
            f"the machine was busy at the start (load {busy:.1f} on {machine['usable_cpus']} "
            "CPUs): with other processes on the cores, multi-threaded timings (OpenMP spin-waits "
            "in PyTorch especially) can be several times slower; --threads 1 is steadier")
        say("WARNING: " + record["notes"][-1])
    if device == "gpu":
        record["notes"].append("device=gpu: elemwise uses 2^26 elements; numpy column runs CuPy")
    fws = {}
    for fw in frameworks.FRAMEWORKS:
        if fw != "graphc" and fw not in args.peers:
            fws[fw] = {"status": "not selected", "reason": "not in --peers"}
        elif not frameworks.installed(fw):
            fws[fw] = {"status": "not installed", "reason": "not installed"}
        else:
            fws[fw] = {"status": "pending"}
    record["frameworks"] = fws
    return record


def run_steady(base, fws, args, opts, workdir, timeout) -> dict:
    """Steady state + first call of every workload, one worker per framework.
    Returns {workload: {framework: result}}; updates ``fws`` with each framework's info."""
    results = {w.name: {} for w in base}
    for fw in [f for f in frameworks.FRAMEWORKS if fws[f]["status"] == "pending"]:
        todo = [w.name for w in base if not (args.quick and (fw, w.name) in QUICK_SKIP)]
        if args.quick:
            todo.sort(key=QUICK_ORDER.index)
        if not todo:
            continue
        for name in (w.name for w in base if w.name not in todo):
            results[name][fw] = {"status": "skipped", "reason": QUICK_SKIP[(fw, name)]}
        say(f"{fw}:")
        peer_quick = args.quick and fw != "graphc"
        t = QUICK_PEER_TIMEOUT_S if peer_quick else timeout
        t0 = time.monotonic()
        info, res = run_framework(fw, todo, opts, workdir, timeout_s=t, progress=progress,
                                  budget_s=QUICK_PEER_BUDGET_S if peer_quick else None)
        fws[fw] = dict(_framework_status(info), wall_s=round(time.monotonic() - t0, 1))
        if fws[fw]["status"] == "skipped":
            say(f"  [{fw}] skipped: {fws[fw]['reason']}")
            for r in results.values():
                r.pop(fw, None)
        for name, evs in res.items():
            main_res = next((e for e in evs if not e.get("variant")), evs[0])
            if peer_quick and "timeout" in main_res.get("error", ""):
                main_res = {"status": "skipped", "reason": f"--quick: over {t} s (cold cache?)"}
            extra = {e["variant"]: _clean(e) for e in evs if e.get("variant")}
            results[name][fw] = dict(_clean(main_res), **({"extra": extra} if extra else {}))
    return results


def run_models(opts, workdir, timeout) -> dict:
    found = discover_models()
    if not found:
        say("models: no models yet")
        return {"found": [], "note": "no models yet", "results": {}}
    say("models:")
    _, res = run_framework("graphc", ["models"], opts, workdir, timeout_s=timeout,
                           progress=progress)
    return {"found": found, "results": {k: _clean(v[0]) for k, v in res.items() if k != "models"}}


def run_compile(targets, fws, args, opts, workdir, timeout) -> dict:
    """First call in a fresh subprocess with a cold, then a warm, persistent compile cache."""
    which = [fw for fw in COMPILERS if fws[fw]["status"] in ("ok", "pending")
             and (fw == "graphc" or not args.quick)]
    out = {w.name: {} for w in targets}
    say(f"compile (cold / warm cache, fresh process each): {', '.join(which)}")
    t0 = time.monotonic()
    if args.quick:
        targets = sorted(targets, key=lambda w: QUICK_ORDER.index(w.name))
    # workload by workload, every framework in turn: the rows compared with each other run
    # seconds apart, so a change of load on a shared machine (minutes apart when one
    # framework ran all its workloads before the next) does not decide which is faster
    for w in targets:
        for fw in which:
            if args.quick and time.monotonic() - t0 > QUICK_COMPILE_BUDGET_S:
                out[w.name][fw] = {"status": "skipped",
                                   "error": f"--quick: {QUICK_COMPILE_BUDGET_S} s budget spent"}
                continue
            cache = workdir / f"cache-{fw}-{w.name}"
            row = {}
            for phase in ("cold", "warm"):
                _, res = run_framework(fw, [w.name], opts, workdir, cache=str(cache),
                                       first_call_only=True, timeout_s=timeout)
                r = (res.get(w.name) or [{"status": "error", "error": "no result"}])[0]
                if r.get("status") != "ok":
                    row = {"status": r.get("status", "error"), "error": r.get("error", "")}
                    if r.get("status") == "mismatch":
                        row["error"] = f"max rel. error {r['check']['max_err']:.3g}"
                    break
                row[f"{phase}_s"] = r["first_call_s"]
                row["status"] = "ok"
            if fws[fw]["status"] == "pending" and row.get("status") == "ok":
                fws[fw]["status"] = "ok"
            out[w.name][fw] = row
            say(f"  [{fw}] {w.name}: " + (f"cold {report.fmt_s(row['cold_s'])}, warm "
                                          f"{report.fmt_s(row['warm_s'])}" if row["status"] == "ok"
                                          else f"{row['status']}: {row.get('error')}"))
            shutil.rmtree(cache, ignore_errors=True)
    return out


def graphc_failures(record) -> list:
    fails = []
    for name, w in record.get("workloads", {}).items():
        g = w["results"].get("graphc")
        if g and g.get("status") in ("error", "mismatch"):
            fails.append(f"{name}: {_why(g)}")
    for name, c in (record.get("compile") or {}).items():
        g = c.get("graphc")
        if g and g.get("status") in ("error", "mismatch"):
            fails.append(f"compile/{name}: {g.get('status')}: {g.get('error')}")
    for name, r in (record.get("models") or {}).get("results", {}).items():
        if r.get("status") in ("error", "mismatch"):
            fails.append(f"{name}: {_why(r)}")
    return fails


def _why(r) -> str:
    if r.get("status") == "mismatch":
        c = r["check"]
        return f"MISMATCH max rel. error {c['max_err']:.3g} > {c['tol']:g} ({c.get('worst')})"
    return f"error: {r.get('error')}"


def _framework_status(info) -> dict:
    if info.get("event") == "skipped":
        return {"status": "skipped", "reason": info.get("reason")}
    if info.get("error"):
        return {"status": "error", "reason": info["error"]}
    return dict({k: v for k, v in info.items() if k != "event"}, status="ok")


def _clean(ev) -> dict:
    return {k: v for k, v in ev.items() if k not in ("event", "workload", "variant")}


if __name__ == "__main__":
    sys.exit(main())
