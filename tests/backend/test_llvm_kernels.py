"""The LLVM kernel generator against numpy, the reference.

Table-driven: every scalar op x every dtype on edge values, broadcasting and strided views,
reductions over every axis subset, threads (the cache, BLAS and call path: test_llvm_cache.py). Ops are grouped into one
kernel per (dtype, group) so the whole file compiles ~60 kernels; each op still gets its own
test id.
"""
from __future__ import annotations

import os
from itertools import combinations

import numpy as np
import pytest
import scipy.special as sps

from graphc.backend.kernel_spec import COMPARISONS, DTYPES, SCALAR_OPS, KernelSpec
from graphc.backend import llvm as gl


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLOATS = ("float32", "float64")
INTS = ("int8", "int16", "int32", "int64", "uint8")
FLOAT_ONLY = {"exp", "log", "log1p", "expm1", "sqrt", "tanh", "sin", "cos", "erf", "sigmoid",
              "softplus", "true_div", "reciprocal"}
BITWISE = {"and", "or", "xor", "invert"}


pytestmark = pytest.mark.usefixtures("hermetic_compiledir")   # see conftest.py


# ------------------------------------------------------------------------ reference
def _np_float_op(op):
    return {
        "neg": np.negative, "exp": np.exp, "log": np.log, "log1p": np.log1p,
        "expm1": np.expm1, "sqrt": np.sqrt, "sqr": np.square, "abs": np.abs, "sgn": np.sign,
        "tanh": np.tanh, "sin": np.sin, "cos": np.cos, "erf": sps.erf, "floor": np.floor,
        "ceil": np.ceil, "round": np.round, "sigmoid": sps.expit,
        "softplus": lambda x: np.logaddexp(0, x), "identity": lambda x: x.copy(),
        "reciprocal": lambda x: 1 / x, "add": np.add, "sub": np.subtract,
        "mul": np.multiply, "true_div": np.true_divide, "int_div": np.floor_divide,
        "mod": np.remainder, "pow": np.power, "maximum": np.maximum, "minimum": np.minimum,
        "lt": np.less, "gt": np.greater, "le": np.less_equal, "ge": np.greater_equal,
        "eq": np.equal, "neq": np.not_equal, "and": np.bitwise_and, "or": np.bitwise_or,
        "xor": np.bitwise_xor, "invert": np.invert, "switch": np.where,
        "clip": lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
    }[op]


def reference(op, dtype, *args):
    """numpy's answer for ``op`` on arrays of ``dtype`` (the semantics in scalar.py)."""
    f = _np_float_op(op)
    with np.errstate(all="ignore"):
        if op in COMPARISONS or op == "switch":
            return f(*args)
        if dtype == "float32" and op in FLOAT_ONLY | {"pow"}:
            # the exact value, rounded once: our float32 code is compared with the truth
            return f(*[a.astype(np.float64) for a in args]).astype(np.float32)
        if dtype in FLOATS:
            return f(*args).astype(dtype)
        if op in FLOAT_ONLY:
            # Computed in float64 and truncated: a 1-ulp difference between libm and numpy
            # (tanh(19.0) == 1 - 1e-16 or 1.0) moves the truncation, so the float64 value and
            # its two neighbours are all accepted.
            v = f(*[a.astype(np.float64) for a in args])
            return tuple(w.astype(dtype) for w in
                         (v, np.nextafter(v, -np.inf), np.nextafter(v, np.inf)))
        if op in ("floor", "ceil", "round", "identity"):
            return args[0].copy()
        if dtype == "bool":
            if op in BITWISE or op in ("maximum", "minimum", "clip"):
                return f(*args)
            return f(*[a.astype(np.int64) for a in args]).astype(bool)
        return f(*args).astype(dtype)


