"""The rewrite pipeline: the whole optimizer on one screen.

Each mode runs an explicit, ordered list of named passes.  A pass is switched off with
``GRAPHC_FLAGS=optimizer_excluding=fusion:inplace`` or ``Mode(...).excluding('fusion')``
(a single rule is switched off the same way by its name, e.g. ``softmax_xent``);
``optimizer_including`` / ``Mode.including`` add a FAST_RUN pass to FAST_COMPILE;
``optimizer_verbose=True`` prints every rewrite applied (rule, before, after).
"""
from __future__ import annotations

import gc

from graphc.configdefaults import config
from graphc.rewriting import (canonicalize, fusion, inplace, shared_gemm, specialize, stabilize,
                               subtensor_rules)
from graphc.rewriting.engine import RuleSet, run_rules


def optimize(fgraph, mode):
    """Rewrite ``fgraph`` in place with the passes of ``mode``; returns fgraph."""
    canon = canonicalize.RULES + subtensor_rules.RULES
    pipelines = {
        "fast_compile": [
            ("merge", _plain(canonicalize.merge)),
            ("scan_prune", _plain(_prune_scans)),
            ("constant_folding", _rules(RuleSet(canon.rules[:1]), "constant_folding")),
            ("dce", _plain(canonicalize.dce)),
        ],
        "fast_run": [
            ("merge", _plain(canonicalize.merge)),
            ("canonicalize", _rules(canon, "canonicalize")),
            ("merge", _plain(canonicalize.merge)),
            ("scan_prune", _plain(_prune_scans)),
            ("scan_pushout", _plain(_pushout_scans)),
            ("scan_store", _plain(_store_scans)),
            ("scan_pack", _plain(_pack_scans)),
            ("stabilize", _rules(stabilize.RULES, "stabilize", followup=canon)),
            ("specialize", _rules(specialize.RULES, "specialize", followup=canon)),
            ("merge", _plain(canonicalize.merge)),
            ("shared_gemm", _plain(shared_gemm.merge_shared_gemms)),
            ("fusion", _plain(fusion.fuse)),
            ("inplace", _plain(inplace.make_inplace)),
            ("dce", _plain(canonicalize.dce)),
        ],
    }
    name = mode.optimizer if mode is not None else "fast_run"
    if name is None or name in ("None", "none", "unsafe"):
        return fgraph
    if name.lower() not in pipelines:
        raise ValueError(f"unknown optimizer {name!r}; choose 'fast_run', 'fast_compile' or None")
    excluded = set(filter(None, config.optimizer_excluding.split(":")))
    excluded |= set(getattr(mode, "excluded", ()))
    included = set(filter(None, config.optimizer_including.split(":")))
    included |= set(getattr(mode, "included", ()))
    passes = pipelines[name.lower()]
    have = {p for p, _ in passes}
    if any(p in included and p not in have for p, _ in pipelines["fast_run"]):
        # an included FAST_RUN pass runs at its FAST_RUN position
        passes = [(p, f) for p, f in pipelines["fast_run"] if p in have or p in included]
    check = getattr(mode, "check", False) or config.debug >= 1
    # rewriting allocates many small objects and frees few: the cyclic garbage collector's
    # full scans would cost more than the passes themselves on large graphs
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for pass_name, run in passes:
            if pass_name not in excluded:
                run(fgraph, excluded)
                if check:
                    _check(fgraph, pass_name)
    finally:
        if was_enabled:
            gc.enable()
    return fgraph


def _rules(ruleset, name, followup=None):
    return lambda fgraph, excluded: run_rules(fgraph, ruleset, name, excluded=excluded,
                                              followup=followup)


def _plain(fn):
    return lambda fgraph, excluded: fn(fgraph)


def _prune_scans(fgraph):
    """Drop the loop outputs nothing reads (graphc.scan_module.rewrites), when scan exists."""
    try:
        from graphc.scan_module.rewrites import prune_scans
    except ImportError:     # pragma: no cover - a build without scan
        return
    prune_scans(fgraph)


def _store_scans(fgraph):
    """Backward loops read the forward loop's expensive step values instead of recomputing
    them (graphc.scan_module.store)."""
    from graphc.scan_module.op import Scan
    from graphc.scan_module.rewrites import prune_scans
    from graphc.scan_module.store import store_for_backward
    if not any(isinstance(n.op, Scan) for n in fgraph.apply_nodes):
        return                          # nothing to do: skip the merge below too
    canonicalize.merge(fgraph)          # one node per hoisted product: F's and B's alike
    if store_for_backward(fgraph):
        prune_scans(fgraph)


def _pack_scans(fgraph):
    """Products against a loop's non-sequence weights read it packed once per loop, where
    the loop runs natively (graphc.scan_module.pack)."""
    from graphc.scan_module.op import Scan
    if any(isinstance(n.op, Scan) for n in fgraph.apply_nodes):
        from graphc.scan_module.pack import pack_scans
        pack_scans(fgraph)


def _pushout_scans(fgraph):
    """Hoist loop-invariant matrix products out of scans (graphc.scan_module.rewrites)."""
    from graphc.scan_module.rewrites import pushout_scans
    pushout_scans(fgraph)


def _check(fgraph, after):
    """Debug mode: bookkeeping consistent and every fused node's kernel spec well formed."""
    from graphc.tensor.fused import Fused
    try:
        fgraph.check()
        for node in fgraph.toposort():
            if isinstance(node.op, Fused):
                node.op.to_kernel_spec().check()
    except Exception as e:
        raise AssertionError(f"graph check failed after the {after} pass: {e}") from e
