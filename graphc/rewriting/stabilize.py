"""stabilize: rewrite the naive formulas users write into numerically stable forms.

The gradient graphs that theano.grad built from the naive forward are caught too: they
exist before the optimizer runs, so their patterns (softmax grad of ``onehot / softmax``,
``(g / sigmoid x) * sigmoid x``) are rewritten, as Theano's
``local_advanced_indexing_crossentropy_onehot_grad`` did.
"""
from __future__ import annotations

import numpy as np

from graphc.rewriting.canonicalize import same_size
from graphc.rewriting.engine import C, P, Rule, RuleSet, const_value, fit, fit_or_fill
from graphc.tensor import basic as tb
from graphc.tensor import math as M
from graphc.tensor.basic import ARange, Alloc
from graphc.tensor.elemwise import CAReduce, DimShuffle, elemwise
from graphc.tensor.nnet.basic import LogSoftmax, Softmax
from graphc.tensor.nnet.xent import SoftmaxCrossentropy, SoftmaxCrossentropyGrad
from graphc.tensor.subtensor import AdvancedSubtensor, IncSubtensor, Subtensor

_XENT_TEMPLATE = (("array",), ("array",))


def softmax_input(v):
    """(z, axis) when v is softmax(z) over axis (a Softmax op or the stable xent op's
    softmax output), else None."""
    n = v.owner
    if n is None:
        return None
    if type(n.op) is Softmax:
        return n.inputs[0], n.op.axis % v.ndim
    if isinstance(n.op, SoftmaxCrossentropy) and v is n.outputs[1]:
        return n.inputs[0], 1
    return None


def _is_zeros(v):
    n = v.owner
    if n is not None and (n.op == elemwise("second") or isinstance(n.op, Alloc)):
        v = n.inputs[1] if n.op == elemwise("second") else n.inputs[0]
    return const_value(v) == 0


# --------------------------------------------------------------------------- softmax family
def _log_softmax(fgraph, node, b):      # log(softmax x) -> log_softmax x
    return LogSoftmax(b["sm"].owner.op.axis)(b["x"])


def _log_indexed_softmax(fgraph, node, b):   # log(softmax(z)[idx]) -> log_softmax(z)[idx]
    sub = node.inputs[0].owner
    sm = sub.inputs[0]
    if sm.owner is None or type(sm.owner.op) is not Softmax:
        return None
    lsm = LogSoftmax(sm.owner.op.axis)(sm.owner.inputs[0])
    return type(sub.op)(sub.op.template)(lsm, *sub.inputs[1:])


def _is_row_range(ar, z) -> bool:
    """Is ar arange(z.shape[0]) (every row of z once, in order)?"""
    n = ar.owner
    if n is None:
        # constant folding turns arange(n) into a constant when n is static
        data = getattr(ar, "data", None)
        rows = z.type.shape[0] if z.ndim else None
        return (data is not None and rows is not None and np.ndim(data) == 1 and
                len(data) == rows and np.array_equal(data, np.arange(rows)))
    if not isinstance(n.op, ARange):
        return False
    start, stop, step = n.inputs
    return const_value(start) == 0 and const_value(step) == 1 and same_size(stop, z, 0)


def _xent(fgraph, node, b):
    """-log_softmax(z)[arange(n), y] -> the stable softmax-crossentropy op (its softmax
    output also replaces every softmax(z) of the graph, e.g. the one in the gradient)."""
    sub = node.inputs[0].owner
    if sub.op.template != _XENT_TEMPLATE:
        return None
    lsm, ar, y = sub.inputs
    z = lsm.owner.inputs[0]
    if z.ndim != 2 or lsm.owner.op.axis % 2 != 1 or y.ndim != 1 or not _is_row_range(ar, z):
        return None
    bias = _bias_split(fgraph, z, lsm.owner, sub, node)
    if bias is None:
        nll, sm = SoftmaxCrossentropy(False)(z, y)
    else:
        nll, sm = SoftmaxCrossentropy(True)(bias[0], bias[1], y)
    out = {node.outputs[0]: nll}
    for c, _ in fgraph.clients.get(z, ()):
        if c != "output" and type(c.op) is Softmax and c.op.axis % 2 == 1:
            out[c.outputs[0]] = sm
    return out


def _bias_split(fgraph, z, lsm_node, sub_node, neg_node):
    """(x, b) when z = x + b.dimshuffle('x', 0) is used only by the softmaxes the
    cross-entropy op replaces: the op then adds the bias itself."""
    n = z.owner
    if n is None or n.op != elemwise("add"):
        return None
    for x, row in (n.inputs, n.inputs[::-1]):
        r = row.owner
        if r is None or not isinstance(r.op, DimShuffle) or r.op.new_order != ("x", 0) or \
                x.ndim != 2 or x.type.broadcastable != (False, False):
            continue
        only = [c for c, _ in fgraph.clients.get(lsm_node.outputs[0], ())] == [sub_node] and \
            [c for c, _ in fgraph.clients.get(sub_node.outputs[0], ())] == [neg_node]
        others = all(c is lsm_node or (c != "output" and type(c.op) is Softmax and
                                       c.op.axis % 2 == 1) for c, _ in fgraph.clients.get(z, ()))
        if only and others:
            return x, r.inputs[0]
    return None


