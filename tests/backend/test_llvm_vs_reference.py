"""Every record of the op tables (tests/test_ops_*.py) on the native backend against the
numpy reference backend (see compare_backends.py for the two modes and the tolerances).

Each record's graph is compiled twice -- ``Mode(linker='llvm', optimizer='fast_run')`` and
``Mode(linker='py', optimizer=None)`` -- and run on the same values:

- forward: elementwise records in every dtype they list (the dtype sweep, plus int8 / uint8 /
  int16 and mixed-dtype pairs below); the records of the larger tables in one dtype each,
  taken in turn from the record's list so every dtype still appears in every table;
- every broadcasting pattern, and the edge values (0, -0, +-inf, nan, 1e+-30, int limits);
- gradients of ``sum(out * a fixed random projection)`` for differentiable records, in
  float64 (every table) and float32 (elementwise and nnet);
- values outside an op's domain (both backends raise, or neither), and small graphs on
  which a fast_run rule fires across a dtype change or a broadcast ("rewrite corners").

Known bugs are marked ``xfail(strict=True)`` with the bug in the reason, so each such test
starts failing (XPASS) the day its bug is fixed.

The reference runs the graph as built, so the comparison also checks the rewrites.  Compile
time dominates (one native kernel is ~20-80 ms to build, then cached on disk), hence one dtype
per record outside the elementwise table.
"""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.rewriting.engine import RewriteWarning

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import test_ops_dot  # noqa: E402
import test_ops_elemwise  # noqa: E402
import test_ops_nnet  # noqa: E402
import test_ops_reduce  # noqa: E402
import test_ops_shape  # noqa: E402
import test_ops_subtensor  # noqa: E402
from compare_backends import NATIVE, REFERENCE, assert_same, compare  # noqa: E402
from op_table import make_value, sym_for  # noqa: E402

TABLES = {
    "elemwise": test_ops_elemwise.TABLE,
    "reduce": test_ops_reduce.TABLE,
    "dot": test_ops_dot.TABLE,
    "shape": test_ops_shape.TABLE,
    "subtensor": test_ops_subtensor.TABLE,
    "nnet": test_ops_nnet.TABLE,
}
SWEEP_TABLES = ("elemwise",)            # forward in every listed dtype
GRAD_F32_TABLES = ("elemwise", "nnet")  # gradients in float32 as well as float64
SMALL_INTS = ("int8", "uint8", "int16")


def _param(table, case, *values, ident):
    return pytest.param(case, *values, id=f"{table}-{case.name}-{ident}", marks=case.marks)


def _forward_params():
    out = []
    for table, cases in TABLES.items():
        for k, case in enumerate(cases):
            dtypes = case.dtypes if table in SWEEP_TABLES else [case.dtypes[k % len(case.dtypes)]]
            out += [_param(table, case, d, ident=d) for d in dtypes]
    return out


def _bcast_params():
    out = []
    for table, cases in TABLES.items():
        for case in cases:
            for k, shapes in enumerate(case.bcast):
                dt = case.dtypes[k % len(case.dtypes)]
                out.append(_param(table, case, shapes, dt, ident=f"{k}-{dt}"))
    return out


def _edge_params():
    out = []
    for table, cases in TABLES.items():
        for case in cases:
            for d in case.dtypes:
                if (case.edge if np.dtype(d).kind == "f" else case.edge_int) is not None:
                    out.append(_param(table, case, d, ident=d))
    return out


def _grad_params():
    out = []
    for table, cases in TABLES.items():
        for case in cases:
            if case.grad:
                out.append(_param(table, case, "float64", ident="float64"))
                if table in GRAD_F32_TABLES and "float32" in case.dtypes:
                    out.append(_param(table, case, "float32", ident="float32"))
    return out


def run_case(case, values, what):
    syms = [sym_for(v, f"in{i}") for i, v in enumerate(values)]
    return compare(syms, case.build(*syms), values, what, case.rtol)


# --------------------------------------------------------------------------- the tables
@pytest.mark.parametrize("case,dtype", _forward_params())
def test_forward(case, dtype, rng):
    values = [make_value(rng, a, dtype) for a in case.args]
    run_case(case, values, f"{case.name} in {dtype}")


@pytest.mark.parametrize("case,shapes,dtype", _bcast_params())
def test_broadcast(case, shapes, dtype, rng):
    values = [make_value(rng, a, dtype, s) for a, s in zip(case.args, shapes)]
    run_case(case, values, f"{case.name} on shapes {shapes} in {dtype}")


def edge_values(case, dtype, column_dtype=None):
    """The record's edge columns cast to each input's dtype (numpy's wrapping casts)."""
    cols = case.edge if np.dtype(dtype).kind == "f" else case.edge_int
    values = []
    for a, col in zip(case.args, cols):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values.append(np.asarray(col).astype(a.dtype or column_dtype or dtype))
    return values


