"""Indexing: basic slicing (views), integer/boolean-array (advanced) indexing, and
``set_subtensor`` / ``inc_subtensor`` with Theano's semantics.

An index is a static template plus symbolic inputs.  Template entries::

    ('slice', start, stop, step)   each part None | int | SYM (a symbolic int input)
    ('int', v)                     v int | SYM
    ('array',)                     an int or bool array input (advanced indexing)
    ('newaxis',)

Python ints stay in the template, so shapes and rewrites see them as constants.
"""
from __future__ import annotations

import numpy as np

from graphc.graph.basic import Apply, Constant, Op, Variable
from graphc.tensor.basic import cast, shape_i, zeros_like
from graphc.tensor.elemwise import describe, describe_values, shape_error
from graphc.tensor.type import TensorType, is_float, is_int
from graphc.tensor.var import as_tensor_variable, constant

SYM = "?"


def _is_static_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _part(v, inputs):
    """A slice part or int index: static int, None, or a symbolic input (SYM)."""
    if v is None:
        return None
    if _is_static_int(v):
        return int(v)
    if isinstance(v, Constant) and np.asarray(v.data).ndim == 0 and is_int(v.dtype):
        return int(v.data)
    v = as_tensor_variable(v)
    if v.ndim != 0 or not is_int(v.dtype):
        raise TypeError(f"index {v} must be an integer scalar, got {v.type}")
    inputs.append(cast(v, "int64"))
    return SYM


def parse_index(x, idx):
    """(template, symbolic index inputs) for ``x[idx]``."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    n_ell = sum(1 for i in idx if i is Ellipsis)
    if n_ell > 1:
        raise IndexError("an index can only have a single Ellipsis")
    consumed = 0
    for i in idx:
        if i is None or i is Ellipsis:
            continue
        if isinstance(i, (Variable, np.ndarray, list)):
            a = as_tensor_variable(i) if not isinstance(i, Variable) else i
            consumed += a.ndim if a.dtype == "bool" else 1
        else:
            consumed += 1
    if consumed > x.ndim:
        raise IndexError(f"too many indices ({consumed}) for a {x.ndim}-d tensor {x.type}")
    template, inputs = [], []
    for i in idx:
        if i is Ellipsis:
            template.extend([("slice", None, None, None)] * (x.ndim - consumed))
        elif i is None:
            template.append(("newaxis",))
        elif isinstance(i, slice):
            template.append(("slice", _part(i.start, inputs), _part(i.stop, inputs),
                             _part(i.step, inputs)))
        elif _is_static_int(i):
            template.append(("int", int(i)))
        elif isinstance(i, (list, np.ndarray)) or (isinstance(i, Variable) and i.ndim > 0):
            a = as_tensor_variable(i)
            if not (is_int(a.dtype)):
                raise TypeError(f"array index must be of int or bool dtype, got {a.type}")
            inputs.append(a)
            template.append(("array",))
        else:
            template.append(("int", _part(i, inputs)))
    return tuple(template), inputs


def build_numpy_index(template, values):
    it = iter(values)
    out = []
    for e in template:
        kind = e[0]
        if kind == "slice":
            parts = [int(next(it)) if p == SYM else p for p in e[1:]]
            out.append(slice(*parts))
        elif kind == "int":
            out.append(int(next(it)) if e[1] == SYM else e[1])
        elif kind == "array":
            out.append(np.asarray(next(it)))
        else:
            out.append(None)
    return tuple(out)


def _static_out_shape(x, template, inputs):
    """Static shape of x[template] (None where unknown), numpy's advanced-index rules."""
    shape = list(x.type.shape)
    it = iter(inputs)
    pieces = []            # list of (kind, dims) in order
    d = 0
    adv_shapes, adv_pos = [], []
    for e in template:
        kind = e[0]
        if kind == "newaxis":
            pieces.append([1])
            continue
        if kind == "slice":
            parts = [next(it) if p == SYM else p for p in e[1:]]
            n = shape[d]
            if all(not isinstance(p, Variable) for p in parts) and n is not None:
                pieces.append([len(range(*slice(*parts).indices(n)))])
            elif parts == [None, None, None]:
                pieces.append([n])
            else:
                pieces.append([None])
            d += 1
        elif kind == "int":
            if e[1] == SYM:
                next(it)
            pieces.append([])
            d += 1
        else:
            a = next(it)
            adv_pos.append(len(pieces))
            if a.dtype == "bool":
                adv_shapes.append((None,))
                d += a.ndim
            else:
                adv_shapes.append(a.type.shape)
                d += 1
            pieces.append(None)
    rest = shape[d:]
    if not adv_pos:
        return tuple(s for p in pieces for s in p) + tuple(rest)
    nd = max(len(s) for s in adv_shapes)
    bshape = []
    for k in range(nd):
        sizes = {s[k - (nd - len(s))] for s in adv_shapes if k - (nd - len(s)) >= 0} - {1}
        known = sizes - {None}
        bshape.append(known.pop() if len(known) == 1 and None not in sizes else
                      (1 if not sizes else None))
    contiguous = _adjacent(pieces)
    out = []
    placed = False
    for i, p in enumerate(pieces):
        if p is None:
            if contiguous and not placed:
                out.extend(bshape)
                placed = True
        else:
            out.extend(p)
    if not contiguous:
        out = bshape + out
    return tuple(out) + tuple(rest)


