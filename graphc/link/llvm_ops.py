"""Native steps for the nnet ops: softmax cross-entropy, max pooling (convolution: llvm_conv).

Each maker has the signature of ``graphc.link.llvm.STEP_MAKERS`` (node, input cells, output
cells, reuse) -> zero-argument step, or None to leave the node to its numpy ``perform``.
A step runs the same checks as ``perform`` (same errors, same messages) and then:

- SoftmaxCrossentropy: float32 runs the row kernel of graphc/backend/llvm/softmax.py (max,
  exp, sum and scale of a row while it is in cache, and the row's nll; row blocks on
  threads for large matrices); float64 four KernelSpec kernels (row max; e = exp(z - max);
  row sum of e; e / sum), the per-row nll from the n row maxima and sums in numpy.
- SoftmaxCrossentropyWithGrad (the forward and its gradient, paired by the optimizer):
  float32 the same row kernel, scaling each row by dnll / sum and subtracting dnll at the
  label instead of writing the softmax; float64 the first three kernels, then one numpy pass.
- SoftmaxCrossentropyGrad: dnll * sm into a kept buffer (numpy), then the n label entries.
- Conv2d / Conv2dGradInputs / Conv2dGradWeights: see graphc/link/llvm_conv.py.
- Pool / MaxPoolGrad, 2-d, mode 'max', windows that tile the input (stride == ws, no
  padding): elementwise kernels over the per-offset strided views (see below).  Other
  pooling geometries, and a partial edge window (ignore_border=False), run ``perform``.

Kernels are built as KernelSpecs (graphc.backend.kernel_spec) and compiled by
graphc.backend.llvm.compile_kernel, which memoizes them per spec.
"""
from __future__ import annotations

import ctypes

import numpy as np

from graphc.backend.kernel_spec import KernelSpec
from graphc.link import hugemem
from graphc.link.llvm import STEP_MAKERS, _Buffers
from graphc.tensor.nnet.xent import (SoftmaxCrossentropy, SoftmaxCrossentropyGrad,
                                     SoftmaxCrossentropyWithGrad)
from graphc.tensor.signal.pool import MaxPoolGrad, Pool

_FLOATS = ("float32", "float64")


def _kernel(spec: KernelSpec):
    from graphc.backend.llvm import compile_kernel
    return compile_kernel(spec)


# --------------------------------------------------------------------------- cross-entropy
def _xent_specs(dt, bias):
    """Specs of (row max of z, e = exp(z - m), row sum, e / sum), z = x [+ b].  Inputs:
    x (n, k)[, b (1, k)] and the per-row max m (n, 1); e and its row sum s (n, 1).
    exp is the costly part (a polynomial per element), so it runs once, into a scratch
    array that the last kernel divides into the softmax (the reference's ``e /= total``).
    Not in place: a kernel whose output aliases its input ran ~4x slower (measured)."""
    ins = (dt, dt) if bias else (dt,)
    z = [("add", (("in", 0), ("in", 1)), dt)] if bias else []
    zref = ("eq", 0) if bias else ("in", 0)
    row_max = KernelSpec(ins, tuple(z), (zref,), ("max", (1,)))
    exp = KernelSpec(ins + (dt,), tuple(z) + (("sub", (zref, ("in", len(ins))), dt),
                                              ("exp", (("eq", len(z)),), dt)),
                     (("eq", len(z) + 1),))
    row_sum = KernelSpec((dt,), (), (("in", 0),), ("add", (1,)))
    divide = KernelSpec((dt, dt), (("true_div", (("in", 0), ("in", 1)), dt),), (("eq", 0),))
    return row_max, exp, row_sum, divide


def _xent_inputs(node, ins, outs):
    """The checked input values of a SoftmaxCrossentropy step; None when the logits are
    empty (the op's numpy perform has then filled ``outs``)."""
    vals = [c[0] for c in ins]
    if vals[0].size == 0:
        node.op.perform(node, vals, outs)
        return None
    node.op.check(node, vals)
    return vals


