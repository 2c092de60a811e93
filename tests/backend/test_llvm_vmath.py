"""vmath's float32 polynomials against float64 numpy, in ulps, on dense sweeps and edge values.

test_llvm_kernels.py checks every op to a relative tolerance; here the bounds are the ulp
errors measured on this code (plus one, for targets without fma), so a change that loses
accuracy (a shorter polynomial, another evaluation order, another scaling trick) shows up.
Measured max errors over every 7th float32 bit pattern in [-20, 20] and every 97th in
[-208, 208]: exp 1 ulp, sigmoid 2, softplus 3, tanh 5, erf 3, log 1, log1p 2, expm1 2.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.special as sps

from graphc.backend import llvm as gl
from graphc.backend.kernel_spec import KernelSpec


F = "float32"
TINY = np.finfo(np.float32).tiny
DENORMAL_ULP = 2.0 ** -149
REFERENCE = {"exp": np.exp, "sigmoid": sps.expit, "softplus": lambda v: np.logaddexp(0, v),
             "tanh": np.tanh, "erf": sps.erf, "log": np.log, "log1p": np.log1p,
             "expm1": np.expm1}
MAX_ULP = {"exp": 2, "sigmoid": 3, "softplus": 4, "tanh": 6, "erf": 4, "log": 2, "log1p": 3,
           "expm1": 3}


pytestmark = pytest.mark.usefixtures("hermetic_compiledir")   # see conftest.py


def run(op, x, dtype=F):
    out = np.empty_like(x)
    gl.compile_kernel(KernelSpec((dtype,), ((op, (("in", 0),), dtype),), (("eq", 0),)))(
        [x], [out])
    return out


def sweep():
    """Every 61st float32 in [0, 20] and every 997th in [0, 208], both signs (~2.2M)."""
    a = np.arange(0, 0x41A00001, 61, dtype=np.uint32).view(np.float32)
    b = np.arange(0, 0x43500000, 997, dtype=np.uint32).view(np.float32)
    return np.concatenate([a, -a, b, -b])


def check_ulps(op, x, out):
    """Normal results within MAX_ULP[op] of the correctly rounded value; denormal ones within
    one denormal ulp of the exact value; inf/nan/zero exactly where numpy has them (log of
    negative arguments: nan)."""
    with np.errstate(all="ignore"):
        exact = REFERENCE[op](x.astype(np.float64))
        want = exact.astype(np.float32)
    special = ~np.isfinite(want) | (want == 0)
    np.testing.assert_array_equal(out[special], want[special])
    normal = ~special & (np.abs(want) >= TINY)
    ulps = np.abs(out[normal].view(np.int32).astype(np.int64)
                  - want[normal].view(np.int32).astype(np.int64))
    worst = np.argmax(ulps)
    assert ulps[worst] <= MAX_ULP[op], (op, x[normal][worst], out[normal][worst], ulps[worst])
    tiny = ~special & ~normal
    assert np.all(np.abs(out[tiny].astype(np.float64) - exact[tiny]) <= DENORMAL_ULP)


@pytest.mark.parametrize("op", sorted(MAX_ULP))
def test_dense_sweep_in_ulps(op):
    x = sweep()
    check_ulps(op, x, run(op, x))


EDGES = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 1e-38, -1e-38,
                  3.4028235e38, -3.4028235e38, 88.72283, 88.72284, -87.33654, -87.33655,
                  -103.97, -103.972, -103.98, -104.0, -150.0, 9.0, -9.0, 9.01, 16.6, 17.0,
                  -17.0, 0.5, -0.5], np.float32)


@pytest.mark.parametrize("op", sorted(MAX_ULP))
def test_edge_values(op):
    out = run(op, EDGES)
    check_ulps(op, EDGES, out)
    with np.errstate(all="ignore"):
        assert np.array_equal(np.isnan(out), np.isnan(REFERENCE[op](EDGES.astype(np.float64))))


def test_sigmoid_small_results_down_to_zero():
    """sigmoid(x) for x in [-110, -80] is exp(x) down into the denormal range: the
    exp(x <= 0) path's single 2^(n+24) scale and final * 2^-24 round once, there too."""
    x = np.linspace(-110, -80, 200001, dtype=np.float32)
    out = run("sigmoid", x)
    exact = sps.expit(x.astype(np.float64))
    assert np.all(np.abs(out - exact) <= np.maximum(DENORMAL_ULP, 3e-7 * exact))
    assert np.all(out[x < -104] == 0) and np.all(out[x > -103.9] > 0)


