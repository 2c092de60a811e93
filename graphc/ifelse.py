"""``ifelse(cond, a, b)``: a lazy conditional (``from theano.ifelse import ifelse``).

Unlike ``T.switch``, which computes both operands elementwise, IfElse computes only the
branch that is taken.  The linkers run every node of a graph, so the laziness lives in the
op: each branch is an inner graph, compiled once, whose inputs are the outer variables it
reads.  ``ifelse`` decides what goes inside each branch: everything the branch alone needs;
what the condition or *both* branches need is computed outside, once, either way.

Consequence: a variable used only inside one branch lives in that branch's inner graph,
so ``grad`` with respect to it (rather than to an input, a shared variable or a value also
used by the condition or the other branch) sees no path through the IfElse, and ``givens``
cannot replace it.  Differentiate with respect to graph inputs, as usual.

Gradient: ``ifelse(cond, vjp_of_then_branch, 0)`` for the inputs of the then branch and
``ifelse(cond, 0, vjp_of_else_branch)`` for the else branch; lazy again.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from graphc.compile import graph_cache
from graphc.graph.basic import Apply, Constant, Op, ancestors, clone_replace, io_toposort
from graphc.scan_module.utils import (compiled, graph_signature, infer_inner_shapes, is_zero,
                                      resolve_mode, substitute)
from graphc.tensor.type import TensorType, is_float

__all__ = ["ifelse", "IfElse"]


class IfElse(Op):
    """Inputs: ``[cond, *then_inputs, *else_inputs]``; outputs: the taken branch's values."""

    __props__ = ("n_then", "then_sig", "else_sig", "out_types", "name")

    def __init__(self, then_inputs, then_outputs, else_inputs, else_outputs, out_types,
                 name=None):
        self.then_inputs, self.then_outputs = list(then_inputs), list(then_outputs)
        self.else_inputs, self.else_outputs = list(else_inputs), list(else_outputs)
        self.n_then = len(self.then_inputs)
        self.out_types = tuple(out_types)
        self.name = name
        self.then_sig = graph_signature(self.then_inputs, self.then_outputs)
        self.else_sig = graph_signature(self.else_inputs, self.else_outputs)
        self._hash = hash((type(self), self._props()))

    def __hash__(self):
        return self._hash

    def __getstate__(self):         # the graph cache: string hashes differ between processes
        return {k: v for k, v in self.__dict__.items() if k not in ("_hash", "_cache_origin")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._hash = hash((type(self), self._props()))
        # loaded from the graph cache: the branch functions' keys derive from this
        self._cache_origin = graph_cache.origin()

    def __str__(self):
        return f"IfElse{{{self.name}}}" if self.name else "IfElse"

    __repr__ = __str__

    def inner_str(self):
        n_then = len(io_toposort(self.then_inputs, self.then_outputs))
        n_else = len(io_toposort(self.else_inputs, self.else_outputs))
        return (f"then: {self.n_then} inputs, {n_then} nodes; "
                f"else: {len(self.else_inputs)} inputs, {n_else} nodes")

    def make_node(self, cond, *args):
        from graphc.tensor.var import as_tensor_variable
        cond = as_tensor_variable(cond)
        if cond.ndim != 0:
            raise TypeError(f"{self}: the condition must be a scalar, got {cond.type}")
        args = [as_tensor_variable(a) for a in args]
        inner = self.then_inputs + self.else_inputs
        if len(args) != len(inner):
            raise TypeError(f"{self} takes {len(inner)} inputs after the condition, "
                            f"got {len(args)}")
        for a, i in zip(args, inner):
            if a.dtype != i.dtype or a.ndim != i.ndim:
                raise TypeError(f"{self}: input {a} is {a.type}, the branch expects {i.type}")
        return Apply(self, [cond] + args, [t() for t in self.out_types])

    def perform(self, node, inputs, output_storage):
        cond, args = inputs[0], inputs[1:]
        if cond:
            fn = compiled(self, "then", self.then_inputs, self.then_outputs, resolve_mode(None))
            values = fn(args[:self.n_then])
        else:
            fn = compiled(self, "else", self.else_inputs, self.else_outputs, resolve_mode(None))
            values = fn(args[self.n_then:])
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        for k, (v, t) in enumerate(zip(values, self.out_types)):
            v = np.asarray(v)
            # a branch may return an input (or a view of one): the output must not alias it
            if any(np.may_share_memory(v, a) for a in arrays):
                v = v.copy()
            if v.dtype != t.numpy_dtype:
                v = v.astype(t.numpy_dtype)
            output_storage[k][0] = v

    def connection_pattern(self, node):
        return [[False] * len(node.outputs)] + [[True] * len(node.outputs)
                                                for _ in node.inputs[1:]]

    def infer_shape(self, node, input_shapes):
        from graphc.tensor.math import switch
        from graphc.tensor.var import constant
        cond = node.inputs[0]
        shp = input_shapes[1:]
        then_s = infer_inner_shapes(self.then_inputs, self.then_outputs, shp[:self.n_then])
        else_s = infer_inner_shapes(self.else_inputs, self.else_outputs, shp[self.n_then:])
        out = []
        for t, a, b in zip(self.out_types, then_s, else_s):
            dims = []
            for d in range(t.ndim):
                if t.shape[d] is not None:
                    dims.append(constant(np.int64(t.shape[d])))
                    continue
                if a is None or b is None or a[d] is None or b[d] is None:
                    raise NotImplementedError(f"{self}: a branch's output shape depends on "
                                              f"values computed inside the branch")
                dims.append(a[d] if a[d] is b[d] else switch(cond, a[d], b[d]))
            out.append(tuple(dims))
        return out

    def L_op(self, inputs, outputs, output_grads):
        from graphc import gradient
        from graphc.tensor.basic import zeros_like
        cond, args = inputs[0], inputs[1:]
        then_args, else_args = args[:self.n_then], args[self.n_then:]
        tg = _branch_vjp(self.then_inputs, self.then_outputs, then_args, output_grads)
        eg = _branch_vjp(self.else_inputs, self.else_outputs, else_args, output_grads)
        result = [gradient.disconnected_grad_type()] + [None] * len(args)
        a_list, b_list, slots = [], [], []
        for k, g in enumerate(tg + eg):
            x = args[k]
            if g is None:
                result[1 + k] = gradient.disconnected_grad_type()
            elif gradient._is_null(g):
                result[1 + k] = g
            else:
                taken, other = (g, zeros_like(x)) if k < self.n_then else (zeros_like(x), g)
                a_list.append(taken)
                b_list.append(other)
                slots.append(1 + k)
        if slots:
            for k, v in zip(slots, ifelse(cond, a_list, b_list, name=f"grad_{self.name or ''}")):
                result[k] = v
        return result


def _branch_vjp(inner_in, inner_out, outer_in, output_grads):
    """Per inner input of one branch: its VJP as an outer graph, None when disconnected."""
    from graphc import gradient
    known = {}
    for o, g in zip(inner_out, output_grads):
        if isinstance(o, Constant) or not is_float(o.dtype) or is_zero(g):
            continue
        known[o] = known[o] + g if o in known else g
    res = [None] * len(inner_in)
    wrt = [v for v in inner_in if is_float(v.dtype)]
    if not known or not wrt:
        return res
    grads = gradient.grad(None, wrt, known_grads=known, disconnected_inputs="ignore",
                          return_disconnected="Disconnected", null_gradients="return")
    keep = [(v, g) for v, g in zip(wrt, grads)
            if not gradient._is_disconnected(g) and not gradient._is_null(g)]
    outer = substitute([g for _, g in keep], dict(zip(inner_in, outer_in)))
    pos = {v: i for i, v in enumerate(inner_in)}
    for (v, _), g in zip(keep, outer):
        res[pos[v]] = g
    for v, g in zip(wrt, grads):
        if gradient._is_null(g):
            res[pos[v]] = g
    return res


def ifelse(condition, then_branch, else_branch, name=None):
    """``then_branch`` if the scalar ``condition`` is true (nonzero), else ``else_branch``;
    only the chosen branch is computed.  Branches are variables or equal-length lists of
    variables with matching dtypes and ranks."""
    from graphc.tensor.basic import cast
    from graphc.tensor.var import as_tensor_variable
    single = not isinstance(then_branch, (list, tuple))
    thens = [as_tensor_variable(v) for v in (then_branch if not single else [then_branch])]
    elses = [as_tensor_variable(v) for v in
             (else_branch if isinstance(else_branch, (list, tuple)) else [else_branch])]
    if len(thens) != len(elses):
        raise ValueError(f"ifelse: the then branch has {len(thens)} outputs, the else branch "
                         f"{len(elses)}")
    cond = as_tensor_variable(condition)
    if cond.ndim != 0:
        raise TypeError(f"ifelse: the condition must be a scalar, got {cond.type}")
    out_types = []
    for k, (a, b) in enumerate(zip(thens, elses)):
        if getattr(a.tag, "weak", False) and a.dtype != b.dtype:
            a = thens[k] = cast(a, b.dtype)
        if getattr(b.tag, "weak", False) and a.dtype != b.dtype:
            b = elses[k] = cast(b, a.dtype)
        if a.dtype != b.dtype or a.ndim != b.ndim:
            raise TypeError(f"ifelse: output {k} is {a.type} in the then branch and {b.type} "
                            f"in the else branch; both branches must have the same dtype and "
                            f"number of dimensions (cast one of them)")
        shape = tuple(x if x == y else None for x, y in zip(a.type.shape, b.type.shape))
        out_types.append(TensorType(a.dtype, shape=shape))

    # computed outside either way: what the condition needs, and what both branches need
    outside = set(ancestors([cond])) | (set(ancestors(thens)) & set(ancestors(elses)))
    then_in, then_out = _branch(thens, outside)
    else_in, else_out = _branch(elses, outside)
    op = IfElse([p for _, p in then_in], then_out, [p for _, p in else_in], else_out,
                out_types, name)
    outs = op.make_node(cond, *[v for v, _ in then_in], *[v for v, _ in else_in]).outputs
    return outs[0] if single else outs


def _branch(outputs, outside):
    """([(outer variable, inner placeholder)], inner outputs) for one branch."""
    frontier = OrderedDict()
    for node in io_toposort(list(outside), outputs):
        for v in node.inputs:
            if (v in outside or v.owner is None) and not isinstance(v, Constant):
                frontier[v] = None
    for o in outputs:
        if (o in outside or o.owner is None) and not isinstance(o, Constant):
            frontier[o] = None
    pairs = [(v, v.type(v.name)) for v in frontier]
    inner = clone_replace(outputs, {v: p for v, p in pairs}) if pairs else \
        clone_replace(outputs, {})
    return pairs, inner