# ------------------------------------------------------------------------ data
def float_data(dtype, n_random=300, seed=0):
    rng = np.random.default_rng(seed)
    edges = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.5, 2.5, -2.5, 3.0, -7.0, np.inf, -np.inf,
             np.nan, 1e4, -1e4, 1e-30, -1e-30, 88.0, -88.0, 89.0, -104.0, 0.625, -0.625,
             1e30, -1e30, 20.0, -20.0, 1e-5, 0.3, 4.0, 709.0, -745.0, 1e300]
    x = np.array(edges, dtype=np.float64)
    x = np.concatenate([x, rng.normal(size=n_random), rng.normal(size=n_random) * 10,
                        np.exp(rng.uniform(-20, 20, n_random)) *
                        rng.choice([-1, 1], n_random)])
    with np.errstate(all="ignore"):
        return x.astype(dtype)


def int_data(dtype, n_random=300, seed=0):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    edges = [0, 1, 2, 3, 7, 100, info.max, info.max - 1, info.min, info.min + 1]
    if info.min < 0:
        edges += [-1, -2, -3, -7, -100]
    x = np.array(edges, dtype=np.int64)
    full = rng.integers(info.min, info.max, n_random, endpoint=True)
    small = rng.integers(max(info.min, -20), 21, n_random)
    return np.concatenate([x, full, small]).astype(dtype)


def data(dtype, seed=0):
    if dtype == "bool":
        return np.array([False, True] * 8, dtype=bool)
    return float_data(dtype, seed=seed) if dtype in FLOATS else int_data(dtype, seed=seed)


def pairs(dtype):
    """(x, y): every edge value against every edge value, plus random pairs."""
    if dtype == "bool":
        return np.array([0, 0, 1, 1], bool), np.array([0, 1, 0, 1], bool)
    base = data(dtype)
    edges = base[:40]
    x = np.concatenate([np.repeat(edges, len(edges)), data(dtype, seed=1)])
    y = np.concatenate([np.tile(edges, len(edges)), data(dtype, seed=2)])
    return x, y


def exponents(dtype, n):
    """Small non-negative exponents for integer pow (numpy rejects negative ones)."""
    if dtype == "bool":
        return np.arange(n) % 2 == 0
    return (np.arange(n) % 10).astype(dtype)


# ------------------------------------------------------------------------ op groups
def applicable(op, dtype):
    return not (dtype in FLOATS and op in BITWISE) and op != "cast"


UNARY = [op for op, n in SCALAR_OPS.items() if n == 1 and op != "cast"]
BINARY = [op for op, n in SCALAR_OPS.items() if n == 2 and op not in COMPARISONS]
_kernel_results = {}


def group_results(dtype, group):
    """Run one kernel computing every applicable op of ``group`` on ``dtype``; memoized.

    Returns {op: (got, expected, inputs)}.
    """
    key = (dtype, group)
    if key in _kernel_results:
        return _kernel_results[key]
    if group == "unary":
        x = data(dtype)
        ops = [op for op in UNARY if applicable(op, dtype)]
        inputs = [x]
        eqns = tuple((op, (("in", 0),), dtype) for op in ops)
        args = {op: (x,) for op in ops}
    elif group == "binary":
        x, y = pairs(dtype)
        e = exponents(dtype, len(x))
        ops = [op for op in BINARY if applicable(op, dtype)]
        inputs = [x, y, e]
        eqns = tuple((op, (("in", 0), ("in", 2 if op == "pow" else 1)), dtype) for op in ops)
        args = {op: (x, e if op == "pow" else y) for op in ops}
    elif group == "compare":
        x, y = pairs(dtype)
        ops = sorted(COMPARISONS)
        inputs = [x, y]
        eqns = tuple((op, (("in", 0), ("in", 1)), "bool") for op in ops)
        args = {op: (x, y) for op in ops}
    else:                                                      # ternary
        x, y = pairs(dtype)
        c = np.arange(len(x)) % 3 == 0
        lo = np.minimum(y, x[::-1])
        ops = ["switch", "clip"]
        inputs = [c, x, y, lo]
        eqns = (("switch", (("in", 0), ("in", 1), ("in", 2)), dtype),
                ("clip", (("in", 1), ("in", 3), ("in", 2)), dtype))
        args = {"switch": (c, x, y), "clip": (x, lo, y)}
    in_dtypes = tuple(str(a.dtype) for a in inputs)
    spec = KernelSpec(in_dtypes, eqns, tuple(("eq", j) for j in range(len(eqns))))
    k = gl.compile_kernel(spec)
    outs = [np.empty(inputs[0].shape if group != "ternary" else x.shape,
                     dtype=spec.out_dtypes[j]) for j in range(len(eqns))]
    k(inputs, outs)
    res = {op: (outs[j], reference(op, dtype, *args[op]), args[op]) for j, op in enumerate(ops)}
    _kernel_results[key] = res
    return res


