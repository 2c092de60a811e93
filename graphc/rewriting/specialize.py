"""specialize: pick the fast forms.

dot -> gemm/gemv with transposes as BLAS flags; scale and add folded into gemm's alpha and
z (so an SGD step ``W - lr * dot(x.T, g)`` is one gemm); ``z + outer(a, b)`` -> ger; powers
and self-products -> sqr/sqrt/reciprocal, so that ``sum(x * x)`` becomes the fused
``sum(sqr x)`` reduction after fusion.
"""
from __future__ import annotations

import numpy as np

from graphc.rewriting.engine import C, P, Rule, RuleSet, const_value, fit, in_dtype_of, scalar_of
from graphc.tensor import math as M
from graphc.tensor.blas import BLAS_DTYPES, Gemm, Gemv, Ger
from graphc.tensor.elemwise import DimShuffle
from graphc.tensor.math import Dot
from graphc.tensor.nnet.basic import Softmax
from graphc.tensor.nnet.xent import (SoftmaxCrossentropy, SoftmaxCrossentropyGrad,
                                     SoftmaxCrossentropyWithGrad)
from graphc.tensor.var import constant


def _untranspose(v):
    """(x, transposed) with v == x.T when v is a 2-d transpose dimshuffle."""
    n = v.owner
    if n is not None and isinstance(n.op, DimShuffle) and n.op.new_order == (1, 0):
        return n.inputs[0], True
    return v, False


def _one(dtype):
    return constant(np.ones((), dtype=dtype))


def _times(a, b):
    """a * b for 0-d scale factors, folded when both are constants."""
    ca, cb = const_value(a), const_value(b)
    if ca is not None and cb is not None:
        return constant(np.asarray(ca * cb, dtype=a.dtype))
    if ca == 1:
        return b
    if cb == 1:
        return a
    return a * b


def _neg(a):
    c = const_value(a)
    if c is not None:
        return constant(np.asarray(-c, dtype=a.dtype))
    return -a


def _dot(fgraph, node, b):              # dot(x, y) -> gemm / gemv (transposes as flags)
    x, y = node.inputs
    out = node.outputs[0]
    if out.dtype not in BLAS_DTYPES or x.dtype != out.dtype or y.dtype != out.dtype:
        return None
    one = _one(out.dtype)
    if x.ndim == 2 and y.ndim == 2:
        x0, tx = _untranspose(x)
        y0, ty = _untranspose(y)
        return Gemm(tx, ty)(x0, y0, one)
    if x.ndim == 2 and y.ndim == 1:
        x0, tx = _untranspose(x)
        return Gemv(tx)(x0, y, one)
    if x.ndim == 1 and y.ndim == 2:     # v . M = M.T v
        y0, ty = _untranspose(y)
        return Gemv(not ty)(y0, x, one)
    return None


def _single_client(fgraph, v):
    return len(fgraph.clients.get(v, ())) == 1


def _bare(fgraph, v):
    """The node of v when v is a gemm/gemv output without z, used only once."""
    n = v.owner
    if n is None or not isinstance(n.op, (Gemm, Gemv)) or not _single_client(fgraph, v):
        return None
    if n.op.has_z if isinstance(n.op, Gemm) else n.op.has_v:
        return None
    return n


def _rebuild(n, alpha, z=None, beta=None):
    if isinstance(n.op, Gemm):
        op = Gemm(n.op.trans_a, n.op.trans_b, has_z=z is not None)
    else:
        op = Gemv(n.op.trans, has_v=z is not None)
    args = n.inputs[:2] + [alpha]
    if z is not None:
        args += [z, beta]
    return op(*args)


def _scale(fgraph, node, b):            # s * gemm(x, y, a) -> gemm(x, y, a*s)
    n = _bare(fgraph, b["g"])
    s = scalar_of(b["s"])
    if n is None or s is None or s.dtype != n.outputs[0].dtype:
        return None
    return fit(node.outputs[0], _rebuild(n, _times(n.inputs[2], s)))


def _full(z, out):
    return z.ndim == out.ndim and z.dtype == out.dtype and \
        z.type.broadcastable == out.type.broadcastable


def _bare_as(fgraph, v, out):
    """_bare(v), when the product is computed in out's dtype (not float32 + float64 z)."""
    n = _bare(fgraph, v)
    return n if n is not None and n.outputs[0].dtype == out.dtype else None


def _add_z(fgraph, node, b):            # z + gemm(x, y, a) -> gemm(x, y, a, z, 1)
    out = node.outputs[0]
    n, z = _bare_as(fgraph, b["g"], out), b["z"]
    if n is None or not _full(z, out):
        return None
    return _rebuild(n, n.inputs[2], z, _one(out.dtype))


def _sub_z(fgraph, node, b):            # z - gemm(x, y, a) -> gemm(x, y, -a, z, 1)
    out = node.outputs[0]
    z, g = node.inputs
    n = _bare_as(fgraph, g, out)
    if n is not None and _full(z, out):
        return _rebuild(n, _neg(n.inputs[2]), z, _one(out.dtype))
    n = _bare_as(fgraph, z, out)        # gemm - z -> gemm(x, y, a, z, -1)
    if n is not None and _full(g, out):
        return _rebuild(n, n.inputs[2], g, _neg(_one(out.dtype)))
    return None