def test_sigmoid_signed_zero_nan_and_denormal_arguments():
    """The numerator is picked by x's sign bit: -0.0 and negative denormals take the
    e/(1+e) branch and still give exactly 1/2; nan with either sign bit stays nan."""
    nan_neg = np.array([0xFFC00000], np.uint32).view(np.float32)[0]
    x = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, np.nan, nan_neg], np.float32)
    out = run("sigmoid", x)
    np.testing.assert_array_equal(out[:6], np.float32(0.5))
    assert np.all(np.isnan(out[6:]))


def test_sigmoid_float64_edges():
    """float64 sigmoid takes the same sign-bit pick (on 64-bit integers) with libm's exp."""
    x = np.array([0.0, -0.0, 5e-324, -5e-324, 1.0, -1.0, 40.0, -40.0, -745.0, -746.0, 800.0,
                  np.inf, -np.inf, np.nan], np.float64)
    out = run("sigmoid", x, "float64")
    want = sps.expit(x)         # 1/(1+exp(-x)): 0 at -745, where exp(-745) ~ 5e-324 is right
    np.testing.assert_allclose(out, want, rtol=1e-15, atol=5e-324)
    assert out[-1] != out[-1]


GAUSSIAN_FORMS = {   # exp of a provably nonpositive argument: each shape vmath.nonpositive sees
    "-(x*x)": (("mul", (("in", 0), ("in", 0)), F), ("neg", (("eq", 0),), F)),
    "(-x)*x": (("neg", (("in", 0),), F), ("mul", (("eq", 0), ("in", 0)), F)),
    "x*(-x)": (("neg", (("in", 0),), F), ("mul", (("in", 0), ("eq", 0)), F)),
    "-sqr(x)": (("sqr", (("in", 0),), F), ("neg", (("eq", 0),), F)),
    "-abs(x)": (("abs", (("in", 0),), F), ("neg", (("eq", 0),), F)),
}


@pytest.mark.parametrize("form", sorted(GAUSSIAN_FORMS))
def test_exp_of_nonpositive_forms(form):
    """exp(-x*x) and friends take exp_nonpositive_f32 (one scale factor, no upper clamp):
    same ulp bound, denormal results, 0 for huge |x|, nan for nan."""
    eqns = GAUSSIAN_FORMS[form]
    spec = KernelSpec((F,), eqns + (("exp", (("eq", len(eqns) - 1),), F),),
                      (("eq", len(eqns)),))
    x = np.concatenate([sweep()[::4], EDGES, np.linspace(-10.5, 10.5, 20001, dtype=F)])
    out = np.empty_like(x)
    gl.compile_kernel(spec)([x], [out])
    with np.errstate(all="ignore"):       # the argument as the kernel rounds it: x*x in float32
        arg = -np.abs(x) if form == "-abs(x)" else -(x * x)
    check_ulps("exp", arg, out)
    assert np.isnan(out[np.isnan(x)]).all() and np.all(out[arg < -104] == 0)


def test_nonpositive_recognizes_only_provable_shapes():
    from llvmlite import ir
    from graphc.backend.llvm import vmath
    mod = ir.Module()
    fn = ir.Function(mod, ir.FunctionType(ir.FloatType(), [ir.FloatType()] * 2), "f")
    b = vmath.MathBuilder(ir.IRBuilder(fn.append_basic_block()))
    x, y = fn.args
    neg = b.b.fneg(x)
    yes = [b.b.fneg(b.mul(x, x)), b.mul(neg, x), b.mul(x, neg), b.b.fneg(b.fabs(x))]
    no = [x, neg, b.mul(x, x), b.mul(neg, y), b.mul(x, b.b.fneg(y)), b.b.fneg(b.mul(x, y)),
          b.b.fneg(b.add(x, x)), b.b.fneg(b.call_f("sqrt", x))]
    assert all(vmath.nonpositive(v) for v in yes)
    assert not any(vmath.nonpositive(v) for v in no)
