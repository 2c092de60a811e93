"""canonicalize: put graphs in one simple form before the other passes look at them.

Common-subexpression merge, constant folding, algebraic identities, DimShuffle lifting,
shape-graph simplification (``x.shape[i]`` of an intermediate becomes an expression of
input shapes, static sizes become constants) and dead-code elimination.
"""
from __future__ import annotations

import numpy as np

from graphc.graph.basic import Constant
from graphc.rewriting.engine import C, NodeRule, P, Rule, RuleSet, const_value, fit, in_dtype_of
from graphc.tensor import basic as tb
from graphc.tensor.elemwise import CAReduce, DimShuffle, elemwise
from graphc.tensor.math import Dot
from graphc.tensor.scalar_ops import SCALAR
from graphc.tensor.subtensor import Subtensor
from graphc.tensor.type import TensorType
from graphc.tensor.var import TensorConstant, constant

# folding never builds constants much larger than what it started from (alloc/eye/tile)
FOLD_MAX_GROWTH = 10_000


# --------------------------------------------------------------------------- merge & DCE
def deterministic(node) -> bool:
    """Nodes that may be folded or merged: not random draws, not prints, not in-place."""
    op = node.op
    return not getattr(op, "destroy_map", None) and op.do_constant_folding(node)


def merge(fgraph):
    """Common-subexpression elimination: equal constants, then equal (op, inputs) nodes."""
    consts = {}
    for v in [v for v in fgraph.variables if isinstance(v, Constant)]:
        try:
            key = v.signature()
        except Exception:   # pragma: no cover - unhashable data
            continue
        keep = consts.setdefault(key, v)
        if keep is not v and v in fgraph.variables:
            fgraph.replace(v, keep, "merge")
    # nodes are grouped by their inputs (cheap identity hashes); ops are compared only
    # within a group, so op props are never hashed
    seen = {}
    n = 0
    for node in list(fgraph.toposort()):
        if node not in fgraph.apply_nodes or not deterministic(node):
            continue
        group = seen.setdefault(tuple(node.inputs), [])
        other = next((g for g in group if g.op == node.op), None)
        if other is None:
            group.append(node)
            continue
        for o, oo in zip(node.outputs, other.outputs):
            new = fit(o, oo)
            if fgraph.clients.get(o) and new is not None:
                fgraph.replace(o, new, "merge")
        n += 1
    return n


def dce(fgraph):
    """Dead-code elimination: keep exactly the nodes some output needs."""
    fgraph._order = None
    fgraph.toposort()


# --------------------------------------------------------------------------- constant folding
def _fold(fgraph, node, b):
    if not node.inputs or not all(isinstance(i, Constant) for i in node.inputs):
        return None
    if not deterministic(node) or not all(isinstance(o.type, TensorType) for o in node.outputs):
        return None
    storage = [[None] for _ in node.outputs]
    node.op.perform(node, [i.data for i in node.inputs], storage)
    biggest = max(np.size(i.data) for i in node.inputs)
    out = []
    for o, (val,) in zip(node.outputs, storage):
        a = np.array(val, dtype=o.type.numpy_dtype)
        if a.ndim != o.ndim or (a.size > FOLD_MAX_GROWTH and a.size > biggest):
            return None
        try:        # the constant keeps the type of what it replaces (its broadcasting)
            out.append(TensorConstant(o.type, a))
        except TypeError:
            return None
    return out


# --------------------------------------------------------------------------- identities
def _zeros(fgraph, node, b):
    out = node.outputs[0]
    return tb.second(b["x"], constant(np.zeros((), dtype=out.dtype)))


def _neg_is_exact(node, y) -> bool:
    """Is neg(y), computed in y's dtype, the same as in node's output dtype?  Always for
    floats; for ints only in the same dtype (int8: -(-128) wraps to -128; uint8 wraps all)."""
    return y.dtype == node.outputs[0].dtype or y.dtype.startswith("float")


def _add_neg(fgraph, node, b):          # x + neg(y) -> x - y
    if not _neg_is_exact(node, b["y"]):
        return None
    return elemwise("sub")(b["x"], b["y"])


def _sub_neg(fgraph, node, b):          # x - neg(y) -> x + y
    if not _neg_is_exact(node, b["y"]):
        return None
    return elemwise("add")(b["x"], b["y"])


def _neg(fgraph, node, b):              # x * -1 -> neg(x)
    return elemwise("neg")(in_dtype_of(node, b["x"]))


