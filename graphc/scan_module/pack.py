"""scan_pack: a loop's products against a non-sequence weight read it packed once.

A step ``dot(a, W)`` or ``dot(a, W.T)`` with ``W`` a float32 non-sequence (an RNN's
``h[t-1] @ W_h``, and ``dz @ W_h.T`` in its backward loop) becomes
``PackedDot(a, W, Wp)``, where ``Wp = PackWeights(W)`` is a new non-sequence computed once
before the loop (graphc.tensor.packed). Only for loops whose step runs on the LLVM backend,
the one with a packed kernel; elsewhere PackedDot would just be a dot plus a wasted copy.
Any size: the kernel has no call overhead of its own, and packing is one pass over W per
loop.

The terms the step adds to the product go into the same PackedDot (up to two, float32,
each a full (M, N) matrix or a broadcast row): ``x_t @ Wx + h @ Wh + b``, once the input
product was pushed out of the loop, is ``PackedDot(h, Wh, Wp, xw[t], b)``, which the kernel
adds as it stores the product instead of a separate pass over the result. A sum is taken
only where nothing else reads the product or a partial sum, so the product is still
computed once.
"""
from __future__ import annotations

from collections import defaultdict

from graphc.graph.basic import ancestors, io_toposort
from graphc.graph.fg import FunctionGraph
from graphc.rewriting import canonicalize
from graphc.scan_module.op import Scan, make_scan
from graphc.scan_module.utils import resolve_mode, substitute
from graphc.tensor.elemwise import DimShuffle, Elemwise
from graphc.tensor.math import Dot
from graphc.tensor.packed import PackedDot, PackWeights


def pack_scans(fgraph) -> bool:
    """Rewrite every Scan of ``fgraph`` whose step multiplies by a non-sequence weight."""
    changed = False
    for node in list(fgraph.toposort()):
        if isinstance(node.op, Scan) and node in fgraph.apply_nodes and _native(node.op):
            changed |= _pack(fgraph, node)
    return changed


def _native(op) -> bool:
    from graphc.compile.mode import resolve_linker
    return resolve_linker(resolve_mode(op.info.mode)) == "llvm"


def _weight_of(v, nonseq):
    """(W, trans) when ``v`` is the non-sequence W or ``W.T``, else None."""
    if v in nonseq:
        return v, False
    o = v.owner
    if o is not None and isinstance(o.op, DimShuffle) and tuple(o.op.new_order) == (1, 0) and \
            o.inputs[0] in nonseq:
        return o.inputs[0], True
    return None


def _clients(inputs, outputs):
    """inner variable -> the inner nodes that read it (once per node)."""
    clients = defaultdict(list)
    for node in io_toposort(inputs, outputs):
        for v in dict.fromkeys(node.inputs):
            clients[v].append(node)
    return clients


def _addable(v, product) -> bool:
    """``v`` may be added in the kernel's store: a float32 matrix, rows broadcast or not,
    columns not, and no taller than the product."""
    return v.ndim == 2 and v.dtype == "float32" and not v.type.broadcastable[1] and \
        (v.type.broadcastable[0] or not product.type.broadcastable[0])


def _terms(node, v, product, room):
    """The other terms of ``node`` if it is a float32 ``add`` of ``v`` (once) with at most
    ``room`` other terms, each addable to ``product``; else None."""
    out = node.outputs[0]
    if not (isinstance(node.op, Elemwise) and node.op.scalar_op.name == "add") or \
            out.dtype != "float32" or out.type.broadcastable != product.type.broadcastable \
            or sum(x is v for x in node.inputs) != 1:
        return None
    others = [x for x in node.inputs if x is not v]
    if len(others) > room or not all(_addable(x, product) for x in others):
        return None
    return others


def _absorbed_sum(product, clients, outputs, inputs):
    """The sum ``(product + e1) + e2`` that PackedDot can compute in place of ``product``:
    (the variable it replaces, the addends in order). The climb goes through adds that
    only the value below feeds; a value the step returns or that several nodes read stays
    a value of its own."""
    top, terms = product, []
    while top not in outputs and len(clients[top]) == 1:
        more = _terms(clients[top][0], top, product, PackedDot.MAX_ADDENDS - len(terms))
        if more is None:
            break
        terms += more
        top = clients[top][0].outputs[0]
    if product in ancestors(terms, blockers=inputs):
        return product, []          # a term computed from the product: a cycle
    return top, terms


def _merged(op):
    """The step graph with copies of one value folded (a copy): earlier rewrites may leave
    two copies of a product or a sum, which must not become two products."""
    fg = FunctionGraph(op.inner_inputs, op.inner_outputs, clone=True)
    canonicalize.merge(fg)
    return list(fg.inputs), list(fg.outputs)


def _pack(fgraph, node) -> bool:
    op, info = node.op, node.op.info
    if not any(isinstance(n.op, Dot) for n in io_toposort(op.inner_inputs, op.inner_outputs)):
        return False
    inputs, outputs = _merged(op)
    seqs, taps, finals, nonseqs = op.split_inner_inputs(inputs)
    n_steps, o_seqs, o_inits, o_finits, o_non = op.split_outer_inputs(node.inputs)
    outer_of = dict(zip(nonseqs, o_non))
    found = []                   # (inner dot output, a, W, trans)
    for inner in io_toposort(inputs, outputs):
        if not isinstance(inner.op, Dot):
            continue
        a, w = inner.inputs
        hit = _weight_of(w, outer_of)
        if hit is None or a.ndim != 2 or a.dtype != "float32" or hit[0].dtype != "float32" \
                or hit[0].ndim != 2 or inner.outputs[0].dtype != "float32":
            continue
        found.append((inner.outputs[0], a, hit[0], hit[1]))
    if not found:
        return False
    packed = {}                  # (inner W, trans) -> new inner input
    for _, _, w, trans in found:
        if (w, trans) not in packed:
            packed[(w, trans)] = PackWeights(trans)(w).type(f"{w.name or 'W'}_packed")
    clients = _clients(inputs, outputs)
    repl = {}
    for out, a, w, trans in found:
        top, addends = _absorbed_sum(out, clients, set(outputs), inputs)
        new = PackedDot(trans)(a, w, packed[(w, trans)], *addends)
        if new.type != top.type:        # the sum's type must stay (e.g. a state's)
            top, new = out, PackedDot(trans)(a, w, packed[(w, trans)])
        repl[top] = new
    new_outs = substitute(outputs, repl)
    new_inner = list(packed.values())
    new_outer = [PackWeights(trans)(outer_of[w]) for (w, trans) in packed]
    inner_in = seqs + [v for t in taps for v in t] + finals + nonseqs + new_inner
    new_info = info.replace(n_nonseqs=info.n_nonseqs + len(new_inner))
    outs = make_scan(inner_in, new_outs, new_info, n_steps,
                     o_seqs + o_inits + o_finits + o_non + new_outer)
    for old, new in zip(node.outputs, outs):
        if fgraph.clients.get(old):
            fgraph.replace(old, new, reason="scan_pack")
    return True