def assert_matches(got, want, dtype, op, inputs):
    if isinstance(want, tuple):                          # any of these answers is right
        first = want[0]
        for w in want[1:]:
            first = np.where(got == w, w, first)
        want = first
    if got.dtype.kind == "f":
        rtol = 1e-5 if dtype == "float32" else 1e-12
        atol = 1e-37 if got.dtype == np.float32 else 1e-300
        bad = ~(np.isclose(got, want, rtol=rtol, atol=atol) |
                (np.isnan(got) & np.isnan(want)))
    else:
        bad = got != want
    if bad.any():
        i = np.flatnonzero(bad)[:8]
        shown = ", ".join(f"{op}({', '.join(repr(a[j]) for a in inputs)}) = {got[j]!r} "
                          f"want {want[j]!r}" for j in i)
        pytest.fail(f"{op} on {dtype}: {bad.sum()} of {bad.size} wrong: {shown}")


CASES = [(op, dt, "unary") for op in UNARY for dt in DTYPES if applicable(op, dt)] + \
        [(op, dt, "binary") for op in BINARY for dt in DTYPES if applicable(op, dt)] + \
        [(op, dt, "compare") for op in sorted(COMPARISONS) for dt in DTYPES] + \
        [(op, dt, "ternary") for op in ("switch", "clip") for dt in DTYPES]


@pytest.mark.parametrize("op,dtype,group", CASES, ids=[f"{o}-{d}" for o, d, _ in CASES])
def test_scalar_op(op, dtype, group):
    got, want, inputs = group_results(dtype, group)[op]
    assert_matches(got, want, dtype, op, inputs)


def test_every_op_is_covered():
    covered = {op for op, _, _ in CASES} | {"cast"}
    assert covered == set(SCALAR_OPS)


@pytest.mark.parametrize("src", DTYPES)
def test_cast(src):
    """astype to every dtype, with nan/inf/out-of-range floats (x86 numpy conventions)."""
    x = data(src)
    spec = KernelSpec((src,), tuple(("cast", (("in", 0),), dst) for dst in DTYPES),
                      tuple(("eq", j) for j in range(len(DTYPES))))
    outs = [np.empty(x.shape, dst) for dst in DTYPES]
    gl.compile_kernel(spec)([x], outs)
    for dst, got in zip(DTYPES, outs):
        with np.errstate(all="ignore"):
            want = x.astype(dst)
        assert_matches(got, want, dst, f"cast->{dst}", (x,))


def test_integer_negative_pow_and_division_by_zero():
    x = np.array([1, -1, -1, 2, -128, 5, -128], np.int8)
    e = np.array([-3, -3, -2, -1, 0, 0, -1], np.int8)
    spec = KernelSpec(("int8", "int8"), (("pow", (("in", 0), ("in", 1)), "int8"),
                                         ("int_div", (("in", 0), ("in", 1)), "int8"),
                                         ("mod", (("in", 0), ("in", 1)), "int8")),
                      (("eq", 0), ("eq", 1), ("eq", 2)))
    outs = [np.empty(7, np.int8) for _ in range(3)]
    zeros = np.zeros(7, np.int8)
    gl.compile_kernel(spec)([x, zeros], outs)          # x // 0, x % 0: 0, no SIGFPE
    assert not outs[1].any() and not outs[2].any()
    gl.compile_kernel(spec)([x, e], outs)
    assert outs[0].tolist() == [1, -1, 1, 0, 1, 1, 0]
    assert outs[1][-1] == -128 and outs[2][-1] == 0     # INT_MIN // -1 wraps


