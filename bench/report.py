"""Reporting: Markdown tables on stdout, the JSON record, the PNG chart."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .frameworks import FRAMEWORKS, PEERS

BOUND_LABEL = {"bandwidth": "copy-bandwidth bound", "sgemm": "sgemm-peak bound"}


def fmt_ms(ms) -> str:
    if ms is None or not math.isfinite(ms):
        return "-"
    if ms < 1:
        return f"{ms * 1e3:.3g} µs"
    if ms < 1000:
        return f"{ms:.3g} ms"
    return f"{ms / 1e3:.3g} s"


def fmt_s(s) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.2g} ms" if s < 0.01 else f"{s:.3g} s"


def rate(work: dict, ms: float):
    """(value, unit) of the workload's natural rate at ``ms`` per call, or None."""
    if not ms:
        return None
    if "per" in work:
        count, unit = work["per"]
        return 1e3 * ms / count, f"µs/{unit}"
    if "flops" in work:
        return work["flops"] / ms / 1e6, "GFLOP/s"
    if "bytes" in work:
        return work["bytes"] / ms / 1e6, "GB/s"
    return None


def bound_ms(kind, work: dict, limits: dict | None):
    """Time the physical limit allows for one call (None where no simple bound applies)."""
    if not kind or not limits:
        return None
    if kind == "bandwidth" and limits.get("copy_GBps"):
        return work["bytes"] / limits["copy_GBps"] / 1e6
    if kind == "sgemm" and limits.get("sgemm_GFLOPs"):
        return work["flops"] / limits["sgemm_GFLOPs"] / 1e6
    return None


def cell(res: dict | None, fw_status: dict) -> str:
    if res is None:
        st = fw_status.get("status")
        return {"not installed": "not installed", "skipped": "skipped"}.get(st, "-")
    st = res.get("status")
    if st == "error":
        return "error: " + res.get("error", "?").replace("|", "/")[:70]
    if st == "skipped":
        return "skipped"
    text = f"{fmt_ms(res.get('ms'))} / {fmt_s(res.get('first_call_s'))}"
    return ("**MISMATCH** " + text) if st == "mismatch" else text


def best_peer(results: dict, key: str):
    """The fastest peer whose result passed the check: (name, value)."""
    ok = [(r[key], fw) for fw, r in results.items()
          if fw in PEERS and r.get("status") == "ok" and r.get(key)]
    if not ok:
        return None, None
    value, fw = min(ok)
    return fw, value


def ratios(results: dict) -> dict:
    g = results.get("graphc", {})
    out = {}
    for key, label in (("ms", "steady"), ("first_call_s", "first_call")):
        fw, value = best_peer(results, key)
        if fw and g.get("status") == "ok" and g.get(key):
            out[label] = {"ratio": g[key] / value, "best_peer": fw}
    return out


def markdown(record: dict) -> str:
    """The whole report: header, main table, notes, compile table, models."""
    lines = _header(record)
    if record["workloads"]:
        lines += [""] + _main_table(record)
    notes = _notes(record)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    if record.get("compile"):
        lines += [""] + _compile_table(record)
    models = record.get("models")
    if models is not None:
        lines.append("")
        if not models.get("found"):
            lines.append("models: no models yet (add models/<name>/bench_step.py, see "
                         "docs/benchmarks.md).")
        else:
            lines += ["| model | graphc per step / first call | description |", "|---|---|---|"]
            for name, r in models["results"].items():
                lines.append(f"| {name} | {cell(r, {})} | {r.get('description', '')} |")
    return "\n".join(lines)


def _header(record) -> list:
    fws, m = record["frameworks"], record["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cpus']} usable), "
             f"{m.get('memory_gib')} GiB; Python {m['python']}; device={record['device']}; "
             f"threads={record['threads']} for every framework."]
    if m.get("loadavg_start"):
        lines.append(f"Load average (1 min) at start {m['loadavg_start'][0]:.2f}, at end "
                     f"{m.get('loadavg_end', [float('nan')])[0]:.2f}.")
    vers = ", ".join(f"{fw} {fws[fw].get('version', '?')}" for fw in FRAMEWORKS
                     if fws[fw].get("status") == "ok")
    lines.append(f"Versions: {vers or 'none ran'}.")
    for dev, lim in (record.get("limits") or {}).items():
        if isinstance(lim, dict) and "error" in lim:
            lines.append(f"Limits ({dev}): not measured: {lim['error']}")
        elif isinstance(lim, dict) and "copy_GBps" in lim:
            lines.append(f"Limits ({dev}): copy {lim['copy_GBps']:.1f} GB/s, "
                         f"triad {lim.get('triad_GBps', float('nan')):.1f} GB/s "
                         f"({lim['bandwidth_method']}); sgemm {lim['sgemm_GFLOPs']:.0f} GFLOP/s "
                         f"({lim['sgemm_method']}).")
    return lines