def _outer(fgraph, v):
    """(alpha, a, b) when v = [s *] a.dimshuffle(0, 'x') * b.dimshuffle('x', 0), used once."""
    n = v.owner
    if n is None or getattr(n.op, "scalar_op", None) is None or n.op.scalar_op.name != "mul" \
            or not _single_client(fgraph, v):
        return None
    x, y = n.inputs
    for first, second in ((x, y), (y, x)):
        s = scalar_of(first)
        if s is not None and second.ndim == 2:
            inner = _outer(fgraph, second)
            if inner is not None:
                return _times(inner[0], s), inner[1], inner[2]
    cols = [i for i in (x, y) if _ds(i, (0, "x"))]
    rows = [i for i in (x, y) if _ds(i, ("x", 0))]
    if len(cols) == 1 and len(rows) == 1 and cols[0] is not rows[0]:
        return _one(v.dtype), cols[0].owner.inputs[0], rows[0].owner.inputs[0]
    return None


def _ds(v, order):
    n = v.owner
    return n is not None and isinstance(n.op, DimShuffle) and n.op.new_order == order


def _ger(fgraph, node, b):              # z + a outer b -> ger(z, 1, a, b)
    out = node.outputs[0]
    if out.dtype not in BLAS_DTYPES or out.ndim != 2:
        return None
    name = node.op.scalar_op.name
    z, o = node.inputs
    pairs = [(z, o, 1)] + ([(o, z, 1)] if name == "add" else [])
    if name == "sub":
        pairs = [(z, o, -1)]
    for zz, oo, sign in pairs:
        parts = _outer(fgraph, oo)
        if parts is None or not _full(zz, out) or any(zz.type.broadcastable):
            continue
        alpha, a, bb = parts
        if a.dtype != out.dtype or bb.dtype != out.dtype or alpha.dtype != out.dtype:
            continue
        return Ger()(zz, alpha if sign == 1 else _neg(alpha), a, bb)
    return None


def _sqr(fgraph, node, b):              # x * x -> sqr(x); x ** 2 -> sqr(x)
    # in the dtype of the product: int8 ** int64(2) is int64 (100 ** 2 = 10000, not 16)
    return fit(node.outputs[0], M.sqr(in_dtype_of(node, b["x"])))


def _sqrt(fgraph, node, b):             # x ** 0.5 -> sqrt(x)
    x = b["x"]
    if node.outputs[0].dtype != x.dtype:
        return None
    return fit(node.outputs[0], M.sqrt(x))


def _recip(fgraph, node, b):            # 1 / x -> reciprocal(x)
    return fit(node.outputs[0], M.reciprocal(b["x"]))


def _xent_with_grad(fgraph, node, b):
    """xent(x, y) -> (nll, sm); xent_grad(d, sm, y) -> dx   becomes   (nll, dx) of one op,
    when the softmax has no other use and d does not depend on this xent (d of a mean or
    sum of the nll is a constant fill: the nll is not needed before the gradient)."""
    nll, sm = node.outputs
    users = fgraph.clients.get(sm, ())
    if len(users) != 1 or users[0][0] == "output" or users[0][1] != 1:
        return None
    grad = users[0][0]
    d, _, y = grad.inputs
    if not isinstance(grad.op, SoftmaxCrossentropyGrad) or y is not node.inputs[-1] or \
            _depends_on(d, node):
        return None
    new_nll, dx = SoftmaxCrossentropyWithGrad(node.op.has_bias)(*node.inputs, d)
    return {nll: new_nll, grad.outputs[0]: dx}


def _softmax_xent_grad(fgraph, node, b):
    """xent_grad(d, softmax(z), y) -> dx of the paired op (its nll unused), when nothing
    else reads the softmax: the gradient without the loss, which stabilize left reading a
    Softmax op."""
    sm = b["sm"]
    z = sm.owner.inputs[0]
    if z.ndim != 2 or sm.owner.op.axis % 2 != 1 or len(fgraph.clients.get(sm, ())) != 1 or \
            _depends_on(b["d"], sm.owner):
        return None
    return SoftmaxCrossentropyWithGrad(False)(z, b["y"], b["d"])[1]


def _depends_on(v, node) -> bool:
    """Is ``node`` an ancestor of ``v``?"""
    seen, stack = set(), [v]
    while stack:
        w = stack.pop()
        n = w.owner
        if n is None or n in seen:
            continue
        if n is node:
            return True
        seen.add(n)
        stack.extend(n.inputs)
    return False


def _float_out(v, b):
    return v.dtype in ("float32", "float64")


RULES = RuleSet([
    Rule("dot_to_gemm", P(Dot, "_", "_"), _dot),                     # dot(x.T, y) -> gemm{TN}
    Rule("gemm_scale", P("mul", P((Gemm, Gemv), bind="g"), "s"), _scale),  # s*gemm -> gemm(a*s)
    Rule("gemm_add", P("add", P((Gemm, Gemv), bind="g"), "z"), _add_z),  # z + gemm -> gemm(z)
    Rule("gemm_sub", P("sub", "_", "_"), _sub_z),                    # z - gemm -> gemm(-a, z)
    Rule("ger", P(("add", "sub"), "_", "_"), _ger),                  # z + outer(a, b) -> ger
    Rule("mul_self", P("mul", "x", "x"), _sqr),                      # x*x -> sqr(x)
    Rule("pow_two", P("pow", "x", C(2)), _sqr),                      # x**2 -> sqr(x)
    Rule("pow_half", P("pow", "x", C(0.5), when=_float_out), _sqrt),  # x**0.5 -> sqrt(x)
    Rule("reciprocal", P("true_div", C(1), "x", when=_float_out), _recip),  # 1/x -> reciprocal
    Rule("softmax_xent_with_grad", P(SoftmaxCrossentropy), _xent_with_grad),  # xent + its grad
    Rule("softmax_xent_grad_only", P(SoftmaxCrossentropyGrad, "d", P(Softmax, bind="sm"), "y"),
         _softmax_xent_grad),                           # xgrad(d, sm z, y) -> paired op's dx
])