# ------------------------------------------------------------------------ broadcasting, strides
AXPY = KernelSpec(("float64", "float64", "float64"),
                  (("mul", (("in", 0), ("in", 1)), "float64"),
                   ("sub", (("eq", 0), ("in", 2)), "float64"),
                   ("exp", (("in", 2),), "float64")),
                  (("eq", 1), ("eq", 2)))


def _axpy_ref(x, y, z):
    return x * y - z, np.broadcast_to(np.exp(z), np.broadcast_shapes(x.shape, y.shape, z.shape))


def _strided_cases():
    rng = np.random.default_rng(3)

    def r(*shape):
        return rng.normal(size=shape)
    big = r(6, 8, 10)
    return {
        "contiguous": (r(100), r(100), r(100)),
        "scalars0d": (np.array(2.0), np.array(3.0), np.array(0.5)),
        "all_0d_and_1elem": (np.array(2.0), r(1), r(1, 1)),
        "bias": (r(7, 5), r(5), r(7, 1)),
        "outer": (r(4, 1, 5), r(3, 1), np.array(1.5)),
        "transposed": (r(5, 7).T, r(7, 5), r(5, 7).T.copy()),
        "step_slices": (big[::2, 1::3, ::-2], big[1:4, ::3, 5::-1][..., :5], big[:3, :3, :5]),
        "negative": (r(50)[::-1], r(50)[::-2].repeat(2), r(50)),
        "zero_stride": (np.broadcast_to(r(1, 9), (4, 9)), np.broadcast_to(r(4, 1), (4, 9)),
                        r(4, 9)),
        "ndim8": (r(2, 1, 2, 3, 1, 2, 2, 2), r(2, 1, 2, 1, 2, 2), r(2, 2)),
        "empty": (r(0, 3), r(3), r(1, 3)),
        "fortran": (np.asfortranarray(r(6, 4)), r(6, 4), np.asfortranarray(r(6, 4))),
    }


@pytest.mark.parametrize("case", list(_strided_cases()))
@pytest.mark.parametrize("out_layout", ["C", "transposed"])
def test_broadcast_and_strides(case, out_layout):
    x, y, z = _strided_cases()[case]
    want = _axpy_ref(x, y, z)
    k = gl.compile_kernel(AXPY)
    shape = k.out_shape([x.shape, y.shape, z.shape])
    assert shape == want[0].shape
    if out_layout == "C":
        outs = [np.full(shape, np.nan), np.full(shape, np.nan)]
    else:
        outs = [np.full(shape[::-1], np.nan).T, np.full(shape[::-1], np.nan).T]
    k([x, y, z], outs)
    k([x, y, z], outs)                                   # second call: cached plan
    for got, w in zip(outs, want):
        np.testing.assert_allclose(got, w, rtol=1e-13)


def test_int_and_bool_strided():
    spec = KernelSpec(("int16", "bool"), (("mul", (("in", 0), ("in", 0)), "int16"),
                                          ("cast", (("in", 1),), "int16"),
                                          ("add", (("eq", 0), ("eq", 1)), "int16"),
                                          ("invert", (("in", 1),), "bool")),
                      (("eq", 2), ("eq", 3)))
    rng = np.random.default_rng(0)
    x = rng.integers(-300, 300, (6, 9)).astype(np.int16)[::-2, ::3]
    m = (rng.random((9,)) > 0.5)[::3]
    outs = [np.empty((3, 3), np.int16), np.empty((3, 3), bool)]
    gl.compile_kernel(spec)([x, m], outs)
    np.testing.assert_array_equal(outs[0], x * x + m)
    np.testing.assert_array_equal(outs[1], np.broadcast_to(~m, (3, 3)))


