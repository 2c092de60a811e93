"""Shared machinery of the table-driven op tests (tests/test_ops_*.py).

Each test file holds a ``TABLE`` of ``Case`` records, one per op or function:

    Case(name, build, ref, args, dtypes=..., grad=..., bcast=..., edge=...)

- ``build(*symbolic_inputs)`` makes the graphc expression; ``ref(*arrays)`` is its numpy
  reference.
- ``args`` gives one ``Arg(shape, kind, dtype)`` per input: its test shape, its value domain
  (``kind``, see ``make_value``: the domain restrictions of the op) and, for index or label
  inputs, a fixed dtype.
- ``dtypes``: the dtypes the forward test runs in; ``grad``: whether verify_grad (float64,
  domain-safe points) runs; ``bcast``: extra input shapes that exercise broadcasting;
  ``edge``: edge values (0, negatives, large magnitudes, inf, nan) given as per-input lists.

``case_tests(TABLE)`` turns a table into the four checks every op gets -- forward against
numpy, edge values, gradient against finite differences, inferred shape against the
actual one -- each on the default mode and on FAST_COMPILE (the numpy reference backend
with minimal rewrites).  The tests never look at graph structure, so they hold whatever
the optimizer does.
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.graph.basic import io_toposort
from graphc.tensor.basic import shape_i

# None: the configured default mode (FAST_RUN unless GRAPHC_FLAGS says otherwise)
MODES = [None, "FAST_COMPILE"]
MODE_IDS = ["default", "fast_compile"]

FLOATS = ("float32", "float64")
INTS = ("int32", "int64")
F_AND_I = FLOATS + INTS

INF, NAN = np.inf, np.nan
EDGE_FLOAT = [0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.75, 1e-30, 1e30, -1e30, INF, -INF, NAN]
EDGE_INT = [0, 1, -1, 2, -7, 100, -128, 127]


@dataclass
class Arg:
    shape: tuple
    kind: str = "any"              # value domain, see make_value
    dtype: Optional[str] = None    # fixed dtype (indices, labels); None: the dtype under test


@dataclass
class Case:
    name: str
    build: Callable
    ref: Callable
    args: Sequence[Arg]
    dtypes: Sequence[str] = FLOATS
    grad: bool = True
    wrt: Optional[Sequence[int]] = None     # inputs to check the gradient of (default: all float)
    bcast: Sequence[Sequence[tuple]] = ()   # alternative shapes per input, for broadcasting
    edge: Optional[Sequence[Sequence]] = None      # float dtypes: per-input value lists
    edge_int: Optional[Sequence[Sequence]] = None  # int dtypes: per-input value lists
    rtol: Optional[float] = None
    check_dtype: bool = True                # float inputs: graphc's dtype == numpy's
    shape_check: bool = True                # compare infer_shape with the actual shape
    marks: Sequence = field(default_factory=tuple)

    def __str__(self):
        return self.name


# --------------------------------------------------------------------------- values
def make_value(rng, arg: Arg, dtype: str, shape=None):
    """A test value for ``arg`` in dtype ``dtype`` (the domain is ``arg.kind``):

    any: in [-2, 2]; pos: in [0.5, 2.5]; neg: in [-2.5, -0.5]; nonzero: |x| in [0.5, 2];
    prob: in [0.1, 0.9];
    unit: in [-0.9, 0.9]; distinct: all different and >= 0.1 apart (max/min, sort-like ops);
    idx:N: integers in [0, N); small: |x| <= 3 (ints), exponents.
    """
    shape = arg.shape if shape is None else shape
    dt = np.dtype(arg.dtype or dtype)
    kind, _, param = arg.kind.partition(":")
    if kind == "idx":
        return rng.integers(0, int(param), size=shape).astype(dt)
    if dt == np.bool_:
        return rng.random(shape) > 0.5
    if dt.kind in "iu":
        lo, hi = {"any": (-5, 6), "pos": (1, 6), "nonzero": (1, 6), "small": (0, 4),
                  "prob": (0, 2), "unit": (-1, 2), "neg": (-6, 0),
                  "distinct": (-50, 50)}[kind]
        if dt.kind == "u":
            lo = max(lo, 0)
        if kind == "distinct":
            n = int(np.prod(shape))
            return (rng.permutation(n) - n // 2).reshape(shape).astype(dt)
        v = rng.integers(lo, hi, size=shape)
        if kind == "nonzero" and dt.kind == "i":
            v = v * rng.choice([-1, 1], size=shape)
        return v.astype(dt)
    if kind == "any":
        v = rng.uniform(-2.0, 2.0, size=shape)
    elif kind == "pos":
        v = rng.uniform(0.5, 2.5, size=shape)
    elif kind == "nonzero":
        v = rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    elif kind == "neg":
        v = rng.uniform(-2.5, -0.5, size=shape)
    elif kind == "prob":
        v = rng.uniform(0.1, 0.9, size=shape)
    elif kind == "unit":
        v = rng.uniform(-0.9, 0.9, size=shape)
    elif kind == "small":
        v = rng.uniform(-3.0, 3.0, size=shape)
    elif kind == "distinct":
        n = int(np.prod(shape))
        v = ((rng.permutation(n) - n / 2) * 0.37 + rng.uniform(0, 0.05, n)).reshape(shape)
    else:
        raise ValueError(f"unknown value kind {arg.kind!r}")
    return np.asarray(v, dtype=dt)


def sym_for(value, name=None, static=False):
    """A symbolic input for ``value``: size-1 dims broadcastable (as T.row/T.col), the other
    sizes unknown, or the full static shape when ``static``."""
    shape = value.shape if static else tuple(1 if s == 1 else None for s in value.shape)
    return T.TensorType(value.dtype, shape=shape)(name)


# --------------------------------------------------------------------------- comparisons
def tolerance(dtype, rtol=None):
    if rtol is not None:
        return rtol, rtol * 1e-2
    if np.dtype(dtype) == np.float16:
        return 1e-2, 1e-3
    if np.dtype(dtype) == np.float32:
        return 1e-4, 1e-5
    return 1e-9, 1e-12


def assert_matches(actual, expected, dtype, rtol=None, what=""):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, \
        f"{what}: shape {actual.shape} != numpy's {expected.shape}"
    if np.dtype(dtype).kind in "biu":
        np.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        rt, at = tolerance(dtype, rtol)
        np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                                   rtol=rt, atol=at, equal_nan=True, err_msg=what)


def reference(case, values, out_dtype):
    """numpy's result; recomputed in float64 when numpy would use a narrower float than
    graphc does (numpy sends int8 to float16, Theano and graphc to float32)."""
    with np.errstate(all="ignore"):
        r = np.asarray(case.ref(*values))
        od = np.dtype(out_dtype)
        if od.kind == "f" and (r.dtype.kind != "f" or r.dtype.itemsize < od.itemsize):
            r64 = np.asarray(case.ref(*[v.astype(np.float64) if v.dtype.kind in "iub" and
                                        v.dtype != np.bool_ else v for v in values]))
            if r64.dtype.kind == "f":
                r = r64
    return r


# --------------------------------------------------------------------------- the checks
def check_forward(case, dtype, mode, rng, shapes=None):
    values = [make_value(rng, a, dtype, None if shapes is None else shapes[i])
              for i, a in enumerate(case.args)]
    return check_values(case, values, mode)


def check_values(case, values, mode, rtol=None):
    syms = [sym_for(v, f"in{i}") for i, v in enumerate(values)]
    out = case.build(*syms)
    f = graphc.function(syms, out, mode=mode, on_unused_input="ignore")
    got = f(*values)
    assert isinstance(got, np.ndarray), f"{case.name}: output is {type(got).__name__}"
    assert got.dtype == np.dtype(out.dtype), (
        f"{case.name}: computed dtype {got.dtype} differs from the symbolic {out.dtype}")
    for d, (s, a) in enumerate(zip(out.type.shape, got.shape)):
        assert s is None or s == a, (f"{case.name}: static shape {out.type.shape} contradicts "
                                     f"the actual {got.shape}")
    assert got.ndim == out.ndim
    expected = reference(case, values, out.dtype)
    if case.check_dtype and all(v.dtype.kind == "f" for v in values) and \
            expected.dtype.kind == "f":
        assert got.dtype == expected.dtype, (
            f"{case.name}: graphc gives {got.dtype} where numpy gives {expected.dtype}")
    assert_matches(got, expected, out.dtype, rtol or case.rtol,
                   f"{case.name} on {[v.dtype.name for v in values]}")
    return got


def check_edge(case, dtype, mode):
    edge = case.edge if np.dtype(dtype).kind == "f" else case.edge_int
    cols = [np.asarray(col) for col in edge]
    values = []
    for a, col in zip(case.args, cols):
        dt = np.dtype(a.dtype or dtype)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values.append(col.astype(dt))
    check_values(case, values, mode)


def check_grad(case, mode, rng, shapes=None):
    pt = [make_value(rng, a, "float64", None if shapes is None else shapes[i])
          for i, a in enumerate(case.args)]
    wrt = case.wrt if case.wrt is not None else [
        i for i, v in enumerate(pt) if v.dtype.kind == "f"]
    fixed = {i: v for i, v in enumerate(pt) if i not in wrt}

    def fun(*xs):
        it = iter(xs)
        ins = [T.constant(fixed[i]) if i in fixed else next(it) for i in range(len(pt))]
        return case.build(*ins)

    graphc.gradient.verify_grad(fun, [pt[i] for i in wrt], n_tests=1, mode=mode,
                                rng=np.random.default_rng(7))


def infer_shape_of(var, inputs=None):
    """The shape of ``var`` (a tuple of int64 scalar variables) built only from the ops'
    ``infer_shape`` rules, starting from the shapes of the graph's inputs.  Raises
    NotImplementedError naming an op that has no shape rule."""
    order = io_toposort(inputs or [], [var])
    shapes = {}

    def shape_of(v):
        if v not in shapes:
            shapes[v] = tuple(shape_i(v, d) for d in range(v.ndim))
        return shapes[v]

    for node in order:
        rule = getattr(node.op, "infer_shape", None)
        if rule is None:
            raise NotImplementedError(f"{node.op} has no infer_shape")
        outs = rule(node, [shape_of(i) for i in node.inputs])
        for o, s in zip(node.outputs, outs):
            assert len(s) == o.ndim, f"{node.op}.infer_shape gave {len(s)} dims for {o.type}"
            shapes[o] = tuple(T.cast(T.as_tensor_variable(d), "int64") for d in s)
    return shape_of(var)


def main_dtype(case):
    return "float64" if "float64" in case.dtypes else case.dtypes[-1]


def check_infer_shape(case, mode, rng, shapes=None):
    values = [make_value(rng, a, main_dtype(case), None if shapes is None else shapes[i])
              for i, a in enumerate(case.args)]
    syms = [sym_for(v, f"in{i}") for i, v in enumerate(values)]
    out = case.build(*syms)
    inferred = infer_shape_of(out, syms)
    outs = [out] + list(inferred)
    f = graphc.function(syms, outs, mode=mode, on_unused_input="ignore")
    got, *dims = f(*values)
    assert tuple(int(d) for d in dims) == got.shape, (
        f"{case.name}: infer_shape says {tuple(int(d) for d in dims)}, actual {got.shape}")


# --------------------------------------------------------------------------- parametrization
def _params(table, pick):
    out = []
    for case in table:
        for item in pick(case):
            *vals, ident = item
            out.append(pytest.param(case, *vals, id=f"{case.name}-{ident}", marks=case.marks))
    return out


def forward_params(table):
    return _params(table, lambda c: [(d, d) for d in c.dtypes])


def bcast_params(table):
    return _params(table, lambda c: [(s, "x".join(map(str, map(len, s))) + f"#{k}")
                                     for k, s in enumerate(c.bcast)])


def edge_params(table):
    def pick(c):
        return [(d, d) for d in c.dtypes if
                (c.edge if np.dtype(d).kind == "f" else c.edge_int) is not None]
    return _params(table, pick)


def grad_params(table):
    return _params(table, lambda c: [("grad",)] if c.grad else [])


def shape_params(table):
    return _params(table, lambda c: [("shape",)] if c.shape_check else [])


def case_tests(table, namespace):
    """Define test_forward / test_broadcast / test_edge / test_grad / test_infer_shape over
    ``table`` in the calling module's ``namespace`` (each on every mode)."""
    mode_param = pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)

    @mode_param
    @pytest.mark.parametrize("case,dtype", forward_params(table))
    def test_forward(case, dtype, mode, rng):
        check_forward(case, dtype, mode, rng)

    @mode_param
    @pytest.mark.parametrize("case,shapes", bcast_params(table))
    def test_broadcast(case, shapes, mode, rng):
        check_forward(case, main_dtype(case), mode, rng, shapes)
        if case.grad and shapes in case.bcast[:2]:   # the gradient of the first two patterns
            check_grad(case, mode, rng, shapes)
        if case.shape_check:
            check_infer_shape(case, mode, rng, shapes)

    @mode_param
    @pytest.mark.parametrize("case,dtype", edge_params(table))
    def test_edge(case, dtype, mode):
        check_edge(case, dtype, mode)

    @mode_param
    @pytest.mark.parametrize("case", grad_params(table))
    def test_grad(case, mode, rng):
        check_grad(case, mode, rng)

    @mode_param
    @pytest.mark.parametrize("case", shape_params(table))
    def test_infer_shape(case, mode, rng):
        check_infer_shape(case, mode, rng)

    tests = [(test_forward, forward_params), (test_broadcast, bcast_params),
             (test_edge, edge_params), (test_grad, grad_params),
             (test_infer_shape, shape_params)]
    for fn, params in tests:
        if params(table):     # no empty parametrizations (they show up as skips)
            namespace[fn.__name__] = fn


def edge_pairs(values=EDGE_FLOAT):
    """Two columns holding every pair of ``values`` (binary ops on edge values)."""
    a, b = zip(*itertools.product(values, values))
    return [list(a), list(b)]
