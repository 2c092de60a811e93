"""Reverse-mode differentiation: graphs in, graphs out.

``grad(cost, wrt)`` walks the apply nodes between ``wrt`` and ``cost`` once, in reverse
topological order, asking each op for the vector-Jacobian product of its inputs
(``op.L_op``).  Gradients are ordinary graphc graphs, so they can be differentiated again.

"No gradient" is typed, never None-by-accident:
- ``DisconnectedType`` variables: the input does not influence the output (shape inputs);
- ``NullType`` variables: the gradient is mathematically undefined or not implemented;
  reaching a ``wrt`` with one raises ``NullTypeGradError`` naming the op.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Dict

import numpy as np

from graphc.graph.basic import Apply, Op, Type, Variable, io_toposort
from graphc.tensor.type import TensorType, is_float


class DisconnectedInputError(ValueError):
    pass


class NullTypeGradError(TypeError):
    pass


class GradientError(AssertionError):
    """Raised by verify_grad when analytic and numeric gradients differ."""

    def __init__(self, arg, err_pos, abs_err, rel_err, abs_tol, rel_tol, analytic=None, numeric=None):
        super().__init__(
            f"gradient mismatch for input {arg} at flat position {err_pos}: "
            f"abs err {abs_err:.3g}, rel err {rel_err:.3g} (tolerances {abs_tol:.1e}/{rel_tol:.1e})"
            + (f"\n analytic={analytic}\n numeric={numeric}" if analytic is not None else ""))
        self.arg, self.err_pos, self.abs_err, self.rel_err = arg, err_pos, abs_err, rel_err


class DisconnectedType(Type):
    def __eq__(self, other):
        return type(other) is DisconnectedType

    def __hash__(self):
        return hash(DisconnectedType)

    def __str__(self):
        return "DisconnectedType"

    def filter(self, value, strict=False, allow_downcast=None):
        raise TypeError("a DisconnectedType variable carries no value")

    def make_variable(self, name=None):
        return Variable(self, None, None, name)


class NullType(Type):
    def __init__(self, why="gradient undefined"):
        self.why = why

    def __eq__(self, other):
        return type(other) is NullType

    def __hash__(self):
        return hash(NullType)

    def __str__(self):
        return f"NullType({self.why})"

    def filter(self, value, strict=False, allow_downcast=None):
        raise TypeError(self.why)

    def make_variable(self, name=None):
        return Variable(self, None, None, name)


def disconnected_grad_type(x=None):
    return DisconnectedType().make_variable()


def grad_undefined(op, x_pos, x, comment=""):
    return NullType(f"gradient of {op} w.r.t. input {x_pos} is undefined. {comment}").make_variable()


def grad_not_implemented(op, x_pos, x, comment=""):
    return NullType(f"{op}.grad is not implemented for input {x_pos}. {comment}").make_variable()


def zeros_grad(x):
    """The gradient of a non-differentiable (integer or piecewise-constant) dependency."""
    from graphc.tensor.basic import zeros_like
    return zeros_like(x, dtype=x.dtype if is_float(x.dtype) else _float_for(x))


def _float_for(x):
    from graphc.configdefaults import config
    return config.floatX


def _is_disconnected(g):
    return g is None or isinstance(g.type, DisconnectedType)


def _is_null(g):
    return g is not None and isinstance(g.type, NullType)


def _add_grads(a, b):
    if _is_disconnected(a):
        return b
    if _is_disconnected(b):
        return a
    if _is_null(a):
        return a
    if _is_null(b):
        return b
    return a + b


def grad(cost, wrt, consider_constant=None, disconnected_inputs="raise", add_names=True,
         known_grads=None, return_disconnected="zero", null_gradients="raise"):
    """Symbolic gradient of scalar ``cost`` w.r.t. ``wrt`` (a variable or a list)."""
    from graphc.tensor.var import as_tensor_variable
    from graphc.tensor.basic import cast
    if disconnected_inputs not in ("raise", "warn", "ignore"):
        raise ValueError("disconnected_inputs must be 'raise', 'warn' or 'ignore'")
    if return_disconnected not in ("zero", "None", "Disconnected"):
        raise ValueError("return_disconnected must be 'zero', 'None' or 'Disconnected'")
    single = not isinstance(wrt, (list, tuple))
    wrt_list = [wrt] if single else list(wrt)
    for w in wrt_list:
        if not isinstance(w, Variable):
            raise TypeError(f"grad: wrt must be symbolic variables, got {type(w).__name__} {w!r}")
    known_grads = OrderedDict(known_grads or {})
    if cost is None and not known_grads:
        raise ValueError("grad: cost is None and no known_grads were given")
    seeds: Dict[Variable, Variable] = {}
    if cost is not None:
        if not isinstance(cost, Variable):
            raise TypeError(f"grad: cost must be a symbolic variable, got {type(cost).__name__}")
        if cost.ndim != 0:
            raise TypeError(f"grad: cost must be a scalar (0-d), got {cost.type}; "
                            f"sum or mean it first")
        if not is_float(cost.dtype):
            raise TypeError(f"grad: cost has integer dtype {cost.dtype}; no gradient flows "
                            f"through it")
        seeds[cost] = _ones_scalar(cost.dtype)
    for v, g in known_grads.items():
        g = as_tensor_variable(g)
        seeds[v] = _add_grads(seeds.get(v), cast(g, v.dtype) if is_float(v.dtype) else g)

    blockers = set(consider_constant or [])
    outputs = list(seeds)
    # every node above the seeds (not stopping at wrt: a wrt may be computed from another
    # wrt, e.g. grad(cost, [h, w]) with h = f(w) gives the total derivative for w)
    nodes = io_toposort(list(blockers), outputs)
    # which variables depend on some wrt (forward reachability)
    depends = set(wrt_list)
    for node in nodes:
        if any(i in depends and i not in blockers for i in node.inputs):
            if any(i in depends and i not in blockers for i in _connected_inputs(node)):
                depends.update(node.outputs)
    grads: Dict[Variable, Variable] = dict(seeds)
    for node in reversed(nodes):
        if not any(o in grads for o in node.outputs):
            continue
        if not any(i in depends and i not in blockers for i in node.inputs):
            continue
        out_grads = []
        for o in node.outputs:
            g = grads.get(o)
            if _is_disconnected(g):
                g = _zero_like_out(o)
            elif _is_null(g):
                raise NullTypeGradError(f"{g.type.why}")
            out_grads.append(g)
        in_grads = node.op.L_op(list(node.inputs), list(node.outputs), out_grads)
        if len(in_grads) != len(node.inputs):
            raise ValueError(f"{node.op}.grad returned {len(in_grads)} gradients for "
                             f"{len(node.inputs)} inputs")
        for x, gx in zip(node.inputs, in_grads):
            if x in blockers or x not in depends:
                continue
            if gx is None:
                raise TypeError(f"{node.op}.grad returned None for input {x}; return "
                                f"disconnected_grad_type() or grad_undefined() instead")
            if not _is_disconnected(gx) and not _is_null(gx):
                gx = as_tensor_variable(gx)
                if is_float(x.dtype) and gx.dtype != x.dtype:
                    gx = cast(gx, x.dtype)
                if gx.ndim != x.ndim:
                    raise ValueError(f"{node.op}.grad returned a {gx.ndim}-d gradient for the "
                                     f"{x.ndim}-d input {x}")
            grads[x] = _add_grads(grads.get(x), gx)

    result = []
    for w in wrt_list:
        g = grads.get(w)
        if _is_null(g):
            if null_gradients == "raise":
                raise NullTypeGradError(f"grad w.r.t. {w}: {g.type.why}")
        if _is_disconnected(g):
            msg = (f"grad: the cost does not depend on {w} (it is not part of the computational "
                   f"graph of the cost, or used only by a non-differentiable operator)")
            if disconnected_inputs == "raise":
                raise DisconnectedInputError(msg + "; pass disconnected_inputs='ignore' to get zeros")
            if disconnected_inputs == "warn":
                warnings.warn(msg)
            if return_disconnected == "zero":
                g = zeros_grad(w) if isinstance(w.type, TensorType) else g
            elif return_disconnected == "None":
                g = None
            else:
                g = disconnected_grad_type()
        elif g is not None and isinstance(w.type, TensorType) and not is_float(w.dtype):
            g = zeros_grad(w)
        if add_names and g is not None and getattr(g, "name", None) is None and w.name and \
                isinstance(g.type, TensorType):
            g.name = f"(d{getattr(cost, 'name', None) or 'cost'}/d{w.name})"
        result.append(g)
    return result[0] if single else result


def _ones_scalar(dtype):
    from graphc.tensor.var import constant
    return constant(np.ones((), dtype=dtype))


def _zero_like_out(o):
    if isinstance(o.type, TensorType):
        from graphc.tensor.basic import zeros_like
        return zeros_like(o, dtype=o.dtype if is_float(o.dtype) else _float_for(o))
    return disconnected_grad_type()


def _connected_inputs(node):
    pat = node.op.connection_pattern(node)
    return [i for i, row in zip(node.inputs, pat) if any(row)]


# --------------------------------------------------------------------------- gradient-shaping ops
class ViewOp(Op):
    """Identity in the forward pass (a view); subclasses change only the gradient."""

    __props__ = ()
    view_map = {0: [0]}

    def make_node(self, x):
        from graphc.tensor.var import as_tensor_variable
        x = as_tensor_variable(x)
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, out):
        out[0][0] = inputs[0]

    def infer_shape(self, node, shapes):
        return shapes

    def L_op(self, inputs, outputs, grads):
        return grads


class ZeroGrad(ViewOp):
    def L_op(self, inputs, outputs, grads):
        return [zeros_grad(inputs[0])]


class DisconnectedGrad(ViewOp):
    def L_op(self, inputs, outputs, grads):
        return [disconnected_grad_type()]

    def connection_pattern(self, node):
        return [[False]]


class UndefinedGrad(ViewOp):
    def L_op(self, inputs, outputs, grads):
        return [grad_undefined(self, 0, inputs[0])]


class GradClip(ViewOp):
    __props__ = ("clip_lower_bound", "clip_upper_bound")

    def __init__(self, lower, upper):
        if lower > upper:
            raise ValueError("grad_clip: lower bound must be <= upper bound")
        self.clip_lower_bound, self.clip_upper_bound = float(lower), float(upper)

    def L_op(self, inputs, outputs, grads):
        from graphc.tensor.math import clip
        return [clip(grads[0], self.clip_lower_bound, self.clip_upper_bound)]


class GradScale(ViewOp):
    __props__ = ("multiplier",)

    def __init__(self, multiplier):
        self.multiplier = float(multiplier)

    def L_op(self, inputs, outputs, grads):
        return [grads[0] * self.multiplier]


def zero_grad(x):
    """x in the forward pass; its gradient is zero."""
    return ZeroGrad()(x)


def disconnected_grad(x):
    """x in the forward pass; gradients do not flow through it (disconnected)."""
    return DisconnectedGrad()(x)


def undefined_grad(x):
    return UndefinedGrad()(x)


def grad_clip(x, lower_bound, upper_bound):
    """x in the forward pass; its gradient is clipped to [lower_bound, upper_bound]."""
    return GradClip(lower_bound, upper_bound)(x)


def grad_scale(x, multiplier):
    return GradScale(multiplier)(x)


consider_constant = disconnected_grad


# --------------------------------------------------------------------------- jacobian / hessian
def jacobian(expression, wrt, consider_constant=None, disconnected_inputs="raise"):
    """d expression[i] / d wrt, stacked over i (via scan, as in Theano)."""
    from graphc.tensor.var import as_tensor_variable
    from graphc.tensor import basic as tb
    single = not isinstance(wrt, (list, tuple))
    wrt_list = [wrt] if single else list(wrt)
    expression = as_tensor_variable(expression)
    if expression.ndim == 0:
        r = grad(expression, wrt_list, consider_constant=consider_constant,
                 disconnected_inputs=disconnected_inputs)
        return r[0] if single else r
    flat = expression.flatten()
    from graphc.scan_module import scan

    def inner(i, y, *ws):
        return grad(y[i], list(ws), consider_constant=consider_constant,
                    disconnected_inputs=disconnected_inputs)

    n = flat.shape[0]
    jacs, _ = scan(inner, sequences=tb.arange(n), non_sequences=[flat] + wrt_list)
    if not isinstance(jacs, (list, tuple)):
        jacs = [jacs]
    out = []
    for j, w in zip(jacs, wrt_list):
        shp = [expression.shape[d] for d in range(expression.ndim)] + \
              [w.shape[d] for d in range(w.ndim)]
        out.append(tb.reshape(j, shp, expression.ndim + w.ndim))
    return out[0] if single else out


def hessian(cost, wrt, consider_constant=None, disconnected_inputs="raise"):
    """Hessian of scalar ``cost`` w.r.t. vector(s) ``wrt``."""
    single = not isinstance(wrt, (list, tuple))
    wrt_list = [wrt] if single else list(wrt)
    out = []
    for w in wrt_list:
        if w.ndim != 1:
            raise TypeError(f"hessian: wrt must be vectors, got {w.type}")
        g = grad(cost, w, consider_constant=consider_constant,
                 disconnected_inputs=disconnected_inputs)
        out.append(jacobian(g, w, consider_constant=consider_constant,
                            disconnected_inputs=disconnected_inputs))
    return out[0] if single else out


# --------------------------------------------------------------------------- verify_grad
def numeric_grad(f, pt, eps):
    """Central finite differences of scalar f at the list of arrays pt."""
    grads = []
    for i, p in enumerate(pt):
        g = np.zeros(p.shape, dtype=np.float64)
        flat = p.reshape(-1)
        for k in range(flat.size):
            orig = flat[k]
            flat[k] = orig + eps
            fp = f(*pt)
            flat[k] = orig - eps
            fm = f(*pt)
            flat[k] = orig
            g.reshape(-1)[k] = (fp - fm) / (2 * eps)
        grads.append(g)
    return grads


def verify_grad(fun, pt, n_tests=2, rng=None, eps=None, out_type=None, abs_tol=None,
                rel_tol=None, mode=None, cast_to_output_type=False, no_debug_ref=True):
    """Check ``grad`` of ``fun`` at the point ``pt`` (a list of arrays) against central
    finite differences of a random projection of its output.  Raises GradientError."""
    from graphc.compile.function import function
    from graphc.tensor.type import TensorType
    from graphc.tensor.math import sum as tsum
    pt = [np.array(p) for p in pt]
    if rng is None:
        rng = np.random.default_rng(42)
    elif isinstance(rng, np.random.RandomState):
        rng = np.random.default_rng(rng.randint(2**31))
    dt = max((p.dtype for p in pt if p.dtype.kind == "f"), default=np.dtype("float64"),
             key=lambda d: d.itemsize)
    if eps is None:
        eps = 1e-4 if dt == np.float64 else 3e-3
    if abs_tol is None:
        abs_tol = 1e-4 if dt == np.float64 else 3e-2
    if rel_tol is None:
        rel_tol = 1e-4 if dt == np.float64 else 3e-2
    # size-1 dims are broadcastable, as for Theano's constants of the same values
    sym = [TensorType(p.dtype, shape=tuple(1 if s == 1 else None for s in p.shape))(f"input{i}")
           for i, p in enumerate(pt)]
    out = fun(*sym)
    if isinstance(out, (list, tuple)):
        raise TypeError("verify_grad: fun must return a single variable")
    f_out = function(sym, out, mode=mode, on_unused_input="ignore")
    o0 = np.asarray(f_out(*pt))
    for _ in range(n_tests):
        proj = rng.standard_normal(o0.shape).astype(out.dtype) if o0.ndim else \
            np.asarray(1.0, dtype=out.dtype)
        from graphc.tensor.var import constant
        cost = tsum(out * constant(proj))
        fl = [i for i, p in enumerate(pt) if p.dtype.kind == "f"]
        g_syms = grad(cost, [sym[i] for i in fl], disconnected_inputs="ignore")
        f_cost = function(sym, cost, mode=mode, on_unused_input="ignore")
        f_grad = function(sym, g_syms, mode=mode, on_unused_input="ignore")
        analytic = [np.asarray(g) for g in f_grad(*pt)]
        work = [p.copy() for p in pt]

        def f_of_floats(*fvals):
            args = list(work)
            for i, v in zip(fl, fvals):
                args[i] = v
            return float(f_cost(*args))

        numeric = numeric_grad(f_of_floats, [work[i] for i in fl], eps)
        for i, a, n in zip(fl, analytic, numeric):
            if a.shape != n.shape:
                raise GradientError(i, -1, np.inf, np.inf, abs_tol, rel_tol)
            abs_err = np.abs(a - n)
            rel_err = abs_err / np.maximum(np.abs(a) + np.abs(n), 1e-8)
            bad = (abs_err > abs_tol) & (rel_err > rel_tol)
            if np.any(bad):
                pos = int(np.argmax(np.where(bad, abs_err, -1)))
                raise GradientError(i, pos, float(abs_err.reshape(-1)[pos]),
                                    float(rel_err.reshape(-1)[pos]), abs_tol, rel_tol, a, n)