def _main_table(record) -> list:
    fws = record["frameworks"]
    head = ["workload", *FRAMEWORKS, "graphc/best", "graphc/best 1st call", "graphc rate", "bound"]
    lines = ["Each cell: steady-state median per call / first call (build + compile + run). "
             "Ratios: graphc time / fastest peer that passed the check (< 1: graphc faster).", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for name, w in record["workloads"].items():
        res = w["results"]
        row = [name] + [cell(res.get(fw), fws.get(fw, {})) for fw in FRAMEWORKS]
        r = w.get("graphc_over_best", {})
        row += [f"{r[k]['ratio']:.2f}x ({r[k]['best_peer']})" if k in r else "-"
                for k in ("steady", "first_call")]
        g = res.get("graphc", {})
        rt = g.get("rate")
        row.append(f"{rt[0]:.3g} {rt[1]}" if rt and g.get("status") == "ok" else "-")
        row.append(f"≥ {fmt_ms(w['bound_ms'])}" if w.get("bound_ms") else "-")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _notes(record) -> list:
    """Variants, skips, mismatches (loudly), frameworks not run, framework notes."""
    fws, notes = record["frameworks"], []
    for name, w in record["workloads"].items():
        for fw, r in w["results"].items():
            for variant, v in r.get("extra", {}).items():
                notes.append(f"{name}, {fw} ({variant}): {cell(v, {})}")
            if r.get("status") == "skipped" and r.get("reason"):
                notes.append(f"{name} on {fw} skipped: {r['reason']}")
            if r.get("status") == "mismatch":
                c = r["check"]
                problem = f", {c['problem']}" if c.get("problem") else ""
                notes.append(f"**MISMATCH** {name} on {fw}: max rel. error {c['max_err']:.3g} "
                             f"> {c['tol']:g} ({c.get('worst')}{problem})")
    skipped = [f"{fw} ({fws[fw].get('reason', fws[fw]['status'])})" for fw in FRAMEWORKS
               if fws[fw].get("status") != "ok"]
    if skipped:
        notes.append("Not run: " + ", ".join(skipped) + ".")
    for fw in FRAMEWORKS:
        notes += [f"{fw}: {note}" for note in fws[fw].get("notes", [])]
    return notes + record.get("notes", [])


def _compile_table(record) -> list:
    comp = record["compile"]
    cfws = [fw for fw in FRAMEWORKS if any(fw in c for c in comp.values())]
    lines = ["First call in a fresh process, cold persistent cache / warm persistent cache:", "",
             "| workload | " + " | ".join(cfws) + " |",
             "|" + "|".join(["---"] * (len(cfws) + 1)) + "|"]
    for name, c in comp.items():
        row = [name]
        for fw in cfws:
            r = c.get(fw)
            if r is None:
                row.append("-")
            elif r.get("status") != "ok":
                row.append(f"{r.get('status')}: {r.get('error', '')[:60]}")
            else:
                row.append(f"{fmt_s(r['cold_s'])} / {fmt_s(r['warm_s'])}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def write_json(record: dict, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")   # concurrent runs share the folder
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(path)


def write_chart(record: dict, path: Path) -> str:
    """One panel per workload: bars per framework, the physical bound as a dashed line."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed"
    items = [(n, w) for n, w in record["workloads"].items()
             if any(r.get("ms") for r in w["results"].values())]
    if not items:
        return "chart skipped: nothing was timed"
    ncol = min(4, len(items))
    nrow = math.ceil(len(items) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    colors = dict(zip(FRAMEWORKS, ("tab:red", "tab:gray", "tab:orange", "tab:brown",
                                   "tab:blue", "tab:green")))
    for ax, (name, w) in zip(axes.flat, items):
        fws = [fw for fw in FRAMEWORKS if w["results"].get(fw, {}).get("ms")]
        vals = [w["results"][fw]["ms"] for fw in fws]
        bars = ax.bar(range(len(fws)), vals, color=[colors[f] for f in fws])
        for bar, fw in zip(bars, fws):
            if w["results"][fw].get("status") == "mismatch":
                bar.set_hatch("xx")
        ax.set_xticks(range(len(fws)), [f.replace(".", ".\n") for f in fws], fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("ms per call")
        if w.get("bound_ms"):
            ax.axhline(w["bound_ms"], color="k", ls="--", lw=1,
                       label=BOUND_LABEL.get(w.get("bound"), "bound"))
            ax.legend(fontsize=7)
        if vals and max(vals) / max(min(vals), 1e-12) > 50:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    fig.suptitle(f"graphc vs peers ({record['device']}, {record['threads']} threads)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart: {path}"