def test_in_place_output():
    """An output that is also an input (the linker's destroy-map): exact aliasing is fine."""
    x = np.arange(1000.0)
    y = np.full(1000, 2.0)
    outs = [x, np.empty(1000)]
    gl.compile_kernel(AXPY)([x, y, np.array(1.0)], outs)
    np.testing.assert_array_equal(x, np.arange(1000.0) * 2 - 1)


def test_in_place_float32_vector_math():
    """Exact aliasing in a vectorized float32 loop (the linker's in-place tanh(x + b)): the
    inner loop is annotated parallel, so the result is the same as into a fresh buffer."""
    f = "float32"
    spec = KernelSpec((f, f), (("add", (("in", 0), ("in", 1)), f),
                               ("tanh", (("eq", 0),), f)), (("eq", 1),))
    rng = np.random.default_rng(3)
    for shape in [(1003,), (37, 129)]:
        x = rng.normal(size=shape).astype(f) * 3
        b = rng.normal(size=shape[-1:]).astype(f)
        want = np.empty_like(x)
        gl.compile_kernel(spec)([x, b], [want])
        gl.compile_kernel(spec)([x, b], [x], nthreads=2)
        np.testing.assert_array_equal(x, want)


def test_map_loops_are_parallel_and_heavy_ones_interleaved():
    from graphc.backend.llvm.codegen import Variant, build_ir
    f = "float32"
    light = KernelSpec((f, f), (("add", (("in", 0), ("in", 1)), f),), (("eq", 0),))
    heavy = KernelSpec((f,), (("exp", (("in", 0),), f),), (("eq", 0),))
    for spec, n_ops in [(light, 3), (heavy, 2)]:
        text = build_ir(spec, Variant("map", 2, 0, ("1",) * n_ops, False))
        assert "llvm.loop.parallel_accesses" in text
        assert text.count("!llvm.access.group") == n_ops        # every load and store
        assert ("llvm.loop.interleave.count" in text) == (spec is heavy)
    red = KernelSpec((f,), (("exp", (("in", 0),), f),), (("eq", 0),), reduce=("add", (0,)))
    assert "parallel_accesses" not in build_ir(red, Variant("reduce", 1, 0, ("1", "0"), False))


def test_heavy_map_kernels_get_no_vector_epilogue(capfd):
    """Heavy float32 math compiles its elementwise loop without LLVM's vector epilogue (a
    third copy of a long body, codegen.vector_epilogue); other kernels keep it. Results are
    right on every remainder length either way."""
    from graphc.backend.llvm.codegen import Variant, vector_epilogue
    f = "float32"
    heavy = KernelSpec((f,), (("tanh", (("in", 0),), f),), (("eq", 0),))
    light = KernelSpec((f, f), (("add", (("in", 0), ("in", 1)), f),), (("eq", 0),))
    red = KernelSpec((f,), (("exp", (("in", 0),), f),), (("eq", 0),), reduce=("add", (0,)))
    assert not vector_epilogue(heavy, Variant("map", 1, 0, ("1", "1"), True))
    assert vector_epilogue(light, Variant("map", 1, 0, ("1", "1", "1"), True))
    assert vector_epilogue(red, Variant("reduce", 1, 0, ("1", "0"), True))
    x = np.linspace(-4, 4, 100, dtype=np.float32)
    for spec, args, want in [(heavy, [x], np.tanh(x)), (light, [x, x], x + x)]:
        capfd.readouterr()
        k = gl.Kernel(spec, debug=True)
        for n in range(1, 100, 7):
            out = np.empty(n, np.float32)
            k([a[:n] for a in args], [out])
            np.testing.assert_allclose(out, want[:n], rtol=2e-6, atol=1e-7)
        optimized = capfd.readouterr().err.split("optimized IR")[1].split("graphc assembly")[0]
        # the main loop works on <8 x float> (AVX2) or wider; an epilogue on narrower vectors
        assert ("<4 x float>" in optimized) == (spec is light) or "<8 x float>" not in optimized


