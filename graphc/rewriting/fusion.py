"""fusion: collapse maximal regions of elementwise ops (optionally ending in one reduction)
into ``Fused`` nodes, the unit that native backends compile into one kernel.

Growing a region from a root (visited from the outputs backwards):
- a producer whose every client is in the region joins it (trees and shared subtrees);
- a producer with clients outside joins as an extra output of the fused node when its value
  has the region's full shape and every outside client comes after the root in the
  topological order (so no path can leave the region and come back: no cycle);
- inputs that are only padded on the left by a DimShuffle enter unpadded (numpy
  broadcasting pads them), and constants of size 1 become literals of the expression;
- a reduction whose input is such a region with no other consumer ends the region.
Every fusable elementwise node becomes part of some Fused node, even alone, so backends
only ever compile Fused nodes.
"""
from __future__ import annotations

import numpy as np

from graphc.backend.kernel_spec import DTYPES as KERNEL_DTYPES, REDUCE_KINDS, SCALAR_OPS, const_ref
from graphc.configdefaults import config
from graphc.graph.basic import Constant
from graphc.rewriting.engine import replace_pairs
from graphc.tensor.elemwise import CAReduce, DimShuffle, Elemwise
from graphc.tensor.fused import Fused

_INF = float("inf")


def fusable(node) -> bool:
    op = node.op
    if type(op) is not Elemwise:
        return False
    name = op.scalar_op.name
    if name not in SCALAR_OPS and name != "second":
        return False
    return all(v.dtype in KERNEL_DTYPES for v in node.inputs) and \
        node.outputs[0].dtype in KERNEL_DTYPES


def _unpadded(v):
    """v without a DimShuffle that only adds leading broadcast dims."""
    n = v.owner
    if n is None or not isinstance(n.op, DimShuffle):
        return v
    order = n.op.new_order
    k = len(order) - n.op.input_ndim
    if k > 0 and all(o == "x" for o in order[:k]) and order[k:] == tuple(range(n.op.input_ndim)):
        return n.inputs[0]
    return v


def _literal(v):
    # only a constant typed as broadcastable everywhere: the type decides broadcasting
    if isinstance(v, Constant) and np.size(v.data) == 1 and all(v.type.broadcastable):
        return const_ref(np.asarray(v.data).reshape(-1)[0].item(), v.dtype)
    return None


def _grow(fgraph, root, index, done, multi, can_fuse):
    out = root.outputs[0]
    pattern, root_idx = out.type.broadcastable, index.get(root, _INF)
    region, members = [root], {root}

    def joins(v):
        outside = [c for c, _ in fgraph.clients.get(v, ()) if c not in members]
        if not outside:
            return True
        return multi and v.type.broadcastable == pattern and all(
            c == "output" or index.get(c, _INF) > root_idx for c in outside)

    frontier, pending = [root], []
    while frontier:
        n = frontier.pop()
        for v in n.inputs:
            p = v.owner
            if p is None or p in members or p in done or not can_fuse(p):
                continue
            if joins(v):
                region.append(p)
                members.add(p)
                frontier.append(p)
            else:
                pending.append(v)
        if not frontier and pending:
            # a producer whose other clients joined later may join now
            retry, pending = pending, []
            for v in retry:
                if v.owner in members:
                    continue
                if joins(v):
                    region.append(v.owner)
                    members.add(v.owner)
                    frontier.append(v.owner)
                else:
                    pending.append(v)
    region.sort(key=lambda n: index.get(n, _INF))
    return region


def _build(fgraph, region, red, strip_pads):
    """(Fused op, its inputs, the variables it replaces) for a region, or None."""
    members = set(region)
    ndim = region[-1].outputs[0].ndim
    inputs, in_pos, eq_of, eqns = [], {}, {}, []

    def ref(v):
        if v in eq_of:
            return ("eq", eq_of[v])
        lit = _literal(v)
        if lit is not None:
            return lit
        if strip_pads:
            v = _unpadded(v)
        if v not in in_pos:
            in_pos[v] = len(inputs)
            inputs.append(v)
        return ("in", in_pos[v])

    for n in region:
        sop = n.op.scalar_op
        args = tuple(ref(v) for v in n.inputs)
        eq_of[n.outputs[0]] = len(eqns)
        eqns.append((sop.name, sop.param, args, n.outputs[0].dtype))
    if not inputs or max(v.ndim for v in inputs) < ndim:
        return None
    root = region[-1].outputs[0]
    replaced = [root]
    for n in region[:-1]:
        if red is None and any(c not in members for c, _ in fgraph.clients.get(n.outputs[0], ())):
            replaced.append(n.outputs[0])
    outs = [("eq", eq_of[v]) for v in replaced]
    reduce = None
    if red is not None:
        rdt = red.outputs[0].dtype
        if rdt != root.dtype:
            eqns.append(("cast", rdt, (outs[0],), rdt))
            outs = [("eq", len(eqns) - 1)]
        reduce = (red.op.kind, red.op.axis if red.op.axis is not None else tuple(range(ndim)))
        replaced = [red.outputs[0]]
    op = Fused([v.dtype for v in inputs], eqns, outs, reduce, ndim)
    return op, inputs, replaced