def _stable_v(g, sm):
    """V such that g = V / sm (exactly, where sm != 0), or None."""
    n = g.owner
    if n is None:
        return None
    if n.op == elemwise("true_div") and n.inputs[1] is sm:
        return n.inputs[0]
    # incsubtensor(zeros, u / sm[idx], idx): the gradient of log(sm[idx])
    if isinstance(n.op, IncSubtensor) and not n.op.set_instead_of_inc and _is_zeros(n.inputs[0]):
        zeros, val, *idx = n.inputs
        d = val.owner
        if d is None or d.op != elemwise("true_div"):
            return None
        s = d.inputs[1].owner
        if s is None or not isinstance(s.op, (AdvancedSubtensor, Subtensor)) or \
                s.op.template != n.op.template or s.inputs[0] is not sm or \
                any(a is not c for a, c in zip(s.inputs[1:], idx)):
            return None
        return IncSubtensor(n.op.template, False)(zeros, d.inputs[0], *idx)
    return None


def _softmax_grad(fgraph, node, b):
    """sm * (g - sum(g * sm)) with g = V / sm  ->  V - sm * sum(V): no division by a
    softmax that underflowed to 0; with V = onehot(y) * u it is the xent gradient op."""
    sm, g, gs = b["sm"], b["g"], b["gs"]
    info = softmax_input(sm)
    if info is None:
        return None
    z, axis = info
    red = b["red"].owner.op
    if red.kind != "add" or (red.axis or tuple(range(sm.ndim))) != (axis,):
        return None
    v = _stable_v(g, sm)
    if v is None:
        return None
    # the summed term is g * sm, or already V when (V / sm) * sm was cancelled
    if not (gs is v or _is_product(gs, g, sm) or (g.owner.op == elemwise("true_div") and
                                                  g.owner.inputs[0] is gs)):
        return None
    n = v.owner
    if sm.ndim == 2 and axis == 1 and n is not None and isinstance(n.op, IncSubtensor) and \
            n.op.template == _XENT_TEMPLATE and _is_zeros(n.inputs[0]):
        _, u, ar, y = n.inputs
        if u.ndim <= 1 and y.ndim == 1 and _is_row_range(ar, sm):
            u = u if u.ndim == 1 else u.dimshuffle("x")
            return SoftmaxCrossentropyGrad()(-u, sm, y)
    if v.type.broadcastable != sm.type.broadcastable:
        v = tb.second(sm, v)            # V broadcasts against sm: sum it at sm's shape
    return v - sm * M.sum(v, axis=axis, keepdims=True)


def _is_product(v, a, b):
    n = v.owner
    return n is not None and n.op == elemwise("mul") and \
        {id(n.inputs[0]), id(n.inputs[1])} == {id(a), id(b)}


def _neg_sum_in(fgraph, node, b):
    """-sum(lsm[i, y]) / n -> sum(-lsm[i, y]) / n: the negation moves next to the
    indexing, where the cross-entropy rule finds it (the mean of the nll)."""
    s = b["s"]
    inner = elemwise("neg")(s.owner.inputs[0])
    total = s.owner.op(inner)
    if "n" in b:
        return fit(node.outputs[0], total / b["n"])
    return fit(node.outputs[0], total)


def _xent_grad_fill(fgraph, node, b):   # xent_grad(fill(x, d), sm, y) -> xent_grad(d, ...)
    d = b["d"]
    if d.ndim != 1:
        return None
    return SoftmaxCrossentropyGrad()(d, *node.inputs[1:])


# --------------------------------------------------------------------------- logs and exps
def _log_sigmoid(fgraph, node, b):      # log(sigmoid x) -> -softplus(-x)
    return -M.softplus(-b["x"])


def _log1p(fgraph, node, b):            # log(1 + x) -> log1p(x)
    return fit(node.outputs[0], M.log1p(b["x"]))


def _expm1(fgraph, node, b):            # exp(x) - 1 -> expm1(x)
    return fit(node.outputs[0], M.expm1(b["x"]))


def _one_minus_sigmoid(fgraph, node, b):    # 1 - sigmoid(x) -> sigmoid(-x)
    """Exact where 1 - s rounds to 0; applied only when sigmoid(x) has no other use, since
    otherwise x would have to be kept alive (an extra array) just for this."""
    s = node.inputs[1]
    if len(fgraph.clients.get(s, ())) != 1:
        return None
    return fit(node.outputs[0], M.sigmoid(-b["x"]))


def _log_one_minus_sigmoid(fgraph, node, b):  # log(1 - sigmoid(x)) -> -softplus(x)
    return fit(node.outputs[0], -M.softplus(b["x"]))


def _div_mul(fgraph, node, b):          # (a / b) * b -> a
    return fit_or_fill(node.outputs[0], b["a"], [b["b"]])