def _adjacent(pieces) -> bool:
    """numpy's rule: with an array index present, int entries are advanced indices too, and
    the broadcast index dims stay in place only if all advanced indices are adjacent
    (else they go first).  ``pieces``: None for an array entry, [] for an int entry."""
    adv = [i for i, p in enumerate(pieces) if p is None or p == []]
    return adv == list(range(adv[0], adv[-1] + 1))


class Subtensor(Op):
    """x[template] where no entry is an array: a view."""

    __props__ = ("template",)
    view_map = {0: [0]}

    def __init__(self, template):
        self.template = tuple(template)

    def __str__(self):
        return f"Subtensor{{{_fmt(self.template)}}}"

    def make_node(self, x, *idx):
        x = as_tensor_variable(x)
        shape = _static_out_shape(x, self.template, list(idx))
        return Apply(self, [x] + list(idx), [TensorType(x.dtype, shape=shape)()])

    def perform(self, node, inputs, out):
        x, *idx = inputs
        try:
            out[0][0] = np.asarray(x[build_numpy_index(self.template, idx)])
        except (IndexError, ValueError) as e:
            raise shape_error(self, describe_values([x]), f"{type(e).__name__}: {e}",
                              getattr(node.tag, "trace", [])) from None

    def infer_shape(self, node, shapes):
        from graphc.tensor import math as T
        xs = shapes[0]
        it = iter(node.inputs[1:])
        out, d = [], 0
        for e in self.template:
            if e[0] == "newaxis":
                out.append(constant(np.int64(1)))
            elif e[0] == "int":
                if e[1] == SYM:
                    next(it)
                d += 1
            else:
                parts = [next(it) if p == SYM else p for p in e[1:]]
                n = xs[d]
                if parts == [None, None, None]:
                    out.append(n)
                else:
                    out.append(_slice_len(n, *parts))
                d += 1
        out.extend(xs[d:])
        return [tuple(out)]

    def L_op(self, inputs, outputs, grads):
        x, *idx = inputs
        from graphc.gradient import disconnected_grad_type, zeros_grad
        gx = IncSubtensor(self.template, False)(zeros_like(x), grads[0], *idx) \
            if is_float(x.dtype) else zeros_grad(x)
        return [gx] + [disconnected_grad_type(i) for i in idx]

    def connection_pattern(self, node):
        return [[True]] + [[False]] * (len(node.inputs) - 1)