def fuse(fgraph) -> int:
    """Run the fusion pass; returns the number of Fused nodes made."""
    order = fgraph.toposort()
    index = {n: i for i, n in enumerate(order)}
    done = set()
    made = 0
    verbose = config.optimizer_verbose
    memo = {}

    def can_fuse(n):
        r = memo.get(n)
        if r is None:
            r = memo[n] = fusable(n)
        return r

    for node in reversed(order):
        if node in done or node not in fgraph.apply_nodes:
            continue
        red, root = None, node
        if isinstance(node.op, CAReduce):
            src = node.inputs[0].owner
            if node.op.kind not in REDUCE_KINDS or src is None or src in done or \
                    not can_fuse(src) or len(fgraph.clients.get(node.inputs[0], ())) != 1 or \
                    node.outputs[0].dtype not in KERNEL_DTYPES:
                continue
            red, root = node, src
        elif not can_fuse(node):
            continue
        region = _grow(fgraph, root, index, done, red is None, can_fuse)
        built = _build(fgraph, region, red, True) or _build(fgraph, region, red, False)
        if built is None:
            continue
        op, inputs, replaced = built
        new = op.make_node(*inputs)
        if replace_pairs(fgraph, list(zip(replaced, new.outputs)), "fusion", root, verbose) is None:
            continue
        done.update(region)
        if red is not None:
            done.add(red)
        made += 1
    return made - _merge_chains(fgraph)


def _merge_chains(fgraph) -> int:
    """Merge F2 into F1 when F2 reads an output of F1 and F2's other inputs come before F1
    (so nothing between them can depend on F1): the siblings that growing from one root
    cannot see (a value and a consumer found from different roots, or several consumers of
    one value, e.g. the gate gradients of an LSTM step that all read dc).  An output of F1
    that others read stays an output of the merged node."""
    merged = 0
    order = fgraph.toposort()
    index = {n: i for i, n in enumerate(order)}
    for f2 in order:
        if f2 not in fgraph.apply_nodes or not isinstance(f2.op, Fused):
            continue
        for v in f2.inputs:
            f1 = v.owner
            if f1 is None or not isinstance(f1.op, Fused) or f1.op.reduce is not None or \
                    f1.op.ndim != f2.op.ndim:
                continue
            if f2.op.reduce is None and \
                    f2.outputs[0].type.broadcastable != f1.outputs[0].type.broadcastable:
                continue
            if f2.op.reduce is not None and (
                    [c for c, _ in fgraph.clients[v]] != [f2] or
                    any(fgraph.clients[o] for o in f1.outputs if o is not v)):
                continue                    # a reduction keeps exactly one output
            early = all(w.owner is None or w.owner is f1 or
                        index.get(w.owner, len(order)) < index[f1] for w in f2.inputs)
            new = _merge_pair(fgraph, f1, f2) if early else None
            if new is not None:
                index[new] = index[f1]      # conservative: as early as its first part
                merged += 1
                break
    return merged


def _merge_pair(fgraph, f1, f2) -> bool:
    op1, op2 = f1.op, f2.op
    inputs = list(f1.inputs)
    pos = {v: i for i, v in enumerate(inputs)}
    n1 = len(op1.eqns)

    def remap(ref):
        if ref[0] == "eq":
            return ("eq", ref[1] + n1)
        if ref[0] == "in":
            w = f2.inputs[ref[1]]
            if w.owner is f1:
                return op1.outs[w.index]
            if w not in pos:
                pos[w] = len(inputs)
                inputs.append(w)
            return ("in", pos[w])
        return ref

    eqns = list(op1.eqns) + [(n, p, tuple(remap(a) for a in args), d)
                             for n, p, args, d in op2.eqns]
    keep = [k for k, o in enumerate(f1.outputs) if any(c is not f2 for c, _ in fgraph.clients[o])]
    outs = [op1.outs[k] for k in keep] + [remap(r) for r in op2.outs]
    op = Fused([v.dtype for v in inputs], eqns, outs, op2.reduce, op1.ndim)
    new = op.make_node(*inputs)
    old = [f1.outputs[k] for k in keep] + list(f2.outputs)
    if replace_pairs(fgraph, list(zip(old, new.outputs)), "fusion.merge", f2,
                     config.optimizer_verbose) is None:
        return None
    return new
