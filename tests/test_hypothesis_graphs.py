"""Random expression graphs (elementwise ops, broadcasting, reductions, dimshuffles, dot;
random shapes and dtypes) evaluated by graphc -- default mode, FAST_COMPILE and DebugMode
(optimized graphs on the numpy backend) -- against a numpy evaluation of the same tree.
Gradients of random graphs must agree between the default mode and the reference
(FAST_COMPILE).

The generator builds the symbolic expression and its numpy value side by side, choosing
each node for a target shape, so every generated graph is well typed.
"""
import numpy as np
import scipy.special
from hypothesis import HealthCheck, given, settings, strategies as st

import graphc
import graphc.tensor as T

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

UNARY = [
    ("neg", lambda a: -a, np.negative),
    ("abs", abs, np.abs),
    ("sqr", T.sqr, np.square),
    ("tanh", T.tanh, np.tanh),
    ("sin", T.sin, np.sin),
    ("cos", T.cos, np.cos),
    ("sigmoid", T.nnet.sigmoid, scipy.special.expit),
    ("softplus", T.nnet.softplus, lambda a: np.logaddexp(0, a)),
    ("exp_clip", lambda a: T.exp(T.clip(a, -4, 4)), lambda a: np.exp(np.clip(a, -4, 4))),
    ("log1p_abs", lambda a: T.log1p(abs(a)), lambda a: np.log1p(np.abs(a))),
    ("sqrt_abs", lambda a: T.sqrt(abs(a) + 0.5), lambda a: np.sqrt(np.abs(a) + 0.5)),
    ("to_f32", lambda a: T.cast(a, "float32"), lambda a: a.astype("float32")),
    ("scale", lambda a: a * 1.5 - 0.25, lambda a: a * 1.5 - 0.25),
]
BINARY = [
    ("add", lambda a, b: a + b, np.add),
    ("sub", lambda a, b: a - b, np.subtract),
    ("mul", lambda a, b: a * b, np.multiply),
    ("max", T.maximum, np.maximum),
    ("min", T.minimum, np.minimum),
    ("safe_div", lambda a, b: a / (1 + T.sqr(b)), lambda a, b: a / (1 + np.square(b))),
    ("switch", lambda a, b: T.switch(a > b, a, b * 0.5), lambda a, b: np.where(a > b, a, b * 0.5)),
]
REDUCE = [
    ("sum", T.sum, np.sum),
    ("mean", T.mean, np.mean),
    ("max", T.max, np.max),
    ("min", T.min, np.min),
    ("prod", T.prod, np.prod),
]
LEAF_DTYPES = ["float64", "float64", "float32", "int32"]


