"""Run one graph on the native backend and on the numpy reference backend, compare results.

    NATIVE = Mode(linker='llvm', optimizer='fast_run')   fused LLVM kernels, BLAS, in-place ops
    REFERENCE = Mode(linker='py', optimizer=None)       each op's numpy perform, graph as built

The reference runs the graph exactly as the user built it, so a difference is a bug of the
rewrites (fast_run), of the native kernels, or of the linker -- never of numpy.

Tolerances (``assert_same``), applied elementwise as ``|got - want| <= atol + rtol * |want|``:

- ints and bools: exact; nan and +-inf positions: exact, in every float dtype.
- float64, rtol 1e-12: the native transcendental functions are libm's (~1 ulp) and the
  only other source of difference is summation order (vectorized or threaded reductions
  against numpy's pairwise sum), ~n * 1e-16 relative to the summands.
- float32, rtol 1e-5: exp/log/tanh/sin/erf/... are branch-free polynomial approximations
  (graphc/backend/llvm/vmath.py) with relative errors up to ~2e-6 per function, and graphs
  chain several of them (softplus inside a cross-entropy, tanh of an exp, their gradients).
  The worst difference measured over every record of test_llvm_vs_reference.py is 4e-7
  (the float32 gradient of tanh), 6e-16 in float64; 1e-5 keeps a wide margin for longer
  chains and still catches a wrong formula, constant or rounding mode (off by >= 1e-3).
- the absolute term is ``rtol / 10`` times the largest finite magnitude of the reference
  output (at least 1): sums and differences that cancel to ~0 (a row sum of sines,
  ``exp(x) * y - x``) carry the absolute error of their terms, not a relative one.
"""
from __future__ import annotations

import numpy as np

import graphc

NATIVE = graphc.Mode(linker="llvm", optimizer="fast_run")
REFERENCE = graphc.Mode(linker="py", optimizer=None)

RTOL = {"float16": 1e-2, "float32": 1e-5, "float64": 1e-12}


def assert_same(got, want, what="", rtol=None):
    """``got`` (native) equals ``want`` (reference) up to the tolerances above."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, reference {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    if want.dtype.kind not in "fc":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    rt = rtol if rtol is not None else RTOL[want.dtype.name]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: nan positions")
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{what}: inf positions")
    finite = np.abs(want[np.isfinite(want)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rt,
                               atol=rt * 0.1 * scale, equal_nan=True, err_msg=what)


def compile_both(inputs, outputs, **kwargs):
    """(native function, reference function) of one graph."""
    kwargs.setdefault("on_unused_input", "ignore")
    return (graphc.function(inputs, outputs, mode=NATIVE, **kwargs),
            graphc.function(inputs, outputs, mode=REFERENCE, **kwargs))


def compare(inputs, outputs, values, what="", rtol=None):
    """Run the graph on both backends with ``values``; assert the outputs agree and the input
    arrays are unchanged.  Returns the native outputs (a list when ``outputs`` is a list)."""
    native, ref = compile_both(inputs, outputs)
    before = [np.array(v, copy=True) for v in values]
    want = ref(*values)
    got = native(*values)
    for k, (v, b) in enumerate(zip(values, before)):    # in-place kernels: inputs intact
        np.testing.assert_array_equal(v, b, err_msg=f"{what}: input {k} was overwritten")
    if not isinstance(outputs, (list, tuple)):
        assert_same(got, want, what, rtol)
        return got
    for k, (g, w) in enumerate(zip(got, want)):
        assert_same(g, w, f"{what} output {k}", rtol)
    return got