def _neg_const_factor(fgraph, node, b):  # -(c * x) -> (-c) * x; -(c / x) -> (-c) / x
    inner = node.inputs[0].owner
    c, x = inner.inputs
    v = const_value(c)
    if v is None or c.dtype[0] not in "fi" or any(s is None for s in c.type.shape):
        return None
    if c.dtype[0] == "i" and not np.iinfo(c.dtype).min <= -v <= np.iinfo(c.dtype).max:
        return None                     # -int8(-128) does not fit: (-c) would wrap
    neg_c = constant(np.full(c.type.shape, -v, dtype=c.dtype))
    return fit(node.outputs[0], inner.op(neg_c, x))


def _cast_cast(fgraph, node, b):        # cast{a}(cast{b}(x)) -> cast{a}(x) when b holds x
    x = b["x"]
    mid = node.inputs[0].dtype
    if not np.can_cast(x.dtype, mid, casting="safe"):
        return None
    return tb.cast(x, node.outputs[0].dtype)


def _switch_const(fgraph, node, b):     # switch(c, a, b) -> a or b for a constant c
    c = const_value(node.inputs[0])
    if c is None:
        return None
    pick = node.inputs[1] if c else node.inputs[2]
    return fit(node.outputs[0], pick)


def _ds_ds(fgraph, node, b):            # dimshuffle(dimshuffle(x)) -> one dimshuffle
    inner = node.inputs[0].owner.op
    order = tuple("x" if d == "x" else inner.new_order[d] for d in node.op.new_order)
    x = b["x"]
    if order == tuple(range(x.ndim)):
        return x
    return DimShuffle(x.ndim, order)(x)


def _ds_noop(fgraph, node, b):          # dimshuffle{0,1,..}(x) -> x
    if node.op.new_order == tuple(range(node.op.input_ndim)):
        return b["x"]
    return None


def _ds_lift(fgraph, node, b):
    """dimshuffle(f(a, b)) -> f(dimshuffle(a), dimshuffle(b)) when f's output has no other
    client and every input is itself a dimshuffle or a constant: the dimshuffles then merge
    or fold away (lifting further would only move work around, one rewrite per level)."""
    ew = node.inputs[0]
    if len(fgraph.clients.get(ew, ())) != 1:
        return None
    if not all(isinstance(i, Constant) or (i.owner is not None and isinstance(i.owner.op, DimShuffle))
               for i in ew.owner.inputs):
        return None
    if any(c != "output" and isinstance(c.op, Dot) for c, _ in fgraph.clients.get(node.out, ())):
        return None                     # a transpose feeding a dot becomes a BLAS flag
    ins = ew.owner.inputs
    order = node.op.new_order
    return ew.owner.op(*[DimShuffle(i.ndim, order)(i) for i in ins])


def _scalar_sink(fgraph, node, b):
    """f(a.dimshuffle('x', 'x'), 2.0) -> f(a, 2.0).dimshuffle('x', 'x') for 0-d a: scalar
    arithmetic stays scalar, and the broadcast becomes one padding a fused node absorbs."""
    out = node.outputs[0]
    if out.ndim == 0 or not all(out.type.broadcastable):
        return None
    ins, seen_var = [], False
    for v in node.inputs:
        if isinstance(v, Constant) and np.size(v.data) == 1:
            ins.append(constant(np.asarray(v.data).reshape(())))
        elif v.owner is not None and isinstance(v.owner.op, DimShuffle) and \
                v.owner.inputs[0].ndim == 0:
            ins.append(v.owner.inputs[0])
            seen_var = True
        else:
            return None
    if not seen_var:
        return None
    return node.op(*ins).dimshuffle(["x"] * out.ndim)


def _reduce_bcast(fgraph, node, b):     # reduce over dims of size 1 -> drop them
    x = b["x"]
    op = node.op
    axes = range(x.ndim) if op.axis is None else op.axis
    if not axes or not all(x.type.broadcastable[a] for a in axes):
        return None
    if op.kind in ("and", "or") and x.dtype != "bool":
        return None
    keep = [d for d in range(x.ndim) if d not in axes]
    return DimShuffle(x.ndim, keep)(x)


def _reshape_reshape(fgraph, node, b):  # reshape(reshape(x, s1), s2) -> reshape(x, s2)
    return tb.Reshape(node.op.ndim)(b["x"], node.inputs[1])


def _reshape_noop(fgraph, node, b):     # reshape(x, x.shape) -> x
    x, shp = node.inputs
    if x.ndim != node.op.ndim:
        return None
    entries = shape_entries(shp)
    if entries is None:
        return None
    for d, e in enumerate(entries):
        if not same_size(e, x, d):
            return None
    return x


def _specify_noop(fgraph, node, b):     # specify_shape(x, s) -> x when x's type says so
    x = b["x"]
    if all(s is None or s == k for s, k in zip(node.op.shape, x.type.shape)):
        return x if x.type == node.outputs[0].type else None
    return None