def _float32_sweep():
    """Every 97th float32 in [0, 208] with both signs, plus the special values."""
    x = np.arange(0, 0x43500000, 97, dtype=np.uint32).view(np.float32)
    return np.concatenate([x, -x, np.array([np.inf, -np.inf, np.nan], np.float32)])


@pytest.mark.parametrize("op", ["exp", "tanh", "sigmoid"])
def test_float32_vector_math_dense_sweep(op):
    """Max relative error < 1e-6 where the result is a normal float, within one denormal ulp
    below that, nan/inf exactly where numpy has them (~4.5M arguments)."""
    f = "float32"
    x = _float32_sweep()
    out = np.empty_like(x)
    gl.compile_kernel(KernelSpec((f,), ((op, (("in", 0),), f),), (("eq", 0),)))([x], [out])
    ref = {"exp": np.exp, "tanh": np.tanh, "sigmoid": sps.expit}[op]
    with np.errstate(all="ignore"):
        want = ref(x.astype(np.float64)).astype(f)
    special = ~np.isfinite(want) | ~np.isfinite(out)
    np.testing.assert_array_equal(out[special], want[special])
    normal = ~special & (np.abs(want) >= np.finfo(f).tiny)
    rel = np.abs(out[normal].astype(np.float64) - want[normal]) / np.abs(want[normal])
    assert rel.max() < 1e-6, (op, x[normal][np.argmax(rel)], rel.max())
    tiny = ~special & ~normal
    assert np.all(np.abs(out[tiny].astype(np.float64) - want[tiny]) <= 2.0 ** -149)


def test_float32_exp_overflow_and_underflow_edges():
    f = "float32"
    hi = np.float32(88.72283172607422)            # the largest x with a finite float32 exp(x)
    x = np.array([hi, np.nextafter(hi, np.float32(np.inf)), -103.97, -103.98, -104.0, -87.0,
                  -100.0], f)
    out = np.empty_like(x)
    gl.compile_kernel(KernelSpec((f,), (("exp", (("in", 0),), f),), (("eq", 0),)))([x], [out])
    assert np.isfinite(out[0]) and out[1] == np.inf
    assert out[2] > 0 and out[3] == 0 and out[4] == 0
    want = np.exp(x[5:].astype(np.float64)).astype(f)       # -100: a denormal result
    np.testing.assert_allclose(out[5:], want, rtol=1e-6, atol=2.0 ** -149)


def test_unsupported_op_fails_at_compile_time():
    bad = KernelSpec(("float32", "float32"), (("xor", (("in", 0), ("in", 1)), "float32"),),
                     (("eq", 0),))
    with pytest.raises(ValueError, match="xor"):
        gl.compile_kernel(bad)


def test_python_scalar_inputs_and_errors():
    k = gl.compile_kernel(AXPY)
    outs = [np.empty(3), np.empty(3)]
    k([np.arange(3.0), 2.0, np.float64(1.0)], outs)
    np.testing.assert_allclose(outs[0], np.arange(3.0) * 2 - 1)
    with pytest.raises(TypeError):
        k([np.arange(3, dtype=np.float32), np.ones(3), np.ones(3)], outs)
    with pytest.raises(ValueError):
        k([np.ones(3), np.ones(3), np.ones(3)], [np.empty(4), np.empty(4)])


# ------------------------------------------------------------------------ reductions
def _reduce_spec(kind, dtype, in_dtype=None):
    """out = reduce(kind, f(x, y)) with f = x*y (or x & y for bools)."""
    in_dtype = in_dtype or dtype
    op = "and" if dtype == "bool" else "mul"
    return lambda axes: KernelSpec((in_dtype, in_dtype), ((op, (("in", 0), ("in", 1)), dtype),),
                                   (("eq", 0),), reduce=(kind, axes))


