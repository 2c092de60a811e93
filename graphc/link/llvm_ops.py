"""Native steps for the nnet ops: softmax cross-entropy, 2-d convolution, max pooling.

Each maker has the signature of ``graphc.link.llvm.STEP_MAKERS`` (node, input cells, output
cells, reuse) -> zero-argument step, or None to leave the node to its numpy ``perform``.
A step runs the same checks as ``perform`` (same errors, same messages) and then:

- SoftmaxCrossentropy: four LLVM kernels (row max; e = exp(z - max); row sum of e;
  e / sum), the per-row nll from n-vectors in numpy.
- SoftmaxCrossentropyGrad: dnll * sm into a kept buffer, then the n label entries.
- Conv2d / Conv2dGradInputs / Conv2dGradWeights: the numpy im2col + BLAS code of
  graphc.tensor.nnet.conv with its scratch arrays and result kept across calls (fresh
  multi-MB arrays cost page faults as large as the copies that fill them).
- Pool / MaxPoolGrad, 2-d, mode 'max', windows that tile the input (stride == ws, no
  padding): elementwise kernels over the per-offset strided views (see below).  Other
  pooling geometries, and a partial edge window (ignore_border=False), run ``perform``.

Kernels are built as KernelSpecs (graphc.backend.kernel_spec) and compiled by
graphc.backend.llvm.compile_kernel, which memoizes them per spec.
"""
from __future__ import annotations

import numpy as np

from graphc.backend.kernel_spec import KernelSpec
from graphc.link.llvm import STEP_MAKERS, _Buffers
from graphc.tensor.nnet.conv import (Conv2d, Conv2dGradInputs, Conv2dGradWeights,
                                     conv2d_forward, conv2d_grad_inputs, conv2d_grad_weights)
from graphc.tensor.nnet.xent import SoftmaxCrossentropy, SoftmaxCrossentropyGrad
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


def _xent_step(node, ins, outs, reuse):
    op: SoftmaxCrossentropy = node.op
    dt = node.outputs[0].dtype
    if dt not in _FLOATS or node.inputs[0].dtype != dt:
        return None
    k_max, k_exp, k_sum, k_div = (_kernel(s) for s in _xent_specs(dt, op.has_bias))
    npdt = np.dtype(dt)
    bufs = _Buffers(2, reuse)
    scratch = {}

    def work(key, shape):
        a = scratch.get(key)
        if a is None or a.shape != shape:
            a = scratch[key] = np.empty(shape, npdt)
        return a

    def step():
        vals = [c[0] for c in ins]
        x, y = vals[0], vals[-1]
        if x.size == 0:
            op.perform(node, vals, outs)
            return
        op.check(node, vals)
        n, k = x.shape
        zs = [x, vals[1][None, :]] if op.has_bias else [x]
        m, total, e = work("m", (n,)), work("s", (n,)), work("e", (n, k))
        k_max(zs, [m])
        k_exp(zs + [m[:, None]], [e])
        k_sum([e], [total])
        sm = bufs.get(1, (n, k), npdt)
        k_div([e, total[:, None]], [sm])
        rows = np.arange(n)
        picked = x[rows, y] + vals[1][y] if op.has_bias else x[rows, y]
        nll = bufs.get(0, (n,), npdt)
        np.log(total, out=nll)
        nll -= picked - m                   # the reference's s[rows, y], s = z - max
        outs[0][0], outs[1][0] = nll, sm
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
        # numpy's multiply by a broadcast column beat the kernel here (60 vs 99 us for a
        # (256, 1000) float32 matrix: the kernel reloads the stride-0 operand)
        np.multiply(sm, dnll[:, None], out=dx)
        rows = np.arange(sm.shape[0])
        dx[rows, y] -= dnll if dnll.shape[0] == sm.shape[0] else dnll[0]
        outs[0][0] = dx
    return step


# --------------------------------------------------------------------------- convolution
def _conv_step(fn, out_shape):
    """A maker running ``fn`` (a numpy conv function of graphc.tensor.nnet.conv) with a
    workspace and a result buffer kept across calls; ``out_shape(op, args)`` sizes the
    result."""
    def make(node, ins, outs, reuse):
        op = node.op
        dt = node.outputs[0].dtype
        if dt not in _FLOATS or any(v.dtype != dt for v in node.inputs[:2]):
            return None
        npdt = np.dtype(dt)
        bufs = _Buffers(1, reuse)
        ws = {}

        def step():
            args = op.checked_args(node, [c[0] for c in ins])
            out = bufs.get(0, out_shape(op, args), npdt)
            outs[0][0] = fn(*args, ws=ws, out=out)
        return step
    return make


def _conv_out(op, args):
    img, kern = args[:2]
    return (img.shape[0], kern.shape[0], *op._out_spatial(img.shape, kern.shape))


def _grad_inputs_out(op, args):
    kern, topgrad, hw = args[:3]
    return (topgrad.shape[0], kern.shape[1] * op.num_groups) + tuple(hw)


def _grad_weights_out(op, args):
    img, topgrad, khw = args[:3]
    return (topgrad.shape[1], img.shape[1] // op.num_groups) + tuple(khw)


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


def _pool_step(node, ins, outs, reuse):
    op: Pool = node.op
    dt = node.outputs[0].dtype
    if not _simple_max_pool(op) or dt not in _FLOATS or node.inputs[0].dtype != dt:
        return None
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
            scratch[:] = [np.empty(shape, npdt)]
        rows = scratch[0]
        k_rows(_cell_views(x, op.ws, oh, ow, cols=False), [rows])
        out = bufs.get(0, lead + (oh, ow), npdt)
        k_cols(_cell_views(rows, (1, op.ws[1]), 1, ow, rows=False), [out])
        outs[0][0] = out
    return step


def _max_pool_grad_step(node, ins, outs, reuse):
    op: MaxPoolGrad = node.op
    dt = node.outputs[0].dtype
    if type(op) is not MaxPoolGrad or not _simple_max_pool(op) or dt not in _FLOATS or \
            any(v.dtype != dt for v in node.inputs):
        return None
    k_grad = _kernel(_max_grad_spec(dt, op.ws[0] * op.ws[1]))
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
        # nthreads=1: the kernel is memory-bound (a compare and a multiply per cell), which
        # the backend's cost model, counting ops, would put on threads
        k_grad(_cell_views(x, op.ws, oh, ow) + [maxout, gz], _cell_views(gx, op.ws, oh, ow),
               nthreads=1)
        outs[0][0] = gx
    return step


STEP_MAKERS.update({
    SoftmaxCrossentropy: _xent_step,
    SoftmaxCrossentropyGrad: _xent_grad_step,
    Conv2d: _conv_step(conv2d_forward, _conv_out),
    Conv2dGradInputs: _conv_step(conv2d_grad_inputs, _grad_inputs_out),
    Conv2dGradWeights: _conv_step(conv2d_grad_weights, _grad_weights_out),
    Pool: _pool_step,
    MaxPoolGrad: _max_pool_grad_step,
})
