"""The ``models`` workload: one training step of each model in ``models/``, on graphc.

Convention (documented in docs/benchmarks.md): a model ``models/<name>/`` that wants to be
benchmarked has a module ``models/<name>/bench_step.py`` with a function ``bench_step()``
that builds the model with graphc and returns ``(step, description)``: ``step()`` runs one
training step (its return value, e.g. the loss, is ignored) and ``description`` is one line.
"""
from __future__ import annotations

import importlib
import time
import traceback

from .harness import REPO, short_error, time_steps


def discover() -> list:
    root = REPO / "models"
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/bench_step.py"))


def run_models(fw, args, emit):
    names = discover()
    emit({"event": "result", "workload": "models", "status": "ok" if names else "none",
          "found": names, "note": "" if names else "no models yet"})
    if fw.name != "graphc":
        return
    for name in names:
        res = {"event": "result", "workload": f"models/{name}"}
        try:
            t0 = time.perf_counter()
            mod = importlib.import_module(f"models.{name}.bench_step")
            step, description = mod.bench_step()
            step()
            res.update(first_call_s=time.perf_counter() - t0, description=str(description),
                       status="ok")
            if not args.first_call_only:
                res.update(time_steps(step, lambda raw: None, args.reps, args.warmup,
                                      args.min_rep_s, args.max_s, args.min_reps))
        except Exception as exc:
            res.update(status="error", error=short_error(exc), traceback=traceback.format_exc(-8))
        emit(res)