@pytest.mark.parametrize("case,dtype", _edge_params())
def test_edge(case, dtype):
    run_case(case, edge_values(case, dtype), f"{case.name} on edge values in {dtype}")


@pytest.mark.parametrize("case,dtype", _grad_params())
def test_grad(case, dtype, rng):
    """Gradients of sum(out * P), P a fixed random array: the backward graphs (sums over
    broadcast dimensions, the stabilized and BLAS forms of the rewrites) on both backends."""
    values = [make_value(rng, a, dtype) for a in case.args]
    syms = [sym_for(v, f"in{i}") for i, v in enumerate(values)]
    out = case.build(*syms)
    with np.errstate(all="ignore"):
        out_shape = np.shape(case.ref(*values))
    proj = T.constant(rng.uniform(-1.0, 1.0, out_shape).astype(out.dtype))
    wrt = case.wrt if case.wrt is not None else [
        i for i, v in enumerate(values) if v.dtype.kind == "f"]
    grads = graphc.grad(T.sum(out * proj), [syms[i] for i in wrt],
                        disconnected_inputs="ignore")
    compare(syms, grads, values, f"gradient of {case.name} in {dtype}", case.rtol)


# --------------------------------------------------------------------------- dtype sweeps
def _int_records():
    return [c for c in TABLES["elemwise"] if any(np.dtype(d).kind == "i" for d in c.dtypes)]


def _small_int_params():
    # uint8 cannot hold the values of a "neg" argument (clip's lower bound)
    return [pytest.param(c, d, id=f"{c.name}-{d}") for c in _int_records() for d in SMALL_INTS
            if not (d == "uint8" and any(a.kind == "neg" for a in c.args))]


@pytest.mark.parametrize("case,dtype", _small_int_params())
def test_elemwise_small_ints(case, dtype, rng):
    """int8 / uint8 / int16: wrapping arithmetic and casts of narrow types, random values
    and (where the record has them) the int edge values, which overflow int8 and uint8."""
    values = [make_value(rng, a, dtype) for a in case.args]
    run_case(case, values, f"{case.name} in {dtype}")
    if case.edge_int is not None:
        run_case(case, edge_values(case, "int64", dtype), f"{case.name} on edges in {dtype}")


MIXED = [("float32", "int64"), ("int8", "float32"), ("uint8", "int16"), ("bool", "float64"),
         ("float32", "float64"), ("int32", "uint8")]


def _mixed_params():
    out = []
    for case in TABLES["elemwise"]:
        if len(case.args) != 2 or any(a.dtype for a in case.args):
            continue
        for pair in MIXED:
            kinds = {np.dtype(d).kind for d in pair}
            if case.name in ("and", "or", "xor") and "f" in kinds:
                continue        # bitwise ops reject floats when the graph is built
            if case.name in ("sub", "pow", "pow_fn") and "b" in kinds:
                continue        # numpy rejects bool subtraction; bool ** float is pow(0/1, .)
            out.append(pytest.param(case, pair, id=f"{case.name}-{pair[0]}-{pair[1]}"))
    return out


@pytest.mark.parametrize("case,pair", _mixed_params())
def test_elemwise_mixed_dtypes(case, pair, rng):
    """Binary records on operands of two dtypes: the upcast rule and the casts the fused
    kernel inserts (KernelSpec is canonically typed) must agree with the reference."""
    values = [make_value(rng, a, d) for a, d in zip(case.args, pair)]
    run_case(case, values, f"{case.name} on {pair}")


# --------------------------------------------------------------------------- invalid inputs
def _raises(fn, *args):
    try:
        with np.errstate(all="ignore"):
            return False, fn(*args)
    except Exception as e:      # noqa: BLE001 - any error counts, its type is compared below
        return True, e


AGREE = [
    ("neg_bool", lambda x: -x, [np.array([True, False])]),
    ("sub_bool", lambda x, y: x - y, [np.array([True, False]), np.array([True, True])]),
    ("sgn_bool", T.sgn, [np.array([True, False])]),
    ("int_pow_negative", lambda x, y: x ** y,
     [np.array([2, -1, 1], "int32"), np.array([-1, -3, -2], "int32")]),
    ("int_div_by_zero", lambda x, y: x // y,
     [np.array([7, -7, 0], "int32"), np.array([0, 0, 0], "int32")]),
    ("int_mod_by_zero", lambda x, y: x % y,
     [np.array([7, -7, 0], "int64"), np.array([0, 0, 0], "int64")]),
    ("cast_nan_to_int", lambda x: T.cast(x, "int32"), [np.array([np.nan, np.inf, 1e30])]),
]
DISAGREE = {
    "int_pow_negative": "int ** negative int: the reference (Elemwise and Fused perform) "
                        "keeps numpy's ValueError, the native kernel returns the truncated "
                        "0/1/-1 (backend/llvm/scalar.py int_pow): kernels have no error "
                        "channel to raise it yet, which is the backend's to add",
}


