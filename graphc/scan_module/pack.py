"""scan_pack: a loop's products against a non-sequence weight read it packed once.

A step ``dot(a, W)`` or ``dot(a, W.T)`` with ``W`` a float32 non-sequence (an RNN's
``h[t-1] @ W_h``, and ``dz @ W_h.T`` in its backward loop) becomes
``PackedDot(a, W, Wp)``, where ``Wp = PackWeights(W)`` is a new non-sequence computed once
before the loop (graphc.tensor.packed). Only for loops whose step runs on the LLVM backend,
the one with a packed kernel; elsewhere PackedDot would just be a dot plus a wasted copy.
Any size: the kernel has no call overhead of its own, and packing is one pass over W per
loop.
"""
from __future__ import annotations

from graphc.graph.basic import io_toposort
from graphc.scan_module.op import Scan, make_scan
from graphc.scan_module.utils import resolve_mode, substitute
from graphc.tensor.elemwise import DimShuffle
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


def _pack(fgraph, node) -> bool:
    op, info = node.op, node.op.info
    seqs, taps, finals, nonseqs = op.split_inner_inputs()
    n_steps, o_seqs, o_inits, o_finits, o_non = op.split_outer_inputs(node.inputs)
    outer_of = dict(zip(nonseqs, o_non))
    found = []                   # (inner dot output, a, W, trans)
    for inner in io_toposort(op.inner_inputs, op.inner_outputs):
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
    repl = {out: PackedDot(trans)(a, w, packed[(w, trans)]) for out, a, w, trans in found}
    new_outs = substitute(op.inner_outputs, repl)
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