def _fill_cut(fgraph, node, b):
    """f(second(x, y), z) -> f(y, z) when z alone gives f's output its shape."""
    out = node.outputs[0]
    ins = list(node.inputs)
    changed = False
    for k, v in enumerate(ins):
        if v.owner is None or v.owner.op != _SECOND:
            continue
        others = [w for j, w in enumerate(ins) if j != k]
        if any(w.type.broadcastable == out.type.broadcastable for w in others):
            y = v.owner.inputs[1]
            if y.dtype != v.dtype:
                y = tb.cast(y, v.dtype)
            ins[k] = y
            changed = True
    if not changed or node.op == _SECOND:
        return None
    return node.op(*ins)


def _fill_sink(fgraph, node, b):
    """f(second(x, y), c) -> second(x, f(y, c)) when the fill alone gives f's output its
    shape: the fill moves outward, where constants fold and a full operand cuts it."""
    out = node.outputs[0]
    ins = list(node.inputs)
    for k, v in enumerate(ins):
        if v.owner is not None and v.owner.op == _SECOND and \
                v.type.broadcastable == out.type.broadcastable:
            x, y = v.owner.inputs
            ins[k] = y
            return fit(out, tb.second(x, node.op(*ins)))
    return None


_SECOND = elemwise("second")
_BINARY = tuple(n for n, s in SCALAR.items() if s.nin >= 2 and n != "second")
_UNARY = tuple(n for n, s in SCALAR.items() if s.nin == 1 and n != "identity") + ("cast",)


# --------------------------------------------------------------------------- shapes
def shape_entries(vec):
    """The entries of an int shape vector as scalar variables (None when unknown)."""
    if isinstance(vec, Constant):
        return [constant(np.int64(v)) for v in np.asarray(vec.data).reshape(-1)]
    if vec.owner is not None and isinstance(vec.owner.op, tb.MakeVector):
        return list(vec.owner.inputs)
    if vec.owner is not None and isinstance(vec.owner.op, tb.Shape):
        x = vec.owner.inputs[0]
        return [tb.shape_i(x, d) for d in range(x.ndim)]
    return None


def _shape_index(v):
    """(x, i) when v is x.shape[i] (Subtensor{i}(Shape(x))), else None."""
    n = v.owner
    if n is None or not isinstance(n.op, Subtensor) or len(n.op.template) != 1:
        return None
    e = n.op.template[0]
    if e[0] != "int" or not isinstance(e[1], int):
        return None
    s = n.inputs[0].owner
    if s is None or not isinstance(s.op, tb.Shape):
        return None
    x = s.inputs[0]
    return x, e[1] % max(x.ndim, 1)


def inferred_shape_i(x, i):
    """x.shape[i] from x's producer's infer_shape, as an int64 scalar; None without one."""
    if x.type.shape[i] is not None:
        return constant(np.int64(x.type.shape[i]))
    node = x.owner
    if node is None or not hasattr(node.op, "infer_shape"):
        return None
    if isinstance(node.op, tb.ARange):  # len(arange(0, n, 1)) is n for a size n
        start, stop, step = node.inputs
        if const_value(start) == 0 and const_value(step) == 1 and stop.dtype == "int64" and \
                (_shape_index(stop) is not None or (const_value(stop) or -1) >= 0):
            return stop
    in_shapes = [tuple(tb.shape_i(v, d) for d in range(v.ndim))
                 if isinstance(v.type, TensorType) else None for v in node.inputs]
    try:
        shapes = node.op.infer_shape(node, in_shapes)
        e = shapes[x.index][i]
    except Exception:       # an op whose shape rule cannot answer here keeps Shape(x)
        return None
    if e is None:
        return None
    if isinstance(e, (int, np.integer)):
        return constant(np.int64(e))
    from graphc.tensor.var import as_tensor_variable
    e = as_tensor_variable(e)
    if e.ndim != 0:
        return None
    return e if e.dtype == "int64" else tb.cast(e, "int64")


def canonical_size(v, depth=64):
    """A key that two int64 scalars share when they are provably the same size:
    ('const', n) or ('shape', input, i)."""
    for _ in range(depth):
        c = const_value(v)
        if c is not None and v.ndim == 0:
            return ("const", int(c))
        si = _shape_index(v)
        if si is None:
            return ("var", v)
        x, i = si
        nxt = inferred_shape_i(x, i)
        if nxt is None:
            return ("shape", x, i)
        v = nxt
    return ("var", v)


def same_size(e, x, d) -> bool:
    """Is the scalar e provably x.shape[d]?"""
    return canonical_size(e) == canonical_size(tb.shape_i(x, d))


def _shape_i_rule(fgraph, node, b):     # x.shape[i] -> from input shapes / static size
    si = _shape_index(node.outputs[0])
    if si is None:
        return None
    return inferred_shape_i(*si)