@pytest.mark.parametrize("name,build,values", [
    pytest.param(n, b, v, id=n, marks=[pytest.mark.xfail(strict=True, reason=DISAGREE[n])]
                 if n in DISAGREE else []) for n, b, v in AGREE])
def test_backends_agree_on_invalid_inputs(name, build, values):
    """Values outside an op's domain: either both backends raise or both give one result
    (and the build may reject the graph outright, which is also agreement)."""
    syms = [sym_for(v, f"in{i}") for i, v in enumerate(values)]
    rejected, out = _raises(build, *syms)
    if rejected:
        return
    native = graphc.function(syms, out, mode=NATIVE)
    ref = graphc.function(syms, out, mode=REFERENCE)
    ref_raised, want = _raises(ref, *values)
    native_raised, got = _raises(native, *values)
    assert ref_raised == native_raised, (
        f"{name}: reference {'raised ' + repr(want) if ref_raised else 'returned ' + repr(want)}"
        f", native {'raised ' + repr(got) if native_raised else 'returned ' + repr(got)}")
    if not ref_raised:
        assert_same(got, want, name)



# --------------------------------------------------------------------------- rewrite corners
def _vec(dtype, name):
    return T.TensorType(dtype, shape=(None,))(name)


def _corner(name, build, *values, reason=None):
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(build, [np.asarray(v) for v in values], id=name, marks=marks)


CORNERS = [
    # rules whose pattern matches across an upcast: they compute in the upcast dtype
    # (mul_minus_one, pow_two) or decline (add_neg / sub_neg: neg wraps in the narrow int)
    _corner("mul_minus_one_uint8", lambda u: u * -1, np.array([1, 2], "uint8")),
    _corner("mul_minus_one_int8", lambda b: b * np.int64(-1), np.array([-128, 5], "int8")),
    _corner("add_neg_wraps", lambda w, b: w + (-b), np.array([0, 0], "int16"),
            np.array([-128, 5], "int8")),
    _corner("sub_neg_wraps", lambda w, b: w - (-b), np.array([0, 0], "int16"),
            np.array([-128, 5], "int8")),
    _corner("add_neg_uint8", lambda w, u: w + (-u), np.array([0, 0], "int16"),
            np.array([1, 200], "uint8")),
    _corner("pow_two_upcast", lambda b: b ** np.int64(2), np.array([100, -7], "int8")),
    _corner("pow_two_float_exponent", lambda i: i ** 2.0, np.array([100000, -7], "int32")),
    # the same rules where they are right
    _corner("mul_minus_one_float", lambda x: x * -1, np.array([1.5, -0.0, np.inf])),
    _corner("mul_self_upcast", lambda b: T.cast(b, "int64") * b, np.array([100, -7], "int8")),
    _corner("add_zero_broadcasts", lambda r: r + np.zeros((3, 4)), np.ones((1, 4))),
    _corner("mul_one_upcasts", lambda i: i * np.float64(1), np.arange(3, dtype="int32")),
    _corner("reciprocal_of_int", lambda i: 1 / i, np.array([3, -2], "int32")),
    _corner("div_mul_cancel_int", lambda i, j: (i / j) * j, np.array([7, 3], "int32"),
            np.array([2, 5], "int32")),
    _corner("cast_cast_through_int8", lambda x: T.cast(T.cast(x, "int8"), "int32"),
            np.array([300.0, -1.5, 2.7])),
    _corner("cast_cast_through_float32", lambda x: T.cast(T.cast(x, "float32"), "float64"),
            np.array([0.1, 1e40, 1 / 3])),
    _corner("gemm_add_float64_z", lambda a, b, z: T.dot(a, b) + z,
            np.ones((3, 4), "float32") / 3, np.ones((4, 5), "float32"), np.full((3, 5), np.pi)),
    _corner("neg_const_factor_int8_min", lambda x: -(np.int8(-128) * x),
            np.array([1, -1, 3], "int8")),
]


@pytest.mark.parametrize("build,values", CORNERS)
def test_rewrite_corners(build, values):
    """Graphs on which a fast_run rule fires across a dtype change or a broadcast."""
    syms = [sym_for(v, f"in{i}") for i, v in enumerate(values)]
    compare(syms, build(*syms), values, "rewritten graph")


def test_rules_decline_without_warnings():
    """Rules decline (return None) on dtype mixes they don't handle and on constants whose
    negation overflows, instead of raising (the engine turns that into a RewriteWarning)."""
    a, b, z = T.fmatrix("a"), T.fmatrix("b"), T.dmatrix("z")
    x = T.bvector("x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphc.function([a, b, z], T.dot(a, b) + z, mode=NATIVE)
        graphc.function([a, b, z], z - T.dot(a, b), mode=NATIVE)
        graphc.function([x], -(np.int8(-128) * x), mode=NATIVE)
    messages = [str(w.message) for w in caught if issubclass(w.category, RewriteWarning)]
    assert not messages, messages