def _slice_len(n, start, stop, step):
    """Symbolic len(range(*slice(start, stop, step).indices(n)))."""
    from graphc.tensor import math as T
    n = as_tensor_variable(n)
    step_v = 1 if step is None else step
    if _is_static_int(step_v) and step_v > 0:
        def clamp(v, default):
            if v is None:
                return default
            v = as_tensor_variable(v)
            v = T.switch(T.lt(v, 0), v + n, v)
            return T.clip(v, 0, n)
        s = clamp(start, constant(np.int64(0)))
        e = clamp(stop, n)
        if step_v == 1:
            return T.maximum(e - s, 0)
        return T.maximum((e - s + (step_v - 1)) // step_v, 0)
    return SliceLen()(n, *(as_tensor_variable(-(2**62) if p is None else p) for p in
                           (start, stop, step)), *[constant(np.int64(int(p is None)))
                                                  for p in (start, stop, step)])


class SliceLen(Op):
    """Length of a slice with symbolic (possibly negative) step: numpy's rule."""

    __props__ = ()

    def make_node(self, n, start, stop, step, s_none, e_none, st_none):
        ins = [cast(as_tensor_variable(v), "int64") for v in
               (n, start, stop, step, s_none, e_none, st_none)]
        return Apply(self, ins, [TensorType("int64", shape=())()])

    def perform(self, node, inputs, out):
        n, s, e, st, sn, en, stn = (int(v) for v in inputs)
        sl = slice(None if sn else s, None if en else e, None if stn else st)
        out[0][0] = np.int64(len(range(*sl.indices(n))))


class AdvancedSubtensor(Op):
    """x[template] with at least one array entry: a copy, numpy's advanced indexing."""

    __props__ = ("template",)

    def __init__(self, template):
        self.template = tuple(template)

    def __str__(self):
        return f"AdvancedSubtensor{{{_fmt(self.template)}}}"

    make_node = Subtensor.make_node
    perform = Subtensor.perform
    connection_pattern = Subtensor.connection_pattern

    def infer_shape(self, node, shapes):
        from graphc.tensor import math as T
        xs = shapes[0]
        it = iter(node.inputs[1:])
        pieces, idx_shapes, d = [], [], 0   # idx_shapes: [(size, statically 1)] per array
        for e in self.template:
            if e[0] == "newaxis":
                pieces.append([constant(np.int64(1))])
            elif e[0] == "int":
                if e[1] == SYM:
                    next(it)
                pieces.append([])
                d += 1
            elif e[0] == "slice":
                parts = [next(it) if p == SYM else p for p in e[1:]]
                pieces.append([xs[d] if parts == [None, None, None] else _slice_len(xs[d], *parts)])
                d += 1
            else:
                a = next(it)
                if a.dtype == "bool":    # a mask selects its number of true entries
                    idx_shapes.append([(T.sum(T.cast(a, "int64")), False)])
                    d += a.ndim
                else:
                    sa = [shape_i(a, k) for k in range(a.ndim)]
                    idx_shapes.append(list(zip(sa, (s == 1 for s in a.type.shape))))
                    d += 1
                pieces.append(None)
        nd = max(len(s) for s in idx_shapes)
        bshape = []
        for k in range(nd):
            sizes = [s[k - (nd - len(s))] for s in idx_shapes if k - (nd - len(s)) >= 0]
            sizes = [v for v, one in sizes if not one]
            size = sizes[0] if sizes else constant(np.int64(1))
            for v in sizes[1:]:
                size = T.maximum(size, v)     # equal unless broadcasting from 1
            bshape.append(size)
        in_place = _adjacent(pieces)
        out = [] if in_place else list(bshape)
        placed = False
        for p in pieces:
            if p is not None:
                out.extend(p)
            elif in_place and not placed:
                out.extend(bshape)
                placed = True
        return [tuple(out) + tuple(xs[d:])]

    def L_op(self, inputs, outputs, grads):
        x, *idx = inputs
        from graphc.gradient import disconnected_grad_type, zeros_grad
        gx = IncSubtensor(self.template, False)(zeros_like(x), grads[0], *idx) \
            if is_float(x.dtype) else zeros_grad(x)
        return [gx] + [disconnected_grad_type(i) for i in idx]


class IncSubtensor(Op):
    """A copy of x with x[template] set to (or incremented by) y; y broadcasts to the slot.
    With array indices, repeated positions accumulate (numpy.add.at), as in Theano."""

    __props__ = ("template", "set_instead_of_inc", "inplace")

    def __init__(self, template, set_instead_of_inc, inplace=False):
        self.template = tuple(template)
        self.set_instead_of_inc = bool(set_instead_of_inc)
        # in place (rewriting/inplace.py, when x is a dead fresh buffer): no copy of x, whose
        # fresh allocation cost more than the copy (an LSTM's zeros-but-last output gradient,
        # (51, 32, 256) float32: 0.67 ms per call)
        self.inplace = bool(inplace)
        if self.inplace:
            self.destroy_map = {0: [0]}

    def __str__(self):
        kind = "Set" if self.set_instead_of_inc else "Inc"
        tail = ", inplace" if self.inplace else ""
        return f"{kind}Subtensor{{{_fmt(self.template)}{tail}}}"

    @property
    def advanced(self):
        return any(e[0] == "array" for e in self.template)

    def make_node(self, x, y, *idx):
        x, y = as_tensor_variable(x), as_tensor_variable(y)
        slot = _static_out_shape(x, self.template, list(idx))
        if y.ndim > len(slot):
            raise shape_error(self, describe([x, y]),
                              f"value has more dims than the indexed slot {slot}")
        for a, b in zip(reversed(y.type.shape), reversed(slot)):
            if a is not None and b is not None and a != 1 and a != b:
                raise shape_error(self, describe([x, y]),
                                  f"value of shape {y.type.shape_str()} does not fit slot {slot}")
        if y.dtype != x.dtype:
            y = cast(y, x.dtype)
        return Apply(self, [x, y] + list(idx), [x.type()])

    def perform(self, node, inputs, out):
        x, y, *idx = inputs
        r = x if self.inplace and x.flags.writeable else x.copy()
        index = build_numpy_index(self.template, idx)
        try:
            if self.set_instead_of_inc:
                r[index] = y
            elif self.advanced:
                np.add.at(r, index, y)
            else:
                r[index] += y
        except (IndexError, ValueError) as e:
            raise shape_error(self, describe_values([x, y]), f"{type(e).__name__}: {e}",
                              getattr(node.tag, "trace", [])) from None
        out[0][0] = r

    def infer_shape(self, node, shapes):
        return [shapes[0]]

    def L_op(self, inputs, outputs, grads):
        from graphc.gradient import disconnected_grad_type, zeros_grad
        from graphc.tensor.basic import sum_to_broadcast
        from graphc.tensor import math as T
        x, y, *idx = inputs
        g = grads[0]
        if self.set_instead_of_inc:
            gx = IncSubtensor(self.template, True)(g, T.zeros_like(y), *idx)
        else:
            gx = g
        sub = (AdvancedSubtensor if self.advanced else Subtensor)(self.template)(g, *idx)
        extra = sub.ndim - y.ndim
        if extra > 0:
            sub = T.sum(sub, axis=list(range(extra)))
        gy = sum_to_broadcast(sub, y)
        return [gx if is_float(x.dtype) else zeros_grad(x),
                gy if is_float(y.dtype) else zeros_grad(y)] + \
            [disconnected_grad_type(i) for i in idx]

    def connection_pattern(self, node):
        return [[True], [True]] + [[False]] * (len(node.inputs) - 2)


def _fmt(template):
    parts = []
    for e in template:
        if e[0] == "slice":
            parts.append(":".join("" if p is None else str(p) for p in e[1:3]) +
                         ("" if e[3] is None else f":{e[3]}"))
        elif e[0] == "int":
            parts.append(str(e[1]))
        elif e[0] == "array":
            parts.append("[]")
        else:
            parts.append("None")
    return ", ".join(parts)


def getitem(x, idx):
    template, inputs = parse_index(x, idx)
    if any(e[0] == "array" for e in template):
        return AdvancedSubtensor(template)(x, *inputs)
    if all(e == ("slice", None, None, None) for e in template):
        return x
    return Subtensor(template)(x, *inputs)


def _inc_or_set(x_sub, y, set_):
    node = x_sub.owner
    if node is None or not isinstance(node.op, (Subtensor, AdvancedSubtensor)):
        if node is None:
            # x[:] returns x itself
            return y if set_ else x_sub + y
        raise TypeError(f"{'set' if set_ else 'inc'}_subtensor needs an indexed tensor such as "
                        f"x[0:2] or x[idx], got {x_sub}")
    x, *idx = node.inputs
    return IncSubtensor(node.op.template, set_)(x, y, *idx)


def set_subtensor(x, y, inplace=False, tolerate_inplace_aliasing=False):
    """A copy of the tensor that ``x`` (an indexed tensor) indexes, with that part set to y."""
    return _inc_or_set(x, y, True)


def inc_subtensor(x, y, inplace=False, set_instead_of_inc=False, tolerate_inplace_aliasing=False):
    return _inc_or_set(x, y, set_instead_of_inc)


def take(a, indices, axis=None):
    a = as_tensor_variable(a)
    if axis is None:
        return a.flatten()[indices]
    idx = [slice(None)] * (axis % a.ndim) + [as_tensor_variable(indices)]
    return a[tuple(idx)]
