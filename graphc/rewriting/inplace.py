"""inplace: write outputs into input buffers that are dead, and the destroy handler that
decides when a buffer is dead.

An op may overwrite (destroy) an input buffer only when all of these hold:
- the buffer was freshly computed by an op known to return new, writable arrays (never a
  graph input, a shared variable's value, a constant, or a view of anything: views are
  followed through ``view_map`` chains and rejected);
- it is not a graph output, nor viewed by one;
- every other reader of the buffer (its clients and the clients of its views) comes before
  the destroyer in the topological order; those "run before" constraints are recorded in
  ``fgraph.orderings`` so every later toposort keeps them;
- it is destroyed at most once, and the destroyer reads it at no other input position.
Shared-variable updates are therefore never done in place on the shared value: graphc's
update semantics (all updates applied after the call) stay intact.
"""
from __future__ import annotations

from graphc.configdefaults import config
from graphc.graph.basic import Constant
from graphc.graph.fg import OUTPUT
from graphc.tensor import basic as tb
from graphc.tensor.blas import Gemm, Gemv, Ger
from graphc.tensor.elemwise import CAReduce, Elemwise
from graphc.tensor.fused import Fused
from graphc.tensor.math import Dot
from graphc.tensor.nnet.basic import Softmax
from graphc.tensor.nnet.xent import (SoftmaxCrossentropy, SoftmaxCrossentropyGrad,
                                     SoftmaxCrossentropyWithGrad)
from graphc.tensor.subtensor import IncSubtensor

# ops whose outputs are always new, writable arrays owned by nobody else (Elemwise copies
# where numpy would return its input or a view: identity, second, rounding an int)
_FRESH = (Elemwise, Fused, Gemm, Gemv, Ger, Dot, CAReduce, Softmax, SoftmaxCrossentropy,
          SoftmaxCrossentropyGrad, SoftmaxCrossentropyWithGrad, tb.Alloc, tb.Join, IncSubtensor)


def fresh(v) -> bool:
    n = v.owner
    if n is None or isinstance(v, Constant):
        return False
    op = n.op
    return isinstance(op, _FRESH) and not (getattr(op, "view_map", None) or {}).get(v.index)


def _readers(fgraph, v):
    """(nodes that read v's buffer, those reading it through a view of it): its clients
    and, through view ops, their clients.  None when a graph output sees the buffer."""
    out, via_view, stack, seen = [], set(), [(v, False)], {v}
    while stack:
        w, is_view = stack.pop()
        for c, i in fgraph.clients.get(w, ()):
            if c == OUTPUT:
                return None
            out.append(c)
            if is_view:
                via_view.add(c)
            for k, ins in (getattr(c.op, "view_map", None) or {}).items():
                if i in ins and c.outputs[k] not in seen:
                    seen.add(c.outputs[k])
                    stack.append((c.outputs[k], True))
    return out, via_view


def _candidates(node):
    """(output, input) pairs the op could compute in place, in order of preference."""
    op = node.op
    if isinstance(op, Fused):
        if op.reduce is not None or op.destroy or any(r[0] == "in" for r in op.outs):
            return []
        aliasing = {a for n, _, args, _ in op.eqns if n in ("second", "identity") for a in args}
        pairs = []
        for k, o in enumerate(node.outputs):
            for j, x in enumerate(node.inputs):
                if x.type == o.type or (x.dtype == o.dtype and
                                        x.type.broadcastable == o.type.broadcastable):
                    if ("in", j) not in aliasing:
                        pairs.append((k, j))
        return pairs
    if isinstance(op, Gemm) and op.has_z and not op.inplace:
        z = node.inputs[3]
        return [(0, 3)] if z.type.broadcastable == node.outputs[0].type.broadcastable else []
    if isinstance(op, Gemv) and op.has_v and not op.inplace:
        v = node.inputs[3]
        return [(0, 3)] if v.type.broadcastable == node.outputs[0].type.broadcastable else []
    if isinstance(op, Ger) and not op.inplace:
        return [(0, 0)]
    if isinstance(op, IncSubtensor) and not op.inplace:
        return [(0, 0)]                 # the output has x's type: x[idx] (+)= y written in x
    return []


def _inplace_op(node, pairs):
    op = node.op
    if isinstance(op, Fused):
        return Fused(op.in_dtypes, op.eqns, op.outs, op.reduce, op.ndim, tuple(pairs))
    if isinstance(op, Gemm):
        return Gemm(op.trans_a, op.trans_b, True, True)
    if isinstance(op, Gemv):
        return Gemv(op.trans, True, True)
    if isinstance(op, IncSubtensor):
        return IncSubtensor(op.template, op.set_instead_of_inc, True)
    return Ger(True)


def make_inplace(fgraph) -> int:
    """Turn ops into their in-place forms where the destroy handler allows it."""
    order = list(fgraph.toposort())
    pos = {n: i for i, n in enumerate(order)}
    inputs = set(fgraph.inputs)
    destroyed = set()
    constraints = []            # (reader, destroyer)
    renamed = {}
    count = 0
    for node in order:
        if node not in fgraph.apply_nodes:
            continue
        pairs = _candidates(node)
        if not pairs:
            continue
        usable = {}                     # input position -> the readers to order before node
        for j in {j for _, j in pairs}:
            v = node.inputs[j]
            if v in destroyed or not fresh(v) or v in inputs or \
                    any(x is v for i, x in enumerate(node.inputs) if i != j):
                continue
            found = _readers(fgraph, v)
            if found is None or node in found[1]:   # node also reads v through a view
                continue
            readers = found[0]
            if any(r is not node and pos.get(r, -1) >= pos[node] for r in readers):
                continue
            usable[j] = [r for r in readers if r is not node]
        chosen, used_out, used_in = [], set(), set()
        for k, j in pairs:
            if j in usable and k not in used_out and j not in used_in:
                chosen.append((k, j))
                used_out.add(k)
                used_in.add(j)
        if not chosen:
            continue
        readers_of = [(node.inputs[j], usable[j]) for _, j in chosen]
        new = _inplace_op(node, chosen).make_node(*node.inputs)
        new.tag.trace = getattr(node.tag, "trace", [])
        for o, n in zip(node.outputs, new.outputs):
            if config.optimizer_verbose:
                print(f"rewrite inplace: {node.op} -> {new.op}")
            fgraph.replace(o, n, "inplace")
        renamed[node] = new
        pos[new] = pos[node]
        for v, readers in readers_of:
            destroyed.add(v)
            constraints.extend((r, new) for r in readers)
        count += 1

    def final(n):
        while n in renamed:
            n = renamed[n]
        return n

    for r, d in constraints:
        fgraph.orderings.setdefault(final(d), set()).add(final(r))
    fgraph._order = None
    return count