def _xent_forward_step(node, ins, outs, reuse, second):
    """The step of SoftmaxCrossentropy(WithGrad): float32 the row kernel (_xent_rows_step);
    float64 the kernels of _Exps, then ``second(vals, total, e, exps, bufs)`` -> (the values
    the nll is computed from, the second output)."""
    op = node.op
    dt = node.outputs[0].dtype
    if dt not in _FLOATS or node.inputs[0].dtype != dt:
        return None
    if dt == "float32":
        return _xent_rows_step(node, ins, outs, reuse)
    exps = _Exps(dt, op.has_bias)
    bufs = _Buffers(2, reuse)

    def step():
        vals = _xent_inputs(node, ins, outs)
        if vals is None:
            return
        m, total, e = exps(vals)
        nll_vals, second_out = second(vals, total, e, exps, bufs)
        outs[0][0], outs[1][0] = _nll(op, nll_vals, m, total, bufs), second_out
    return step


def _softmax_out(vals, total, e, exps, bufs):
    """SoftmaxCrossentropy's second output: the softmax e / total (the fourth kernel)."""
    sm = bufs.get(1, e.shape, exps.dtype)
    exps.k_div([e, total[:, None]], [sm])
    return vals, sm


def _xent_step(node, ins, outs, reuse):
    return _xent_forward_step(node, ins, outs, reuse, _softmax_out)


class _Exps:
    """The float64 softmax up to its last step: ``(m, total, e)`` = row maxima, row sums
    of e = exp(z - m), and e, from the first three kernels of _xent_specs, into scratch
    arrays kept across calls; k_div (e / total) is the fourth kernel."""

    def __init__(self, dt, bias):
        self.k_max, self.k_exp, self.k_sum, self.k_div = (_kernel(s) for s in _xent_specs(dt, bias))
        self.dtype = np.dtype(dt)
        self.bias = bias
        self.scratch = {}

    def work(self, key, shape):
        a = self.scratch.get(key)
        if a is None or a.shape != shape:
            a = self.scratch[key] = hugemem.empty(shape, self.dtype)
        return a

    def __call__(self, vals):
        x = vals[0]
        n, k = x.shape
        zs = [x, vals[1][None, :]] if self.bias else [x]
        m, total, e = self.work("m", (n,)), self.work("s", (n,)), self.work("e", (n, k))
        self.k_max(zs, [m])
        self.k_exp(zs + [m[:, None]], [e])
        self.k_sum([e], [total])
        return m, total, e


def _nll(op, vals, m, total, bufs):
    """The reference's log(total) - s[rows, y], s = z - max, from the row maxima and sums."""
    x, y = vals[0], vals[-1]
    rows = np.arange(x.shape[0])
    picked = x[rows, y] + vals[1][y] if op.has_bias else x[rows, y]
    nll = bufs.get(0, (x.shape[0],), x.dtype)
    with np.errstate(invalid="ignore"):     # inf - inf in a row of non-finite logits: nan,
        np.log(total, out=nll)              # as the reference gives (without a warning)
        nll -= picked - m
    return nll


# float32 softmax rows: one native call per row block (graphc/backend/llvm/softmax.py)
_P, _L = ctypes.c_void_p, ctypes.c_int64
_SOFTMAX_PROTO = ctypes.CFUNCTYPE(_L, _L, _L, _L, _P, _L, _P, _P, _L, _P, _P, _P, _L)
_ROWS_PARALLEL_MIN = 1 << 15      # elements from which col2im channels split across threads
# elements from which softmax rows split across threads: on a (256, 1000) matrix two threads
# were slower than one, even at the fastest of 61 interleaved runs (kernel with the pool
# hand-off: 130 us one thread, 176 us two; whole function: 188 / 259 us): on this VM the second
# vCPU adds little (see docs/benchmarks.md) and the hand-off costs tens of microseconds
_SOFTMAX_PARALLEL_MIN = 1 << 20