def _tanh_grad(fgraph, node, b):        # 1 - tanh(x)^2 -> (1 - tanh x)(1 + tanh x)
    t = b["t"]
    return fit(node.outputs[0], (1 - t) * (1 + t))


def _logsumexp(fgraph, node, b):        # log(sum(exp x)) -> max + log(sum(exp(x - max)))
    e = node.inputs[0].owner.inputs[0]
    x = b["x"]
    if getattr(x.tag, "max_shifted", False) or _is_max_shifted(x):
        return None
    red = node.inputs[0].owner.op
    if red.kind != "add" or red.acc_dtype not in (None, x.dtype) or e.dtype != x.dtype:
        return None
    axes = tuple(range(x.ndim)) if red.axis is None else red.axis
    m = M.max(x, axis=list(axes), keepdims=True)
    m = M.switch(M.isinf(m), tb.zeros_like(m), m)     # all -inf rows give -inf, not nan
    shifted = x - m
    shifted.tag.max_shifted = True
    kept = [d for d in range(x.ndim) if d not in axes]
    r = M.log(M.sum(M.exp(shifted), axis=list(axes))) + m.dimshuffle(kept)
    return fit(node.outputs[0], r)


def _is_max_shifted(x, depth=4):
    """x = a - f(max(a)): the user already wrote the stable form (T.logsumexp does)."""
    n = x.owner
    if n is None or n.op != elemwise("sub"):
        return False
    stack = [(n.inputs[1], 0)]
    while stack:
        v, d = stack.pop()
        if v.owner is None or d > depth:
            continue
        if isinstance(v.owner.op, CAReduce) and v.owner.op.kind == "max":
            return True
        stack.extend((i, d + 1) for i in v.owner.inputs)
    return False


def _sm(v, b):
    return softmax_input(b["sm"]) is not None


def _tanh_of(v, b):
    return v.owner is not None and v.owner.op == elemwise("tanh")


_INDEXED_LSM = P(AdvancedSubtensor, P(LogSoftmax), "_", "_")

RULES = RuleSet([
    Rule("log_softmax", P("log", P(Softmax, "x", bind="sm")), _log_softmax),  # log(sm x) -> lsm x
    Rule("log_indexed_softmax", P("log", P((AdvancedSubtensor, Subtensor),  # log(sm[i]) -> lsm[i]
                                           P(Softmax), ...)), _log_indexed_softmax),
    Rule("softmax_xent", P("neg", P(AdvancedSubtensor, P(LogSoftmax), "_", "_")),  # -lsm[r, y] -> nll
         _xent),
    Rule("softmax_grad_stable",                                     # sm*(V/sm - sum(V)) -> ...
         P("mul", P("sub", "g", P(DimShuffle, P(CAReduce, "gs", bind="red"))),
           "sm", when=_sm), _softmax_grad),
    Rule("neg_mean_xent", P("neg", P("true_div", P(CAReduce, _INDEXED_LSM, bind="s"), "n")),
         _neg_sum_in),                                              # -mean(lsm[i,y]) -> mean(-..)
    Rule("neg_sum_xent", P("neg", P(CAReduce, _INDEXED_LSM, bind="s")),  # -sum(lsm[i,y]) -> sum(-..)
         _neg_sum_in),
    Rule("xent_grad_fill", P(SoftmaxCrossentropyGrad, P("second", "_", "d"), "_", "_"),
         _xent_grad_fill),                                          # xgrad(fill(x, d)) -> xgrad(d)
    Rule("log_sigmoid", P("log", P("sigmoid", "x")), _log_sigmoid),  # log(sig x) -> -softplus(-x)
    Rule("one_minus_sigmoid", P("sub", C(1), P("sigmoid", "x")),  # 1 - sig(x) -> sig(-x)
         _one_minus_sigmoid),
    Rule("log_one_minus_sigmoid", P("log", P("sub", C(1), P("sigmoid", "x"))),
         _log_one_minus_sigmoid),                                   # log(1 - sig x) -> -softplus(x)
    Rule("log1p", P("log", P("add", C(1), "x")), _log1p),         # log(1 + x) -> log1p(x)
    Rule("expm1", P("sub", P("exp", "x"), C(1)), _expm1),         # exp(x) - 1 -> expm1(x)
    Rule("div_mul_cancel", P("mul", P("true_div", "a", "b"), "b"), _div_mul),  # (a/b)*b -> a
    Rule("tanh_grad", P("sub", C(1), P(("sqr",), P("tanh", bind="t"))),  # 1 - t^2 -> (1-t)(1+t)
         _tanh_grad),
    Rule("tanh_grad_mul", P("sub", C(1), P("mul", "t", "t", when=lambda v, b: _tanh_of(b["t"], b))),
         _tanh_grad),                                               # 1 - t*t -> (1-t)(1+t)
    Rule("logsumexp", P("log", P(CAReduce, P("exp", "x"))), _logsumexp),  # max-shifted lse
])
