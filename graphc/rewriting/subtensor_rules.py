"""canonicalize rules for slice updates of zeros: the shape gradients of slices take.

The gradient of ``z[:, a:b]`` is ``inc_subtensor(zeros_like(z)[:, a:b], g)``; when a graph
slices ``z`` into pieces (the four gates of an LSTM), ``grad`` sums one such full-size buffer
per piece.  These rules turn the sum back into what it is, a concatenation::

    inc(zeros, a, [:, 0:n]) + inc(zeros, b, [:, n:])    -> join(1, a, b)
    inc(zeros, a, i) + inc(zeros, b, j)  (disjoint)      -> inc(inc(zeros, a, i), b, j)
    inc(inc(zeros, a, [0:n]), b, [n:])                   -> join(0, a, b)
    inc(zeros, y, idx covering everything)               -> y (broadcast to the shape)
    join(a, b)[:, :na]                                   -> a
    inc(zeros, a, i) + inc(zeros, b, i)  (same index)    -> inc(zeros, a + b, i)
    inc(zeros_like(x), inc(zeros_like(x[s:]), y, k), [s:])  -> inc(zeros_like(x), y, s + k)

(The last two are the gradient of ``h[-1] * h[-1]`` with ``h = x[1:]``, a scan's output: one
row set in a zero buffer instead of two zero buffers, a sum and two copies.)

Only static slices on one axis are understood: ``start``/``stop`` non-negative ints or
None, step None or 1, every other axis taken whole.  Such slices stay disjoint, and a run
of them from 0 to the end stays a cover, whatever the axis length turns out to be at run
time (numpy clamps each bound the same way), so coverage needs no static sizes; only
``join(...)[slice]`` needs the static sizes of the pieces before the one it picks.
A value ``y`` is assumed to fill its slot except along dims its type marks broadcastable
(Theano's typing contract); others are filled to the slot's shape first.
"""
from __future__ import annotations

from graphc.rewriting.engine import P, Rule, RuleSet, const_value, fit, in_dtype_of
from graphc.tensor import basic as tb
from graphc.tensor.elemwise import Elemwise
from graphc.tensor.subtensor import IncSubtensor, Subtensor

FULL = ("slice", None, None, None)


# --------------------------------------------------------------------------- helpers
def axis_slice(template, ndim):
    """(axis, start, stop) of a static one-axis slice template (stop None = to the end),
    or None.  A template that takes everything is (0, 0, None)."""
    if len(template) > ndim:
        return None
    found = None
    for d, e in enumerate(template):
        if e[0] != "slice":
            return None
        _, start, stop, step = e
        if step not in (None, 1):
            return None
        if any(p is not None and (not isinstance(p, int) or p < 0) for p in (start, stop)):
            return None         # symbolic ('?') or counted from the end
        start = start or 0
        if start == 0 and stop is None:
            continue            # this axis is taken whole
        if found is not None:
            return None
        found = (d, start, stop)
    return found if found is not None else (0, 0, None)


def is_zeros(v) -> bool:
    """v is all zeros: a zero constant, zeros_like (second(x, 0)) or alloc(0, ...)."""
    if const_value(v) == 0:
        return True
    node = v.owner
    if node is None:
        return False
    if type(node.op) is Elemwise and node.op.scalar_op.name == "second":
        return const_value(node.inputs[1]) == 0
    return isinstance(node.op, tb.Alloc) and const_value(node.inputs[0]) == 0


def _single_client(fgraph, v) -> bool:
    return len(fgraph.clients.get(v, ())) == 1


def zero_based_pieces(fgraph, v, top_may_share=False):
    """(zeros base, [(axis, start, stop, y, template)]) when v is a chain of static slice
    updates of zeros whose inner links nobody else reads, else None."""
    pieces = []
    first = True
    while v.owner is not None and isinstance(v.owner.op, IncSubtensor):
        node = v.owner
        if not (first and top_may_share) and not _single_client(fgraph, v):
            return None
        sl = axis_slice(node.op.template, v.ndim)
        if sl is None:
            return None
        pieces.append(sl + (node.inputs[1], node.op.template))
        v = node.inputs[0]
        first = False
    if not pieces or not is_zeros(v):
        return None
    return v, pieces


