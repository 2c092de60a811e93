"""Forward values stored for the backward loop (the rewrite pass ``scan_store``).

The backward loop of a Scan (grad.py) differentiates a fresh copy of the forward step, so it
recomputes from the stored states everything the step's derivative needs: for an LSTM, the
gate nonlinearities (three sigmoids and two tanh per hidden unit), which cost more than the
rest of the backward step.  The forward loop computed the same values at the same step: when
both loops are in one graph, the forward loop outputs them per step (a few more stores in its
fused kernel) and the backward loop reads them as sequences, so its step is arithmetic only.
The forward step's matrix products that the backward step re-read (``h @ W_h``, see
``rewrites._products_of_loop``) are then usually no longer read, and ``prune_scans`` drops
them.

Which forward step t a backward step reads: grad.py gives the backward loop B the forward
values as ``X[a:a + n][::-1]`` (n the forward loop F's n_steps), so B's step s reads X at
index ``a + t`` with ``t = n - 1 - s``:

- X = buffer of F's state k, a = L_k + tau: F's inner tap tau (tau = 0: the new state);
- X = F's per-step output j, a = 0: F's inner output j;
- X = F's sequence j, a = 0: F's inner sequence slice j;
- X = a non-sequence of both loops: F's inner non-sequence.

A node of B's step whose inputs all map so (or are constants, or such nodes) is a function of
F's step t alone.  Those that are expensive (transcendental elementwise ops, matrix
products) and that B still needs once the others are stored become per-step outputs of F;
cheap arithmetic on them stays in B and fuses into its kernel.
"""
from __future__ import annotations

from graphc.graph.basic import Constant, ancestors, io_toposort
from graphc.scan_module.op import Scan, make_scan
from graphc.scan_module.utils import substitute
from graphc.tensor.elemwise import DimShuffle, Elemwise
from graphc.tensor.math import Dot
from graphc.tensor.subtensor import SYM, Subtensor

# elementwise ops worth a store (several arithmetic ops each); the rest are recomputed
EXPENSIVE = frozenset({"exp", "log", "log1p", "expm1", "tanh", "sigmoid", "softplus", "erf",
                       "sin", "cos", "pow"})
_FULL = ("slice", None, None, None)


def store_for_backward(fgraph) -> bool:
    """Apply the rewrite to every Scan of ``fgraph`` that reads another Scan's step values
    in reverse; returns whether anything changed (the caller prunes afterwards)."""
    changed = False
    for node in list(fgraph.toposort()):
        if isinstance(node.op, Scan) and node in fgraph.apply_nodes:
            changed |= _store(fgraph, node)
    return changed


def _is_movable(node) -> bool:
    return isinstance(node.op, (Elemwise, DimShuffle, Subtensor, Dot))


def _is_expensive(node) -> bool:
    if isinstance(node.op, Dot):
        return True
    return isinstance(node.op, Elemwise) and node.op.scalar_op.name in EXPENSIVE


def _reversed_base(v):
    """``x`` for ``v = x[::-1]`` (a reversal of axis 0 only), else None."""
    o = v.owner
    if o is None or not isinstance(o.op, Subtensor):
        return None
    t = o.op.template
    if not t or tuple(t[0]) != ("slice", None, None, -1) or \
            any(tuple(e) != _FULL for e in t[1:]):
        return None
    return o.inputs[0]


def _starts_at(v, n):
    """(x, a) for ``v = x[a:a + n]`` with a an int >= 0; (v, None) for any other v."""
    o = v.owner
    if o is None or not isinstance(o.op, Subtensor):
        return v, None
    t = o.op.template
    if not t or t[0][0] != "slice" or t[0][3] not in (None, 1) or t[0][2] is None or \
            any(tuple(e) != _FULL for e in t[1:]):
        return v, None
    start, stop = t[0][1] or 0, t[0][2]
    if start == SYM:
        return v, None
    if stop == SYM:
        aligned = _is_offset(o.inputs[-1], n, start)
    else:                               # a constant n_steps gives a constant stop
        aligned = isinstance(n, Constant) and int(n.data) == stop - start
    return (o.inputs[0], start) if aligned else (v, None)


def _is_offset(v, n, a) -> bool:
    """v is the symbolic ``a + n``."""
    if v is n:
        return a == 0
    o = v.owner
    if o is None or not isinstance(o.op, Elemwise) or o.op.scalar_op.name != "add" or \
            len(o.inputs) != 2:
        return False
    x, y = o.inputs
    if y is n:
        x, y = y, x
    return x is n and isinstance(y, Constant) and y.data.ndim == 0 and int(y.data) == a


def _forward_value(outer, n_of):
    """(F node, F inner variable) that backward step s reads through the outer sequence
    ``outer`` (at forward step n - 1 - s), or None."""
    x = _reversed_base(outer)
    if x is None:
        return None
    for fnode, n in n_of.items():
        base, a = _starts_at(x, n)
        v = _inner_value(fnode, base, a)
        if v is not None:
            return fnode, v
    return None