def _reduce_ref(kind, dtype, v, axes):
    if dtype == "bool":
        u = np.logical_or if kind in ("add", "max", "or") else np.logical_and
        return u.reduce(v, axis=axes)
    u = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum,
         "and": np.bitwise_and, "or": np.bitwise_or}[kind]
    if dtype == "float32":
        return u.reduce(v.astype(np.float64), axis=axes)
    return u.reduce(v, axis=axes, dtype=dtype)


REDUCE_CASES = [("add", "float32"), ("max", "float32"), ("mul", "float64"), ("min", "float64"),
                ("add", "int32"), ("mul", "int8"), ("max", "uint8"), ("min", "int16"),
                ("and", "int64"), ("or", "int32"), ("and", "bool"), ("or", "bool"),
                ("add", "bool"), ("min", "bool")]
AXES3 = [a for r in range(4) for a in combinations(range(3), r)]


@pytest.mark.parametrize("kind,dtype", REDUCE_CASES, ids=[f"{k}-{d}" for k, d in REDUCE_CASES])
def test_reduce_all_axis_subsets(kind, dtype):
    rng = np.random.default_rng(1)
    shape = (4, 5, 6)
    if dtype == "bool":
        x, y = rng.random(shape) > 0.2, rng.random(shape) > 0.1
    elif dtype in FLOATS:
        x, y = rng.normal(size=shape).astype(dtype), rng.uniform(0.5, 1.5, shape).astype(dtype)
    else:
        x = rng.integers(-3 if dtype != "uint8" else 0, 4, shape).astype(dtype)
        y = rng.integers(1, 3, shape).astype(dtype)
    layouts = {"C": (x, y)}
    if (kind, dtype) in (("add", "float32"), ("max", "float32"), ("add", "int32"),
                         ("and", "bool")):                # strided layouts: fewer compiles
        layouts.update({"transposed": (x.T.copy().T, y[:, :, :1]),
                        "reversed": (x[::-1], y[:, ::-1])})
    make = _reduce_spec(kind, dtype)
    for axes in AXES3:
        k = gl.compile_kernel(make(axes))
        for name, (a, b) in layouts.items():
            v = (a & b) if dtype == "bool" else a * b
            want = _reduce_ref(kind, dtype, v, axes)
            out = np.empty(k.out_shape([a.shape, b.shape]), dtype)
            k([a, b], [out])
            if dtype in FLOATS:
                tol = 1e-5 if dtype == "float32" else 1e-12     # atol: sums that cancel
                np.testing.assert_allclose(out, want, rtol=tol, atol=tol,
                                           err_msg=f"axes={axes} {name}")
            else:
                np.testing.assert_array_equal(out, want, err_msg=f"axes={axes} {name}")


def test_reduce_negative_axis_nan_and_empty():
    spec = KernelSpec(("float64",), (("identity", (("in", 0),), "float64"),), (("eq", 0),),
                      reduce=("max", (-1,)))
    k = gl.compile_kernel(spec)
    x = np.array([[1.0, np.nan, 3.0], [4.0, 5.0, -np.inf]])
    out = np.empty(2)
    k([x], [out])
    assert np.isnan(out[0]) and out[1] == 5.0
    s = KernelSpec(("float32",), (("identity", (("in", 0),), "float32"),), (("eq", 0),),
                   reduce=("add", (0,)))
    out = np.full(3, np.nan, np.float32)
    gl.compile_kernel(s)([np.empty((0, 3), np.float32)], [out])
    assert (out == 0).all()