def sorted_disjoint(pieces):
    """The pieces in axis order when they lie on one axis and do not overlap, else None.
    (A set on zeros equals an inc there, so disjoint updates commute.)"""
    if len({p[0] for p in pieces}) != 1 and len(pieces) > 1:
        return None
    ordered = sorted(pieces, key=lambda p: p[1])
    for a, b in zip(ordered, ordered[1:]):
        if a[2] is None or a[2] > b[1]:
            return None
    return ordered


def covers(ordered, base) -> bool:
    """The sorted disjoint slices tile their axis from 0 to the end."""
    axis = ordered[0][0]
    if ordered[0][1] != 0:
        return False
    if any(a[2] != b[1] for a, b in zip(ordered, ordered[1:])):
        return False
    last = ordered[-1][2]
    return last is None or last == base.type.shape[axis]


def filled_to_slot(node, base, y, template):
    """y in node's dtype, broadcast to the shape of base[template] where its type allows
    it to be smaller."""
    y = in_dtype_of(node, y)
    slot = Subtensor(template)(base) if template else base
    if y.ndim == slot.ndim and all(sy != 1 or ss == 1 for sy, ss in
                                   zip(y.type.shape, slot.type.shape)):
        return y
    return tb.second(slot, y)


def _join_if_cover(node, base, ordered):
    """join(axis, y_0, y_1, ...) of sorted disjoint pieces that tile their axis, else None."""
    if not covers(ordered, base):
        return None
    parts = [filled_to_slot(node, base, p[3], p[4]) for p in ordered]
    return fit(node.outputs[0], tb.join(ordered[0][0], *parts))


# --------------------------------------------------------------------------- actions
def _inc_chain(fgraph, node, b):   # inc(..inc(zeros, a, i).., y, j) tiling the axis -> join
    found = zero_based_pieces(fgraph, node.outputs[0], top_may_share=True)
    if found is None:
        return None
    base, pieces = found
    ordered = sorted_disjoint(pieces)
    return None if ordered is None else _join_if_cover(node, base, ordered)


def _add_incs(fgraph, node, b):    # inc(zeros, a, i) + inc(zeros, b, j) -> one buffer / join
    out = node.outputs[0]
    base, pieces = None, []
    for v in node.inputs:
        if v.dtype != out.dtype or v.type.broadcastable != out.type.broadcastable:
            return None
        found = zero_based_pieces(fgraph, v)
        if found is None:
            return None
        base = base if base is not None else found[0]
        pieces.extend(found[1])
    ordered = sorted_disjoint(pieces)
    if ordered is None:
        return None
    joined = _join_if_cover(node, base, ordered)
    if joined is not None:
        return joined
    r = base
    for _axis, _start, _stop, y, template in ordered:
        r = IncSubtensor(template, False)(r, in_dtype_of(node, y))
    return fit(out, r)


def _slice_of_join(fgraph, node, b):  # join(a, b)[:, :na] -> a
    x = node.inputs[0]
    if len(node.inputs) != 1:
        return None
    sl = axis_slice(node.op.template, x.ndim)
    join = x.owner
    if sl is None or sl[1:] == (0, None):
        return None
    axis, start, stop = sl
    if axis != join.op.axis % x.ndim:
        return None
    offset = 0
    for k, piece in enumerate(join.inputs):
        size = piece.type.shape[axis]
        if offset == start:
            last = k == len(join.inputs) - 1
            if (size is not None and stop == offset + size) or (stop is None and last):
                return fit(node.outputs[0], in_dtype_of(node, piece))
            return None
        if size is None or offset > start:
            return None
        offset += size
    return None