def _inner_value(fnode, x, a):
    """F's inner variable at step t for ``x[a + t]`` (a is None: x has n rows, ``x[t]``)."""
    op, info = fnode.op, fnode.op.info
    seqs, taps, _, _ = op.split_inner_inputs()
    st_out, _, nit_out, _ = op.split_outputs(op.inner_outputs)
    if x.owner is fnode:
        k = x.index
        if k < info.n_states:
            if a is None:               # the buffer has L_k + n rows: only slices align
                return None
            tau = a - info.lags[k]
            if tau == 0:
                return st_out[k]
            if tau in info.state_taps[k]:
                return taps[k][info.state_taps[k].index(tau)]
            return None
        j = k - info.n_states - info.n_final
        if 0 <= j < info.n_nit and a in (None, 0):    # n rows exactly
            return nit_out[j]
        return None
    if a == 0:                          # a sequence may be longer than n: only slices align
        _, o_seqs, _, _, _ = op.split_outer_inputs(fnode.inputs)
        for j, s in enumerate(o_seqs):
            if s is x:
                return seqs[j]
    return None


def _canonical(inputs, outputs):
    """The step graph canonicalized (a copy).  The gradient of a slice is an update of
    ``zeros_like(z)``, which reads z for its shape only; canonicalize joins the updated
    slices and drops that read, so ``prune_scans`` can drop the sequences only z read."""
    from graphc.graph.fg import FunctionGraph
    from graphc.rewriting import canonicalize, subtensor_rules
    from graphc.rewriting.engine import run_rules
    fg = FunctionGraph(inputs, outputs, clone=True)
    canonicalize.merge(fg)
    run_rules(fg, canonicalize.RULES + subtensor_rules.RULES, "canonicalize")
    canonicalize.dce(fg)
    return list(fg.inputs), list(fg.outputs)


def _store(fgraph, node) -> bool:
    op, info = node.op, node.op.info
    seqs, taps, finals, nonseqs = op.split_inner_inputs()
    _, o_seqs, _, _, o_non = op.split_outer_inputs(node.inputs)
    # candidate forward loops: Scans (plain loops, no ``until``) whose outputs we read
    n_of = {}
    for o in o_seqs:
        x = _reversed_base(o)
        if x is None:
            continue
        if x.owner is not None and isinstance(x.owner.op, Subtensor):
            x = x.owner.inputs[0]
        f = x.owner
        if f is not None and isinstance(f.op, Scan) and f is not node and \
                not f.op.info.as_while and f in fgraph.apply_nodes:
            n_of.setdefault(f, f.inputs[0])
    if not n_of:
        return False
    mapped, fnode = {}, None
    for v, o in zip(seqs, o_seqs):
        hit = _forward_value(o, n_of)
        if hit is None or (fnode is not None and hit[0] is not fnode):
            continue
        if hit[1].type != v.type:
            continue
        fnode = hit[0]
        mapped[v] = hit[1]
    if fnode is None:
        return False
    f_non = fnode.op.split_inner_inputs()[3]
    fo_non = fnode.op.split_outer_inputs(fnode.inputs)[4]
    for v, o in zip(nonseqs, o_non):
        for fv, fo in zip(f_non, fo_non):
            if fo is o and fv.type == v.type:
                mapped[v] = fv

    # nodes of the backward step that are functions of the forward step t; ``varying``:
    # those that change with t (a function of non-sequences alone would be stored n times;
    # scan() hoists those out of the forward step, so this only guards hand-built loops)
    known = set(mapped)
    varying = set(v for v in mapped if v in seqs)
    order = io_toposort(op.inner_inputs, op.inner_outputs)
    for nd in order:
        if _is_movable(nd) and any(i in known for i in nd.inputs) and \
                all(i in known or isinstance(i, Constant) for i in nd.inputs):
            known.update(nd.outputs)
            if any(i in varying for i in nd.inputs):
                varying.update(nd.outputs)
    cands = [o for nd in order if _is_expensive(nd) and nd.outputs[0] in varying
             for o in nd.outputs]
    if not cands:
        return False
    # keep those the backward step still reads once all of them are stored
    ph = {v: v.type(f"stored_{v.name or k}[t]") for k, v in enumerate(cands)}
    reached = set(ancestors(substitute(op.inner_outputs, ph)))
    keep = [v for v in cands if ph[v] in reached]
    if not keep:
        return False
    ph = {v: ph[v] for v in keep}

    # the forward loop outputs them per step
    f_op, f_info = fnode.op, fnode.op.info
    f_vals = substitute(keep, mapped)
    st_out, fin_out, nit_out, cond = f_op.split_outputs(f_op.inner_outputs)
    new_info = f_info.replace(n_nit=f_info.n_nit + len(keep))
    f_outs = make_scan(f_op.inner_inputs, st_out + fin_out + nit_out + f_vals, new_info,
                       fnode.inputs[0], fnode.inputs[1:])
    for old, new in zip(fnode.outputs, f_outs):
        if fgraph.clients.get(old):
            fgraph.replace(old, new, reason="scan_store")
    stored = [s[::-1] for s in f_outs[len(fnode.outputs):]]

    # the backward loop reads them as sequences (its inputs now name the new forward loop)
    n_steps, o_seqs, o_inits, o_finits, o_non = op.split_outer_inputs(node.inputs)
    inner_in = seqs + [ph[v] for v in keep] + [v for t in taps for v in t] + finals + nonseqs
    inner_in, inner_out = _canonical(inner_in, substitute(op.inner_outputs, ph))
    b_outs = make_scan(inner_in, inner_out,
                       info.replace(n_seqs=info.n_seqs + len(keep)), n_steps,
                       o_seqs + stored + o_inits + o_finits + o_non)
    for old, new in zip(node.outputs, b_outs):
        if fgraph.clients.get(old):
            fgraph.replace(old, new, reason="scan_store")
    return True