def _in_threads(fn, n, *args):
    """fn(lo, hi, *args) over [0, n) cut into one slice per kernel thread (the backend's
    pool); fn must release the GIL (a ctypes call, numpy copies) for the slices to overlap.
    Returns the slices' results, in order."""
    from graphc.backend.llvm.kernel import _get_pool, num_threads
    t = min(num_threads(), n)
    if t <= 1:
        return [fn(0, n, *args)]
    cuts = [n * i // t for i in range(t + 1)]
    pool = _get_pool(t - 1)
    futures = [pool.submit(fn, cuts[i], cuts[i + 1], *args) for i in range(1, t)]
    first = fn(0, cuts[1], *args)
    return [first] + [f.result() for f in futures]


def _run_rows(fn, n, k, *args):
    """The sum of fn(lo, hi, k, *args) over rows [0, n), split across the kernel threads
    when large."""
    if n * k >= _SOFTMAX_PARALLEL_MIN:
        return sum(_in_threads(fn, n, k, *args))
    return fn(0, n, k, *args)


def _unit_columns(a):
    """``a`` (2-d) itself when its columns are adjacent in memory, else a C-contiguous copy."""
    return a if a.shape[1] <= 1 or a.strides[1] == a.itemsize else np.ascontiguousarray(a)


def _xent_rows_step(node, ins, outs, reuse):
    """float32 SoftmaxCrossentropy (nll, softmax) or SoftmaxCrossentropyWithGrad (nll, dx)
    through the row kernel of graphc/backend/llvm/softmax.py. The kernel counts the labels
    outside [-k, k) (computing their rows for class 0): the step then raises the op's error
    through its check, which also runs first when the sizes do not fit."""
    from graphc.backend.llvm.kernel import PYOBJ, num_threads
    from graphc.backend.llvm.softmax import RowSplit, load_softmax_rows
    op = node.op
    grad = isinstance(op, SoftmaxCrossentropyWithGrad)
    nlab = -2 if grad else -1
    ldt = node.inputs[nlab].dtype
    ltype = np.dtype(np.int32 if ldt == "int32" else np.int64)
    # other label dtypes are converted to int64, which could wrap a huge uint64 label into
    # range: those are checked before the kernel instead
    precheck = ldt not in ("int32", "int64")
    fn_addr = load_softmax_rows(op.has_bias, grad, 8 * ltype.itemsize, PYOBJ)
    fn = _SOFTMAX_PROTO(fn_addr)
    rows = RowSplit(fn_addr, lambda n, k, *args: _run_rows(fn, n, k, *args), num_threads())
    addr = id if PYOBJ else (lambda a: a.ctypes.data)       # (see codegen.DATA_OFFSET)
    f32 = np.dtype(np.float32)
    bufs = _Buffers(2, reuse)
    d_bcast = grad and node.inputs[-1].type.broadcastable[0]

    def step():
        vals = [c[0] for c in ins]
        x, y = vals[0], vals[nlab]
        if x.size == 0:
            op.perform(node, vals, outs)
            return
        n, k = x.shape
        b = vals[1] if op.has_bias else None
        d = vals[-1] if grad else None
        if precheck or y.shape[0] != n or (b is not None and b.shape[0] != k) or (
                d is not None and d.shape[0] != n and (d.shape[0] != 1 or not (d_bcast or n == 1))):
            op.check(node, vals)        # raises the op's error (if any)
        xc = _unit_columns(x)
        if xc.strides[0] % 4:
            xc = np.ascontiguousarray(xc)
        if y.dtype != ltype or y.strides[0] != ltype.itemsize:
            y = np.ascontiguousarray(y, ltype)
        nll, out = bufs.get(0, (n,), f32), bufs.get(1, (n, k), f32)
        # (the arrays stay referenced here while the kernel reads them)
        b = None if b is None else np.ascontiguousarray(b, f32)
        d = None if d is None else np.ascontiguousarray(d, f32)
        bad = rows(n, k, addr(xc), xc.strides[0] // 4, None if b is None else addr(b),
                   addr(out), k, addr(y), addr(nll), None if d is None else addr(d),
                   int(d is not None and d.shape[0] != 1))     # dnll of length 1: broadcast
        if bad:
            op.check(node, vals)        # raises: labels out of range
        outs[0][0], outs[1][0] = nll, out
    return step


def _xent_grad_step(node, ins, outs, reuse):
    op: SoftmaxCrossentropyGrad = node.op
    dt = node.outputs[0].dtype
    if dt not in _FLOATS:
        return None
    npdt = np.dtype(dt)
    bufs = _Buffers(1, reuse)

    def step():
        vals = [c[0] for c in ins]
        dnll, sm, y = vals
        op.check(node, vals)
        dx = bufs.get(0, sm.shape, npdt)
        # numpy's multiply by a broadcast column: memory-bound, and it beat both the
        # KernelSpec kernel (which reloads the stride-0 operand) and a row kernel
        # (1 or 2 threads) on a (256, 1000) float32 matrix
        np.multiply(sm, dnll[:, None], out=dx)
        rows = np.arange(sm.shape[0])
        dx[rows, y] -= dnll if dnll.shape[0] == sm.shape[0] else dnll[0]
        outs[0][0] = dx
    return step


def _grad_out(vals, total, e, exps, bufs):
    """SoftmaxCrossentropyWithGrad's second output: dx = e * (dnll / total), minus dnll at
    each row's label (its inputs end with the labels and dnll, which the nll does not read)."""
    dnll, y = vals[-1], vals[-2]
    dx = bufs.get(1, e.shape, exps.dtype)
    with np.errstate(invalid="ignore"):     # inf / inf in a row of non-finite logits
        np.multiply(e, (dnll / total)[:, None], out=dx)
    dx[np.arange(e.shape[0]), y] -= dnll
    return vals[:-1], dx


def _xent_with_grad_step(node, ins, outs, reuse):
    """SoftmaxCrossentropyWithGrad: float32 runs the row kernel writing dx instead of the
    softmax (the softmax row is made once, in cache); float64 the kernels of _Exps, then
    dx in numpy (_grad_out)."""
    return _xent_forward_step(node, ins, outs, reuse, _grad_out)


# elements from which a memory-bound pass (a conv's layout copy, 2x2 pooling) is split
# across threads: each split costs a thread hand-off (~20-50 us on idle cores, a scheduler
# time slice when the cores are busy), so only passes of a millisecond or more
_COPY_PARALLEL_MIN = 1 << 20


# --------------------------------------------------------------------------- max pooling
# A window of wh x ww cells is wh*ww strided views of the input, one per offset, each
# (..., oh, ow).  The forward takes the max in two elementwise kernels: over the wh row views
# (whole input rows, contiguous: it vectorizes), giving (..., oh, ow*ww), then over the ww
# column views of that; one kernel over all wh*ww views ran ~1.4x slower, a max-reduction
# over the size-2 axes of an (..., oh, wh, ow, ww) view ~5x slower (inner loops of length 2).
# The gradient is one kernel with wh*ww outputs (the matching views of gx).
_MAX_WINDOW = 16            # cells per window handled natively (inputs/outputs per kernel)


def _simple_max_pool(op) -> bool:
    """2-d max pooling whose windows tile the input: stride == ws, no padding."""
    return op.ndim == 2 and op.mode == "max" and op.stride == op.ws and not any(op.pad) \
        and op.ws[0] * op.ws[1] <= _MAX_WINDOW


def _out_hw(op, x):
    """(oh, ow), or None when the pooling keeps a partial edge window
    (ignore_border=False) or has no windows: those run ``perform``."""
    (h, w), (wh, ww) = x.shape[-2:], op.ws
    oh, ow = h // wh, w // ww
    if oh == 0 or ow == 0 or x.size == 0 or \
            (not op.ignore_border and (h % wh or w % ww)):
        return None
    return oh, ow


def _cell_views(x, ws, oh, ow, rows=True, cols=True):
    """Per window offset, the view of ``x`` at that offset over the windows' rows and/or
    columns (both: (..., oh, ow) views in window order, like the reference's loop)."""
    (wh, ww) = ws
    ri = [slice(i, i + wh * (oh - 1) + 1, wh) for i in range(wh)] if rows else [slice(None)]
    ci = [slice(j, j + ww * (ow - 1) + 1, ww) for j in range(ww)] if cols else \
        [slice(0, ww * ow)]
    return [x[..., r, c] for r in ri for c in ci]


def _max_spec(dt, cells):
    """max over ``cells`` inputs, in window order like the reference's running maximum."""
    eqns, acc = [], ("in", 0)
    for c in range(1, cells):
        eqns.append(("maximum", (acc, ("in", c)), dt))
        acc = ("eq", len(eqns) - 1)
    if not eqns:
        eqns.append(("identity", (acc,), dt))
    return KernelSpec((dt,) * cells, tuple(eqns), (("eq", len(eqns) - 1),))


def _max_grad_spec(dt, cells):
    """out_c = (x_c == max) * gz for every cell c: inputs (x_0 .. x_{cells-1}, max, gz).
    As the reference's ``np.equal(...) * gz``: 0 * inf gives nan there too."""
    m, g = ("in", cells), ("in", cells + 1)
    eqns, outs = [], []
    for c in range(cells):
        eqns.append(("eq", (("in", c), m), "bool"))
        eqns.append(("cast", (("eq", len(eqns) - 1),), dt))
        eqns.append(("mul", (("eq", len(eqns) - 1), g), dt))
        outs.append(("eq", len(eqns) - 1))
    return KernelSpec((dt,) * (cells + 2), tuple(eqns), tuple(outs))


def _planes(a):
    """``a`` as (planes, rows, cols) with unit column stride (a view when possible)."""
    p = a.reshape((-1,) + a.shape[-2:])
    return p if p.shape[2] <= 1 or p.strides[2] == p.itemsize else np.ascontiguousarray(p)


def _plane_meta(oh, ow, *planes):
    """int64 [oh, ow, then each array's (plane, row) element strides] for maxpool.py."""
    st = [s // a.itemsize for a in planes for s in a.strides[:2]]
    return np.array([oh, ow, *st], np.int64)


def _pool2x2_fn(dt, grad):
    from graphc.backend.llvm.maxpool import load_maxpool2x2
    proto = ctypes.CFUNCTYPE(None, _L, _L, _P, *[_P] * (4 if grad else 2))
    return proto(load_maxpool2x2(dt, grad))


def _run_planes(fn, planes, size, *args):
    """fn(lo, hi, *args) over planes [0, planes), split across the kernel threads when the
    input has ``size`` >= _COPY_PARALLEL_MIN elements (a memory-bound pass, like a copy)."""
    if size >= _COPY_PARALLEL_MIN:
        _in_threads(fn, planes, *args)
    else:
        fn(0, planes, *args)


def _pool_step(node, ins, outs, reuse):
    op: Pool = node.op
    dt = node.outputs[0].dtype
    if not _simple_max_pool(op) or dt not in _FLOATS or node.inputs[0].dtype != dt:
        return None
    if op.ws == (2, 2):
        return _pool2x2_step(node, ins, outs, reuse)
    k_rows, k_cols = _kernel(_max_spec(dt, op.ws[0])), _kernel(_max_spec(dt, op.ws[1]))
    npdt = np.dtype(dt)
    bufs = _Buffers(1, reuse)
    scratch = []

    def step():
        x = ins[0][0]
        hw = _out_hw(op, x)
        if hw is None:
            op.perform(node, [x], outs)
            return
        oh, ow = hw
        lead = x.shape[:-2]
        shape = lead + (oh, ow * op.ws[1])
        if not scratch or scratch[0].shape != shape:
            scratch[:] = [hugemem.empty(shape, npdt)]
        rows = scratch[0]
        k_rows(_cell_views(x, op.ws, oh, ow, cols=False), [rows])
        out = bufs.get(0, lead + (oh, ow), npdt)
        k_cols(_cell_views(rows, (1, op.ws[1]), 1, ow, rows=False), [out])
        outs[0][0] = out
    return step


def _pool2x2_step(node, ins, outs, reuse):
    """2x2 windows: the kernel of graphc/backend/llvm/maxpool.py (one pass, wide loads)."""
    op: Pool = node.op
    dt = node.outputs[0].dtype
    fn = _pool2x2_fn(dt, False)
    npdt = np.dtype(dt)
    bufs = _Buffers(1, reuse)

    def step():
        x = ins[0][0]
        hw = _out_hw(op, x)
        if hw is None:
            op.perform(node, [x], outs)
            return
        oh, ow = hw
        out = bufs.get(0, x.shape[:-2] + (oh, ow), npdt)
        xp, op_ = _planes(x), out.reshape((-1, oh, ow))
        meta = _plane_meta(oh, ow, xp, op_)
        _run_planes(fn, xp.shape[0], x.size, meta.ctypes.data, xp.ctypes.data, op_.ctypes.data)
        outs[0][0] = out
    return step


def _max_pool_grad_step(node, ins, outs, reuse):
    op: MaxPoolGrad = node.op
    dt = node.outputs[0].dtype
    if type(op) is not MaxPoolGrad or not _simple_max_pool(op) or dt not in _FLOATS or \
            any(v.dtype != dt for v in node.inputs):
        return None
    pool2x2 = _pool2x2_fn(dt, True) if op.ws == (2, 2) else None
    k_grad = None if pool2x2 else _kernel(_max_grad_spec(dt, op.ws[0] * op.ws[1]))
    npdt = np.dtype(dt)
    bufs = _Buffers(1, reuse)
    wh, ww = op.ws

    def step():
        vals = [c[0] for c in ins]
        x, maxout, gz = vals
        hw = _out_hw(op, x)
        if hw is None:
            op.perform(node, vals, outs)
            return
        oh, ow = hw
        op._check_shape(node, vals, gz, x.shape[:-2] + (oh, ow), "the output gradient")
        if maxout.shape != gz.shape:
            op.perform(node, vals, outs)    # the reference's broadcasting, or its error
            return
        gx = bufs.get(0, x.shape, npdt)
        if x.shape[-2] != oh * wh or x.shape[-1] != ow * ww:
            gx[..., oh * wh:, :] = 0        # cells in no window (ignore_border=True)
            gx[..., :, ow * ww:] = 0
        if pool2x2 is not None:
            planes = [_planes(x), _planes(maxout), _planes(gz), gx.reshape((-1,) + x.shape[-2:])]
            meta = _plane_meta(oh, ow, *planes)
            _run_planes(pool2x2, planes[0].shape[0], x.size, meta.ctypes.data,
                        *[a.ctypes.data for a in planes])
        else:
            # nthreads=1: the kernel is memory-bound (a compare and a multiply per cell),
            # which the backend's cost model, counting ops, would put on threads
            k_grad(_cell_views(x, op.ws, oh, ow) + [maxout, gz],
                   _cell_views(gx, op.ws, oh, ow), nthreads=1)
        outs[0][0] = gx
    return step


STEP_MAKERS.update({
    SoftmaxCrossentropy: _xent_step,
    SoftmaxCrossentropyGrad: _xent_grad_step,
    SoftmaxCrossentropyWithGrad: _xent_with_grad_step,
    Pool: _pool_step,
    MaxPoolGrad: _max_pool_grad_step,
})
