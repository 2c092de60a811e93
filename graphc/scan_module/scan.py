"""``graphc.scan``: Theano's loop construct, lowered to one canonical Scan op.

What ``scan`` does with the user's step function ``fn``:

1. makes placeholders for the per-step values: one per sequence tap and one per output
   tap, and calls ``fn(*sequence taps, *output taps, *non_sequences)``; non-sequences are
   passed as the outer variables themselves (as in Theano, so ``fn`` may differentiate
   through them: ``jacobian`` relies on this);
2. reads the returned outputs, updates dictionary and ``until`` condition;
3. collects shared variables updated inside the step: explicit updates become final-value
   states (only their last value is kept), shared variables with a ``default_update``
   (random streams) become buffered states, so a gradient replays the same numbers;
4. cuts the step graph where it stops depending on per-step values: every loop-invariant
   subexpression (weights, ``W.T``, shared variables, values from the outer graph) is
   computed once outside the loop and passed in as a non-sequence input of the node, so
   ``function()`` sees every shared variable and ``givens`` reach inside the step;
5. builds the Scan node and returns (outputs, updates) with Theano's conventions.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from graphc.compile.sharedvalue import SharedVariable
from graphc.graph.basic import Constant, Variable, ancestors, clone_replace, io_toposort
from graphc.scan_module.op import ScanInfo, make_scan
from graphc.scan_module.utils import serial, substitute, until


def scan(fn, sequences=None, outputs_info=None, non_sequences=None, n_steps=None,
         truncate_gradient=-1, go_backwards=False, mode=None, name=None, profile=False,
         allow_gc=None, strict=False, return_list=False):
    """Loop ``fn`` over ``sequences`` (Theano's semantics).  Returns ``(outputs, updates)``:
    ``outputs`` is one variable, a list, or None (no outputs), unless ``return_list``;
    ``updates`` is an OrderedDict to pass to ``graphc.function(updates=...)``."""
    from graphc.tensor import basic as tb
    from graphc.tensor import math as tm
    from graphc.tensor.var import as_tensor_variable
    name = name or "scan_fn"

    # ---- sequences: one sliced outer sequence per tap
    seq_ph, seq_outer = [], []
    for s in _as_list(sequences):
        x, taps = _seq_spec(s)
        lo, hi = min(min(taps), 0), max(max(taps), 0)
        for k in taps:
            stop = None if hi - k == 0 else -(hi - k)
            sl = x[k - lo:stop] if (k - lo or stop is not None) else x
            if go_backwards:
                sl = sl[::-1]
            seq_outer.append(sl)
            label = f"{x.name or 'seq'}[t{k:+d}]" if k else f"{x.name or 'seq'}[t]"
            seq_ph.append(x.type.clone(shape=x.type.shape[1:])(label))

    # ---- number of steps
    if n_steps is not None:
        steps = as_tensor_variable(n_steps)
        if steps.ndim != 0 or steps.dtype not in ("int8", "int16", "int32", "int64",
                                                  "uint8", "uint16", "uint32"):
            raise TypeError(f"scan: n_steps must be an integer scalar, got {steps.type}")
        steps = tb.cast(steps, "int64")
    elif seq_outer:
        steps = tb.shape_i(seq_outer[0], 0)
        for sl in seq_outer[1:]:
            steps = tm.minimum(steps, tb.shape_i(sl, 0))
    else:
        raise ValueError("scan: no information about the number of steps; give n_steps or "
                         "at least one sequence")

    # ---- outputs_info: buffered states (sit_sot/mit_sot) and per-step outputs (nit_sot)
    infos = _as_list(outputs_info) if outputs_info is not None else []
    slots = []        # per output: None (per-step) or (taps, outer init, placeholders)
    for i, o in enumerate(infos):
        init, taps = _output_spec(o, i)
        if init is None:
            slots.append(None)
            continue
        if taps == [-1]:           # sit_sot: the initial value is the state itself
            state_t = init.type
            outer = init.dimshuffle(["x"] + list(range(init.ndim)))
        else:                      # mit_sot: init[0] is time -L, ..., init[L-1] time -1
            if init.ndim == 0:
                raise TypeError(f"scan: output {i} has taps {taps}, so its initial value "
                                f"needs a leading time axis of length {-min(taps)}")
            state_t = init.type.clone(shape=init.type.shape[1:])
            outer = init
        label = init.name or f"out{i}"
        phs = [state_t(f"{label}[t{k}]") for k in taps]
        slots.append((taps, outer, phs))

    nonseqs = [a if isinstance(a, Variable) else as_tensor_variable(a)
               for a in _as_list(non_sequences)]
    args = list(seq_ph) + [p for s in slots if s is not None for p in s[2]] + nonseqs
    mark = serial(Variable(None))       # variables numbered after this were made by fn
    cond, outs, updates = _parse_return(fn(*args))
    outs = [as_tensor_variable(o) for o in outs]
    if infos and len(outs) != len(infos):
        raise ValueError(f"scan: the step function returned {len(outs)} outputs but "
                         f"outputs_info has {len(infos)} entries (use None for outputs "
                         f"that are not fed back)")
    if not infos:
        slots = [None] * len(outs)

    # ---- shared variables updated in the step
    explicit = []
    for var, val in updates.items():
        if not isinstance(var, SharedVariable):
            raise TypeError(f"scan: update target {var} is not a shared variable")
        explicit.append((var, _fit(as_tensor_variable(val), var.type, f"update of {var}")))
    roots = outs + [v for _, v in explicit] + ([cond] if cond is not None else [])
    defaults = _default_updates(roots, {v for v, _ in explicit}, mark)
    fin_ph = {v: v.type(f"{v.name or 'shared'}[t-1]") for v, _ in explicit}
    dflt_ph = {v: v.type(f"{v.name or 'state'}[t-1]") for v, _ in defaults}
    rep = {**fin_ph, **dflt_ph}

    state_outs = []
    for i, (o, s) in enumerate(zip(outs, slots)):
        if s is not None:
            state_outs.append(_fit(o, s[2][0].type, f"output {i} of the step"))
    nit_outs = [o for o, s in zip(outs, slots) if s is None]
    body = (state_outs + [v for _, v in defaults] + [v for _, v in explicit] + nit_outs +
            ([cond] if cond is not None else []))
    body = substitute(body, rep) if rep else body

    # ---- cut loop-invariant parts out of the step
    per_step = seq_ph + [p for s in slots if s is not None for p in s[2]] + \
        list(dflt_ph.values()) + list(fin_ph.values())
    frontier = _invariant_frontier(per_step, body)
    if strict:
        allowed = set(nonseqs)
        for f in frontier:
            free = [r for r in ancestors([f], allowed) if r.owner is None and
                    not isinstance(r, Constant) and r not in allowed]
            if free:
                raise ValueError(f"scan(strict=True): the step uses {free[0]} which is not "
                                 f"in non_sequences")
    non_ph = [f.type(f.name) for f in frontier]
    if frontier:
        body = clone_replace(body, dict(zip(frontier, non_ph)))

    # ---- the node
    states = [s for s in slots if s is not None]
    n_st = len(states) + len(defaults)
    n_fin = len(explicit)
    info = ScanInfo(n_seqs=len(seq_ph),
                    state_taps=tuple(tuple(s[0]) for s in states) + ((-1,),) * len(defaults),
                    n_final=n_fin, n_nit=len(nit_outs), n_nonseqs=len(frontier),
                    as_while=cond is not None, truncate_gradient=int(truncate_gradient),
                    name=name, mode=mode)
    inner_in = (seq_ph + [p for s in states for p in s[2]] + list(dflt_ph.values()) +
                list(fin_ph.values()) + non_ph)
    outer_in = (seq_outer + [s[1] for s in states] +
                [v.dimshuffle(["x"] + list(range(v.ndim))) for v, _ in defaults] +
                [v for v, _ in explicit] + list(frontier))
    node_outs = make_scan(inner_in, body, info, steps, outer_in)

    # ---- Theano's return conventions
    results, k_state, k_nit = [], 0, n_st + n_fin
    for s in slots:
        if s is None:
            results.append(node_outs[k_nit])
            k_nit += 1
        else:
            results.append(node_outs[k_state][-min(s[0]):])
            k_state += 1
    new_updates = OrderedDict()
    for k, (var, _) in enumerate(defaults):
        new_updates[var] = node_outs[len(states) + k][-1]
        if serial(var) > mark:
            # a stream created by the step advances with the loop, even when the caller
            # forgets to pass the returned updates to function()
            var.default_update = new_updates[var]
    for k, (var, _) in enumerate(explicit):
        new_updates[var] = node_outs[n_st + k]
    if return_list:
        return results, new_updates
    if not results:
        return None, new_updates
    return (results[0] if len(results) == 1 else results), new_updates


# ------------------------------------------------------------------ Theano's scan views
# (these shadow the builtins map and reduce in this module: do not use those below)
def map(fn, sequences, non_sequences=None, truncate_gradient=-1, go_backwards=False,
        mode=None, name=None):
    """``fn`` applied to each step of ``sequences`` (no recurrence): ``theano.map``."""
    return scan(fn, sequences=sequences, outputs_info=None, non_sequences=non_sequences,
                truncate_gradient=truncate_gradient, go_backwards=go_backwards, mode=mode,
                name=name)


def reduce(fn, sequences, outputs_info, non_sequences=None, go_backwards=False, mode=None,
           name=None):
    """The last value of a scan (a fold): ``theano.reduce``."""
    outs, updates = scan(fn, sequences=sequences, outputs_info=outputs_info,
                         non_sequences=non_sequences, go_backwards=go_backwards, mode=mode,
                         name=name)
    if isinstance(outs, (list, tuple)):
        return [o[-1] for o in outs], updates
    return outs[-1], updates


def foldl(fn, sequences, outputs_info, non_sequences=None, mode=None, name=None):
    return reduce(fn, sequences, outputs_info, non_sequences, False, mode, name)


def foldr(fn, sequences, outputs_info, non_sequences=None, mode=None, name=None):
    return reduce(fn, sequences, outputs_info, non_sequences, True, mode, name)


# ------------------------------------------------------------------ argument parsing
def _as_list(x):
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _seq_spec(s):
    from graphc.tensor.var import as_tensor_variable
    if isinstance(s, dict):
        if "input" not in s:
            raise ValueError(f"scan: a sequence given as a dict needs an 'input' key: {s}")
        x, taps = s["input"], s.get("taps", [0])
        taps = [0] if taps is None else _as_list(taps)
    else:
        x, taps = s, [0]
    x = as_tensor_variable(x)
    if x.ndim == 0:
        raise TypeError(f"scan: sequence {x} is a scalar; sequences are iterated over "
                        f"their first dimension")
    if not taps or len(set(taps)) != len(taps) or not all(isinstance(k, (int, np.integer))
                                                          for k in taps):
        raise ValueError(f"scan: sequence taps must be distinct ints, got {taps}")
    return x, [int(k) for k in taps]


def _output_spec(o, i):
    """(initial value or None, taps) of entry ``i`` of outputs_info."""
    from graphc.tensor.var import as_tensor_variable
    if o is None:
        return None, None
    if isinstance(o, dict):
        unknown = set(o) - {"initial", "taps"}
        if unknown:
            hint = " (return_steps is gone: slice the output instead)" \
                if "return_steps" in unknown else ""
            raise ValueError(f"scan: outputs_info[{i}] has unknown keys {sorted(unknown)}; "
                             f"use 'initial' and 'taps'{hint}")
        init = o.get("initial")
        if init is None:
            return None, None
        taps = o.get("taps", [-1])
        taps = [-1] if taps is None else _as_list(taps)
    else:
        init, taps = o, [-1]
    if not taps or any(not isinstance(k, (int, np.integer)) or k >= 0 for k in taps) or \
            len(set(taps)) != len(taps):
        raise ValueError(f"scan: output {i} taps must be distinct negative ints, got {taps}")
    return as_tensor_variable(init), [int(k) for k in taps]


def _parse_return(ret):
    """(condition or None, outputs, updates) from what the step returned (Theano's rules:
    outputs, then updates, then an ``until``, each optional)."""
    def is_updates(x):
        return isinstance(x, dict) or (isinstance(x, (list, tuple)) and len(x) > 0 and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], SharedVariable)
            for p in x))

    parts = list(ret) if isinstance(ret, tuple) else [ret]
    if isinstance(ret, list) and not is_updates(ret):
        parts = [ret]
    cond, updates, outs = None, OrderedDict(), []
    if parts and isinstance(parts[-1], until):
        cond = parts.pop().condition
    if parts and is_updates(parts[-1]):
        updates = OrderedDict(parts.pop())
    for p in parts:
        if isinstance(p, (list, tuple)):
            outs.extend(p)
        elif p is not None:
            outs.append(p)
    for o in outs:
        if isinstance(o, (dict, until)):
            raise ValueError("scan: the step function must return its outputs first, then "
                             "the updates dictionary, then the until condition")
    return cond, outs, updates


def _fit(v, t, what):
    """``v`` with the type ``t`` of the state it feeds (same dtype and rank required)."""
    if v.type == t:
        return v
    if v.dtype != t.dtype or v.ndim != t.ndim:
        raise TypeError(
            f"scan: {what} is {v.type} but the state it feeds is {t}; the step must return "
            f"the same dtype and number of dimensions as the initial value (cast with "
            f"T.cast(x, '{t.dtype}'), or give an initial value of the right type)")
    conv = t.convert_variable(v)
    if conv is None:
        raise TypeError(f"scan: {what} has static shape {v.type.shape_str()}, incompatible "
                        f"with the state's {t.shape_str()}")
    return conv


def _default_updates(roots, skip, mark):
    """[(shared variable, default_update)] for shared variables with a default update
    (random streams) read by nodes that the step function created (variables numbered
    after ``mark``), transitively through their updates.  Random values computed before
    the loop and merely used in the step stay fixed across steps."""
    found, seen, visited = [], set(skip), set()
    stack = list(roots)
    while stack:
        v = stack.pop()
        if v in visited:
            continue
        visited.add(v)
        if isinstance(v, SharedVariable):
            if v not in seen and v.default_update is not None:
                seen.add(v)
                found.append((v, v.default_update))
                stack.append(v.default_update)
        elif v.owner is not None and serial(v) > mark:
            stack.extend(v.owner.inputs)
    return found


def _invariant_frontier(per_step, outputs):
    """The loop-invariant, non-constant variables that per-step computations read (and
    invariant outputs): they become the node's non-sequence inputs, in a stable order."""
    variant = set(per_step)
    frontier = OrderedDict()
    for node in io_toposort(per_step, outputs):
        if any(i in variant for i in node.inputs):
            variant.update(node.outputs)
            for i in node.inputs:
                if i not in variant and not isinstance(i, Constant):
                    frontier[i] = None
    for o in outputs:
        if o not in variant and not isinstance(o, Constant):
            frontier[o] = None
    return list(frontier)