def _same_index(n1, n2) -> bool:
    return n1.op == n2.op and len(n1.inputs) == len(n2.inputs) and \
        all(a is b for a, b in zip(n1.inputs[2:], n2.inputs[2:]))


def _add_same_inc(fgraph, node, b):  # inc(zeros, a, i) + inc(zeros, b, i) -> inc(zeros, a+b, i)
    if len(node.inputs) != 2:
        return None
    x, y = node.inputs
    nx, ny = x.owner, y.owner
    if nx is None or ny is None or not isinstance(nx.op, IncSubtensor) or \
            nx.op.set_instead_of_inc or not _same_index(nx, ny):
        return None
    zx, zy = nx.inputs[0], ny.inputs[0]
    if not (is_zeros(zx) and is_zeros(zy)) or zx.type != zy.type or \
            x.type != node.outputs[0].type or y.type != x.type:
        return None
    total = in_dtype_of(node, nx.inputs[1]) + in_dtype_of(node, ny.inputs[1])
    return fit(node.outputs[0], nx.op(zx, total, *nx.inputs[2:]))


def _zeros_like_of(v):
    """x for ``v = zeros_like(x)`` (second(x, 0)), else None."""
    n = v.owner
    if n is not None and type(n.op) is Elemwise and n.op.scalar_op.name == "second" and \
            const_value(n.inputs[1]) == 0:
        return n.inputs[0]
    return None


def _inc_of_inc_zeros(fgraph, node, b):  # inc(0(x), inc(0(x[s:]), y, k), [s:]) -> inc(0(x), y, s+k)
    outer = node.op
    inner_v = node.inputs[1]
    inner = inner_v.owner
    if outer.set_instead_of_inc or len(node.inputs) != 2 or inner is None or \
            not isinstance(inner.op, IncSubtensor) or inner.op.set_instead_of_inc or \
            len(inner.inputs) != 2 or not _single_client(fgraph, inner_v):
        return None
    t_out, t_in = outer.template, inner.op.template
    if not t_out or tuple(t_out[0][2:]) != (None, None) or t_out[0][0] != "slice" or \
            any(tuple(e) != FULL for e in t_out[1:]) or not t_in or t_in[0][0] != "int" or \
            any(tuple(e) != FULL for e in t_in[1:]):
        return None
    start, k = t_out[0][1] or 0, t_in[0][1]
    if not isinstance(start, int) or start < 0 or not isinstance(k, int):
        return None
    x = _zeros_like_of(node.inputs[0])
    part = _zeros_like_of(inner.inputs[0])
    if x is None or part is None or part.owner is None or \
            not isinstance(part.owner.op, Subtensor) or part.owner.inputs[0] is not x or \
            tuple(part.owner.op.template) != tuple(t_out):
        return None
    # row k of x[s:] is row s + k of x (k < 0 counts from the end of both; x[s:] shorter
    # than -k, where the original raises, is a program whose x[s:][k] raised already)
    template = (("int", k if k < 0 else start + k),) + tuple(t_in[1:])
    y = in_dtype_of(node, inner.inputs[1])
    return fit(node.outputs[0], IncSubtensor(template, False)(node.inputs[0], y))


RULES = RuleSet([
    Rule("add_inc_zeros", P("add"), _add_incs),                   # inc(0,a,i)+inc(0,b,j) -> inc(inc(0,a,i),b,j) | join
    Rule("inc_zeros_cover", P(IncSubtensor), _inc_chain),         # inc(inc(0,a,[:n]),b,[n:]) -> join(a, b)
    Rule("slice_of_join", P(Subtensor, P(tb.Join)), _slice_of_join),  # join(a, b)[:na] -> a
    Rule("add_same_inc", P("add"), _add_same_inc),                # inc(0,a,i)+inc(0,b,i)
    Rule("inc_of_inc_zeros", P(IncSubtensor), _inc_of_inc_zeros),  # inc(0(x),inc(0(x[s:]),y,k),s:)
])