def _shape_rule(fgraph, node, b):       # shape(x) -> [x.shape[0], ...] of input shapes
    x = node.inputs[0]
    if all(s is not None for s in x.type.shape):
        return constant(np.asarray(x.type.shape, dtype=np.int64).reshape(x.ndim))
    if x.owner is None or not hasattr(x.owner.op, "infer_shape") or x.ndim == 0:
        return None
    entries = [inferred_shape_i(x, d) for d in range(x.ndim)]
    if any(e is None for e in entries):
        return None
    return tb.MakeVector("int64")(*entries)


def _makevector_index(fgraph, node, b):  # [a, b, c][i] -> entry i
    t = node.op.template
    if len(t) != 1 or t[0][0] != "int" or not isinstance(t[0][1], int):
        return None
    entries = node.inputs[0].owner.inputs
    return fit(node.outputs[0], entries[t[0][1]])


RULES = RuleSet([
    NodeRule("constant_folding", _fold),                                # f(consts) -> const
    Rule("mul_one", P("mul", "x", C(1)), "x"),                          # x*1 -> x
    Rule("add_zero", P("add", "x", C(0)), "x"),                         # x+0 -> x
    Rule("sub_zero", P("sub", "x", C(0)), "x"),                         # x-0 -> x
    Rule("div_one", P("true_div", "x", C(1)), "x"),                     # x/1 -> x
    Rule("pow_one", P("pow", "x", C(1)), "x"),                          # x**1 -> x
    Rule("sub_self", P("sub", "x", "x"), _zeros),                       # x-x -> 0
    Rule("mul_minus_one", P("mul", "x", C(-1)), _neg),                  # x*-1 -> -x
    Rule("add_neg", P("add", "x", P("neg", "y")), _add_neg),            # x+(-y) -> x-y
    Rule("sub_neg", P("sub", "x", P("neg", "y")), _sub_neg),            # x-(-y) -> x+y
    Rule("neg_neg", P("neg", P("neg", "x")), "x"),                      # -(-x) -> x
    Rule("neg_const_factor", P("neg", P(("mul", "true_div"), "_", "_")),  # -(c*x) -> (-c)*x
         _neg_const_factor),
    Rule("exp_log", P("exp", P("log", "x")), "x"),                      # exp(log x) -> x
    Rule("log_exp", P("log", P("exp", "x")), "x"),                      # log(exp x) -> x
    Rule("identity", P("identity", "x"), "x"),                          # identity(x) -> x
    Rule("cast_cast", P("cast", P("cast", "x")), _cast_cast),           # cast(cast x) -> cast x
    Rule("switch_const", P("switch", "_", "_", "_"), _switch_const),    # switch(1, a, b) -> a
    Rule("second_full", P("second", "_", "y",                           # second(x, y) -> y
                          when=lambda v, b: b["y"].type == v.type), "y"),
    Rule("fill_cut", P(_BINARY), _fill_cut),                            # f(fill(x,y), z) -> f(y, z)
    Rule("fill_sink", P(_UNARY + _BINARY), _fill_sink),                 # f(fill(x,y)) -> fill(x, f y)
    Rule("scalar_sink", P(_UNARY + _BINARY + ("second",)), _scalar_sink),  # f(a[None], 2) -> f(a, 2)[None]
    Rule("dimshuffle_noop", P(DimShuffle, "x"), _ds_noop),              # x.dimshuffle(0,1) -> x
    Rule("dimshuffle_merge", P(DimShuffle, P(DimShuffle, "x")), _ds_ds),  # double transpose -> x
    Rule("dimshuffle_lift", P(DimShuffle, P(_BINARY + _UNARY + ("second",))),  # ds(f(a)) -> f(ds a)
         _ds_lift),
    Rule("reduce_broadcast_axes", P(CAReduce, "x"), _reduce_bcast),     # sum over size-1 dims
    Rule("reshape_reshape", P(tb.Reshape, P(tb.Reshape, "x", "_"), "_"),  # reshape(reshape x) -> reshape x
         _reshape_reshape),
    Rule("reshape_noop", P(tb.Reshape, "_", "_"), _reshape_noop),       # reshape(x, x.shape) -> x
    Rule("specify_shape_noop", P(tb.SpecifyShape, "x"), _specify_noop),  # known shape -> x
    Rule("shape_i", P(Subtensor, P(tb.Shape, "_")), _shape_i_rule),     # x.shape[i] of inputs
    Rule("shape", P(tb.Shape, "_"), _shape_rule),                       # shape(f(x)) -> [...]
    Rule("make_vector_index", P(Subtensor, P(tb.MakeVector)), _makevector_index),  # [a, b][1] -> b
])