def test_long_float32_sum_accuracy():
    """2^22 uniform values: float32 result within 1e-5 (relative) of the float64 sum."""
    x = np.random.default_rng(0).random(1 << 22).astype(np.float32)
    spec = KernelSpec(("float32",), (("identity", (("in", 0),), "float32"),), (("eq", 0),),
                      reduce=("add", (0,)))
    k = gl.compile_kernel(spec)
    want = x.astype(np.float64).sum()
    for nthreads in (1, 2):
        out = np.empty((), np.float32)
        k([x], [out], nthreads=nthreads)
        assert abs(float(out) - want) / want < 1e-6, (nthreads, float(out), want)


def test_row_softmax_reduction_and_threads():
    """sum(exp(x - rowmax)) over rows, with a (R, 1) broadcast input: the softmax pattern."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 300)).astype(np.float32)
    m = x.max(axis=1, keepdims=True)
    spec = KernelSpec(("float32", "float32"), (("sub", (("in", 0), ("in", 1)), "float32"),
                                               ("exp", (("eq", 0),), "float32")),
                      (("eq", 1),), reduce=("add", (1,)))
    k = gl.compile_kernel(spec)
    want = np.exp(x.astype(np.float64) - m).sum(axis=1)
    for nthreads in (1, 2):
        out = np.empty(512, np.float32)
        k([x, m], [out], nthreads=nthreads)
        np.testing.assert_allclose(out, want, rtol=1e-5)


def test_threads_match_serial(monkeypatch):
    monkeypatch.setenv("GRAPHC_PARALLEL_MIN", "1")
    rng = np.random.default_rng(0)
    x, y, z = rng.normal(size=(37, 41)), rng.normal(size=(41,)), rng.normal(size=(37, 1))
    k = gl.compile_kernel(AXPY)
    outs1 = [np.empty((37, 41)), np.empty((37, 41))]
    outs2 = [np.empty((37, 41)), np.empty((37, 41))]
    k([x, y, z], outs1, nthreads=1)
    k([x, y, z], outs2, nthreads=3)
    for a, b in zip(outs1, outs2):
        np.testing.assert_array_equal(a, b)
    for axes in [(0,), (1,), (0, 1)]:          # accumulate, reduce, full reduce + partials
        s = KernelSpec(("int64",), (("identity", (("in", 0),), "int64"),), (("eq", 0),),
                       reduce=("add", axes))
        xi = rng.integers(-100, 100, (37, 41))
        out = np.empty(gl.compile_kernel(s).out_shape([xi.shape]), np.int64)
        gl.compile_kernel(s)([xi], [out], nthreads=2)
        np.testing.assert_array_equal(out, xi.sum(axis=axes))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reduce_with_outer_reduced_loops(dtype, monkeypatch):
    """A kept axis between reduced ones (a conv bias gradient: sum over n, h, w) walks memory
    in order: reduced loops before the kept one, each kept index combined into the output."""
    monkeypatch.setenv("GRAPHC_PARALLEL_MIN", "1")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 5, 6, 7)).astype(dtype)
    def total(axes):
        return gl.compile_kernel(KernelSpec((dtype,), (("identity", (("in", 0),), dtype),),
                                            (("eq", 0),), reduce=("add", axes)))
    k = total((0, 2, 3))
    tol = 1e-5 if dtype == "float32" else 1e-12
    for name, v in [("C", x), ("strided", x[::2, :, ::-1]), ("channels last",
                                                             np.moveaxis(x.copy(), 1, 3))]:
        # channels last: the kept axis is innermost ('accumulate', not this variant)
        axes = (0, 1, 2) if name == "channels last" else (0, 2, 3)
        k2 = total(axes) if name == "channels last" else k
        want = v.astype(np.float64).sum(axis=axes)
        for nthreads in (1, 2):
            out = np.full(want.shape, np.nan, dtype)
            k2([v], [out], nthreads=nthreads)
            np.testing.assert_allclose(out, want, rtol=tol, atol=tol, err_msg=name)
    variants = [v for v in k._variants if v.mode == "reduce"]
    assert variants and all(v.outer == 1 and v.split == 1 for v in variants)