@st.composite
def expressions(draw, max_depth=4, float_only=False):
    """(output variable, its numpy value, [(input variable, input value)])."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    inputs = []

    def leaf(shape):
        dtype = draw(st.sampled_from(LEAF_DTYPES[:3] if float_only else LEAF_DTYPES))
        if dtype == "int32":
            value = rng.integers(-3, 4, size=shape).astype(dtype)
        else:
            value = rng.uniform(-2, 2, size=shape).astype(dtype)
        var = T.TensorType(dtype, shape=tuple(1 if s == 1 else None for s in shape))(
            f"x{len(inputs)}")
        inputs.append((var, value))
        return var, value

    def gen(shape, depth):
        kinds = ["leaf", "unary", "binary", "binary"] if depth else ["unary", "binary"]
        if depth >= max_depth:
            return leaf(shape)
        if len(shape) < 3:
            kinds += ["reduce", "dot"] if len(shape) <= 2 else ["reduce"]
        if len(shape) >= 2:
            kinds.append("transpose")
        if 1 in shape:
            kinds += ["expand", "reduce_keep"]
        kind = draw(st.sampled_from(kinds))
        if kind == "leaf":
            return leaf(shape)
        if kind == "unary":
            _, f, g = draw(st.sampled_from(UNARY))
            a, av = gen(shape, depth + 1)
            return f(a), g(av)
        if kind == "binary":
            _, f, g = draw(st.sampled_from(BINARY))
            a, av = gen(shape, depth + 1)
            how = draw(st.sampled_from(["same", "ones", "rank", "scalar"]))
            if how == "scalar":            # a weak Python scalar operand
                c = float(draw(st.sampled_from([-1.5, 0.5, 2.0, 3.0])))
                return (f(a, c), g(av, c)) if draw(st.booleans()) else (f(c, a), g(c, av))
            if how == "ones":              # broadcast along some dims
                bshape = tuple(1 if draw(st.booleans()) else s for s in shape)
            elif how == "rank":            # fewer dims, padded on the left
                bshape = shape[draw(st.integers(0, len(shape))):]
            else:
                bshape = shape
            b, bv = gen(bshape, depth + 1)
            return (f(a, b), g(av, bv)) if draw(st.booleans()) else (f(b, a), g(bv, av))
        if kind == "reduce":
            _, f, g = draw(st.sampled_from(REDUCE))
            k = draw(st.integers(0, len(shape)))
            n = draw(st.integers(1, 4))
            a, av = gen(shape[:k] + (n,) + shape[k:], depth + 1)
            return f(a, axis=k), np.asarray(g(av, axis=k))
        if kind == "reduce_keep":
            _, f, g = draw(st.sampled_from(REDUCE))
            k = shape.index(1)
            n = draw(st.integers(1, 4))
            a, av = gen(shape[:k] + (n,) + shape[k + 1:], depth + 1)
            return f(a, axis=k, keepdims=True), np.asarray(g(av, axis=k, keepdims=True))
        if kind == "transpose":
            perm = draw(st.permutations(range(len(shape))))
            a, av = gen(tuple(shape[perm.index(j)] for j in range(len(shape))), depth + 1)
            return a.dimshuffle(perm), np.transpose(av, perm)
        if kind == "expand":
            k = shape.index(1)
            a, av = gen(shape[:k] + shape[k + 1:], depth + 1)
            pattern = list(range(len(shape) - 1))
            pattern.insert(k, "x")
            return a.dimshuffle(pattern), np.expand_dims(av, k)
        # dot, for a 0-, 1- or 2-d target
        k = draw(st.integers(1, 4))
        if len(shape) == 0:
            sa, sb = (k,), (k,)
        elif len(shape) == 1:
            sa, sb = ((shape[0], k), (k,)) if draw(st.booleans()) else ((k,), (k, shape[0]))
        else:
            sa, sb = (shape[0], k), (k, shape[1])
        a, av = gen(sa, depth + 1)
        b, bv = gen(sb, depth + 1)
        return T.dot(a, b), np.asarray(np.dot(av, bv))

    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    out, value = gen(shape, 0)
    return out, np.asarray(value), inputs


def _has_float32(inputs, out):
    """Whether float32 rounding happens anywhere in the graph (looser tolerance)."""
    from graphc.graph.basic import io_toposort
    nodes = io_toposort(inputs, [out])
    return any(v.dtype == "float32" for n in nodes for v in n.inputs + n.outputs) or \
        any(v.dtype == "float32" for v in inputs)


def _close(got, want, low_precision):
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    rtol = 2e-3 if low_precision else 1e-9
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@settings(max_examples=120, **SETTINGS)
@given(expressions())
def test_random_graphs_match_numpy(expr):
    out, want, inputs = expr
    syms = [v for v, _ in inputs]
    values = [x for _, x in inputs]
    low = _has_float32(syms, out)
    # DebugMode: the FAST_RUN rewrites checked after every pass, run by the numpy backend
    for mode in (None, "FAST_COMPILE", "DebugMode"):
        f = graphc.function(syms, out, mode=mode, on_unused_input="ignore")
        with np.errstate(all="ignore"):
            got = f(*values)
        assert got.shape == want.shape, (mode, got.shape, want.shape)
        assert got.dtype == want.dtype, (mode, got.dtype, want.dtype)
        _close(got, want, low)


@settings(max_examples=50, **SETTINGS)
@given(expressions(max_depth=3, float_only=True))
def test_random_graph_gradients_agree_across_modes(expr):
    out, _, inputs = expr
    syms = [v for v, _ in inputs]
    values = [x for _, x in inputs]
    cost = T.sum(T.cast(out, "float64") * np.float64(0.5))
    grads = graphc.grad(cost, syms, disconnected_inputs="ignore")
    low = _has_float32(syms, out)
    f_ref = graphc.function(syms, grads, mode="FAST_COMPILE", on_unused_input="ignore")
    f_opt = graphc.function(syms, grads, on_unused_input="ignore")
    for g_ref, g_opt, v in zip(f_ref(*values), f_opt(*values), values):
        assert g_ref.shape == g_opt.shape == v.shape and g_ref.dtype == g_opt.dtype == v.dtype
        _close(g_opt, g_ref, low)


def test_the_generator_covers_every_kind():
    """Guard against a generator that silently stops producing some node kinds."""
    seen = set()

    @settings(max_examples=60, **SETTINGS)
    @given(expressions())
    def collect(expr):
        from graphc.graph.basic import io_toposort
        out, _, inputs = expr
        for node in io_toposort([v for v, _ in inputs], [out]):
            seen.add(type(node.op).__name__)

    collect()
    assert {"Elemwise", "CAReduce", "DimShuffle", "Dot"} <= seen, seen
