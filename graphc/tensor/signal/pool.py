"""Pooling over the last 2 (or 3) dimensions with Theano 1.0's semantics (``pool_2d``).

Ops (window size ``ws``, ``stride``, ``pad`` and ``mode`` are static parameters)::

    Pool(x)                          -> out
    MaxPoolGrad(x, out, gz)          -> gx     (mode 'max')
    AveragePoolGrad(x, gz)           -> gx     (modes 'sum', 'average_inc_pad', 'average_exc_pad')
    MaxPoolGradGrad(x, out, ggx)     -> ggz    (the gradient of MaxPoolGrad w.r.t. gz)

Window k along one dim covers [k*stride, k*stride + ws) of the input padded by ``pad`` on
both sides.  Padding never wins a max and adds nothing to a sum; the modes differ in the
divisor: 'sum' none, 'average_exc_pad' the number of real input cells in the window,
'average_inc_pad' the window size (padding counts as zeros).  With ``ignore_border=False``
(Theano's default, which requires pad == 0) a partial window at the bottom/right edge is
kept and pooled over the cells it has; its average divides by that count.

The max gradient follows Theano: every cell of a window equal to the window's max gets that
window's gradient, so tied maxima each receive the full gradient.

The numpy references loop over the prod(ws) offsets inside a window, each step one
vectorized operation over all outputs (strided slices), never over pixels.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np

from graphc.graph.basic import Apply, Op
from graphc.tensor.elemwise import describe, describe_values, shape_error
from graphc.tensor.type import TensorType, is_float
from graphc.tensor.var import as_tensor_variable

MODES = ("max", "sum", "average_inc_pad", "average_exc_pad")


def pool_out_len(n, ws, stride, pad, ignore_border):
    """Theano's Pool.out_shape for one dim (n an int, or a symbolic int64 scalar)."""
    from graphc.graph.basic import Variable
    sym = isinstance(n, Variable)
    v = n + 2 * pad
    if ignore_border:
        out = (v - ws) // stride + 1
        if sym:
            from graphc.tensor.math import maximum
            return maximum(out, 0)
        return max(out, 0)
    if stride >= ws:
        return (v - 1) // stride + 1
    if sym:
        from graphc.tensor.math import maximum
        return maximum((v - 1 - ws + stride) // stride, 0) + 1
    return max((v - 1 - ws + stride) // stride, 0) + 1


def _lowest(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return -np.inf
    if dtype.kind == "b":
        return False
    return np.iinfo(dtype).min


class _Geometry:
    """Where the windows of one call lie: a buffer holding the (padded) input and enough
    fill cells that every window is complete, and the per-offset strided slices."""

    def __init__(self, op, spatial):
        self.nd = op.ndim
        self.spatial = tuple(spatial)
        self.out = tuple(pool_out_len(n, w, s, p, op.ignore_border)
                         for n, w, s, p in zip(spatial, op.ws, op.stride, op.pad))
        self.buf = tuple(max((o - 1) * s + w, n + 2 * p) if o > 0 else n + 2 * p
                         for o, n, w, s, p in zip(self.out, spatial, op.ws, op.stride, op.pad))
        self.inner = tuple(slice(p, p + n) for p, n in zip(op.pad, spatial))
        self.ws, self.stride, self.pad = op.ws, op.stride, op.pad

    def empty(self):
        return any(o <= 0 for o in self.out)

    def padded(self, x, fill):
        lead = x.shape[:x.ndim - self.nd]
        if self.buf == self.spatial:
            return x
        b = np.full(lead + self.buf, fill, dtype=x.dtype)
        b[(Ellipsis,) + self.inner] = x
        return b

    def windows(self):
        """For every offset inside a window, the slices picking that cell of all windows."""
        for off in itertools.product(*[range(w) for w in self.ws]):
            yield (Ellipsis,) + tuple(slice(o, o + s * (n - 1) + 1, s)
                                      for o, s, n in zip(off, self.stride, self.out))

    def divisor(self, mode):
        """Per-output divisor (broadcastable over the leading dims), or None for 'sum'.
        With ignore_border every window lies inside the padded input, so the
        'average_inc_pad' count is the window size."""
        if mode == "sum":
            return None
        counts = []
        for d in range(self.nd):
            start = np.arange(self.out[d]) * self.stride[d]
            end = start + self.ws[d]
            if mode == "average_exc_pad":
                lo, hi = self.pad[d], self.pad[d] + self.spatial[d]
            else:
                lo, hi = 0, self.spatial[d] + 2 * self.pad[d]
            counts.append(np.minimum(end, hi) - np.maximum(start, lo))
        div = counts[0]
        for c in counts[1:]:
            div = np.multiply.outer(div, c)
        return div


class PoolBase(Op):
    __props__ = ("ws", "ignore_border", "stride", "pad", "mode", "ndim")

    def __init__(self, ws, ignore_border=False, stride=None, pad=None, mode="max", ndim=2):
        if mode == "max_deterministic":  # Theano's GPU-only variant: same values
            mode = "max"
        if mode not in MODES:
            raise ValueError(f"Pool mode parameter only supports 'max', 'sum', "
                             f"'average_inc_pad' and 'average_exc_pad'; got {mode!r}")
        self.ndim = int(ndim)
        self.ws = self._tuple(ws, "ws")
        self.stride = self.ws if stride is None else self._tuple(stride, "stride")
        self.pad = (0,) * self.ndim if pad is None else self._tuple(pad, "pad", low=0)
        self.ignore_border = bool(ignore_border)
        self.mode = mode
        if any(self.pad) and not self.ignore_border:
            raise NotImplementedError("pool: padding works only with ignore_border=True")
        if any(p >= w for p, w in zip(self.pad, self.ws)):
            raise NotImplementedError(f"pool: padding {self.pad} must be smaller than the "
                                      f"window size {self.ws}")

    def _tuple(self, v, name, low=1):
        from graphc.graph.basic import Variable
        if isinstance(v, Variable):
            from graphc.graph.basic import Constant
            if not isinstance(v, Constant):
                raise TypeError(f"pool: graphc needs {name} as ints, got the symbolic {v}")
            v = np.asarray(v.data).tolist()
        if isinstance(v, (int, np.integer)):
            v = (v,) * self.ndim
        v = tuple(int(a) for a in v)
        if len(v) != self.ndim or min(v) < low:
            raise ValueError(f"pool: {name} must be {self.ndim} ints >= {low}, got {v}")
        return v

    def __str__(self):
        s = f"{type(self).__name__}{{{self.mode}, ws={self.ws}"
        if self.stride != self.ws:
            s += f", stride={self.stride}"
        if any(self.pad):
            s += f", pad={self.pad}"
        return s + f", ignore_border={self.ignore_border}}}"

    def _params(self):
        return dict(ws=self.ws, ignore_border=self.ignore_border, stride=self.stride,
                    pad=self.pad, mode=self.mode, ndim=self.ndim)

    def _check_ndim(self, x):
        if x.ndim < self.ndim:
            raise TypeError(f"{self}: the input needs at least {self.ndim} dims, got {x.type}")

    def _out_type(self, x):
        shape = list(x.type.shape)
        for d in range(self.ndim):
            k = x.ndim - self.ndim + d
            if shape[k] is not None:
                shape[k] = pool_out_len(shape[k], self.ws[d], self.stride[d], self.pad[d],
                                        self.ignore_border)
        return TensorType(x.dtype, shape=tuple(shape))

    def _geometry(self, x):
        return _Geometry(self, x.shape[x.ndim - self.ndim:])

    def _check_shape(self, node, inputs, value, expected, what):
        if value.shape != tuple(expected):
            raise shape_error(self, describe_values(inputs),
                              f"{what} has shape {value.shape}, expected {tuple(expected)}",
                              getattr(node.tag, "trace", []))


class Pool(PoolBase):
    """Max / sum / average pooling over the last ``ndim`` dims."""

    def make_node(self, x):
        x = as_tensor_variable(x)
        self._check_ndim(x)
        return Apply(self, [x], [self._out_type(x)()])

    def perform(self, node, inputs, output_storage):
        (x,) = inputs
        geo = self._geometry(x)
        lead = x.shape[:x.ndim - self.ndim]
        out_dtype = node.outputs[0].type.numpy_dtype
        if geo.empty():
            output_storage[0][0] = np.empty(lead + tuple(max(o, 0) for o in geo.out), out_dtype)
            return
        if self.mode == "max":
            buf = geo.padded(x, _lowest(x.dtype))
            acc = None
            for sl in geo.windows():
                acc = buf[sl].copy() if acc is None else np.maximum(acc, buf[sl], out=acc)
        else:
            buf = geo.padded(x, 0)
            acc = np.zeros(lead + geo.out, dtype=np.result_type(x.dtype, np.float32)
                           if self.mode != "sum" else x.dtype)
            for sl in geo.windows():
                acc += buf[sl]
            div = geo.divisor(self.mode)
            if div is not None:
                acc = acc / div
        output_storage[0][0] = np.asarray(acc, dtype=out_dtype)

    def infer_shape(self, node, shapes):
        shp = list(shapes[0])
        for d in range(self.ndim):
            k = len(shp) - self.ndim + d
            shp[k] = pool_out_len(shp[k], self.ws[d], self.stride[d], self.pad[d],
                                  self.ignore_border)
        return [tuple(shp)]

    def L_op(self, inputs, outputs, output_grads):
        (x,), (out,), (gz,) = inputs, outputs, output_grads
        if not is_float(x.dtype):
            from graphc.gradient import zeros_grad
            return [zeros_grad(x)]
        if self.mode == "max":
            return [MaxPoolGrad(**self._params())(x, out, gz)]
        return [AveragePoolGrad(**self._params())(x, gz)]

    @staticmethod
    def out_shape(imgshape, ws, ignore_border=False, stride=None, pad=None, ndim=2):
        """Theano's static helper: the output shape for an input shape (ints)."""
        stride = ws if stride is None else stride
        pad = (0,) * ndim if pad is None else pad
        lead = list(imgshape[:-ndim])
        return lead + [pool_out_len(n, w, s, p, ignore_border) for n, w, s, p in
                       zip(imgshape[-ndim:], ws, stride, pad)]


def _pool_inputs(op, x, *others):
    x = as_tensor_variable(x)
    op._check_ndim(x)
    others = [as_tensor_variable(o) for o in others]
    for o in others:
        if o.ndim != x.ndim:
            raise shape_error(op, describe([x] + others), "all inputs need the same ndim")
    return x, others


class MaxPoolGrad(PoolBase):
    """gx[cell] = sum over the windows whose max equals x[cell] of that window's gz."""

    def __init__(self, ws, ignore_border=False, stride=None, pad=None, mode="max", ndim=2):
        super().__init__(ws, ignore_border, stride, pad, mode, ndim)
        if self.mode != "max":
            raise ValueError(f"MaxPoolGrad handles mode 'max' only, got {self.mode!r}")

    def make_node(self, x, maxout, gz):
        x, (maxout, gz) = _pool_inputs(self, x, maxout, gz)
        return Apply(self, [x, maxout, gz], [x.type()])

    def perform(self, node, inputs, output_storage):
        x, maxout, gz = inputs
        geo = self._geometry(x)
        if geo.empty():
            output_storage[0][0] = np.zeros_like(x)
            return
        lead = x.shape[:x.ndim - self.ndim]
        self._check_shape(node, inputs, gz, lead + geo.out, "the output gradient")
        buf = geo.padded(x, _lowest(x.dtype))
        gbuf = np.zeros(buf.shape, dtype=gz.dtype)
        tmp = np.empty(maxout.shape, dtype=gz.dtype)
        for sl in geo.windows():
            # in place: 1 where the cell equals its window's max, times gz (no temporaries)
            np.equal(buf[sl], maxout, out=tmp, casting="unsafe")
            tmp *= gz
            gbuf[sl] += tmp
        output_storage[0][0] = np.ascontiguousarray(gbuf[(Ellipsis,) + geo.inner],
                                                    dtype=x.dtype)

    def infer_shape(self, node, shapes):
        return [shapes[0]]

    def L_op(self, inputs, outputs, output_grads):
        from graphc.gradient import zeros_grad
        x, maxout, gz = inputs
        (ggx,) = output_grads
        ggz = MaxPoolGradGrad(**self._params())(x, maxout, ggx)
        return [zeros_grad(x), zeros_grad(maxout), ggz]


class MaxPoolGradGrad(MaxPoolGrad):
    """ggz[window] = sum of ggx over the cells of the window equal to its max."""

    def make_node(self, x, maxout, ggx):
        x, (maxout, ggx) = _pool_inputs(self, x, maxout, ggx)
        return Apply(self, [x, maxout, ggx], [maxout.type()])

    def perform(self, node, inputs, output_storage):
        x, maxout, ggx = inputs
        geo = self._geometry(x)
        self._check_shape(node, inputs, ggx, x.shape, "the input gradient")
        if geo.empty():
            output_storage[0][0] = np.zeros_like(maxout)
            return
        buf = geo.padded(x, _lowest(x.dtype))
        gbuf = geo.padded(ggx, 0)
        acc = np.zeros(maxout.shape, dtype=ggx.dtype)
        tmp = np.empty(maxout.shape, dtype=ggx.dtype)
        for sl in geo.windows():
            np.equal(buf[sl], maxout, out=tmp, casting="unsafe")
            tmp *= gbuf[sl]
            acc += tmp
        output_storage[0][0] = acc.astype(maxout.dtype, copy=False)

    def infer_shape(self, node, shapes):
        return [shapes[1]]

    def L_op(self, inputs, outputs, output_grads):
        from graphc.gradient import zeros_grad
        x, maxout, ggx = inputs
        (gggz,) = output_grads
        return [zeros_grad(x), zeros_grad(maxout), MaxPoolGrad(**self._params())(x, maxout, gggz)]


class AveragePoolGrad(PoolBase):
    """The adjoint of sum / average pooling: each window spreads gz / divisor over its
    real input cells."""

    def __init__(self, ws, ignore_border=False, stride=None, pad=None, mode="average_inc_pad",
                 ndim=2):
        super().__init__(ws, ignore_border, stride, pad, mode, ndim)
        if self.mode == "max":
            raise ValueError("AveragePoolGrad handles the sum and average modes, not 'max'")

    def make_node(self, x, gz):
        x, (gz,) = _pool_inputs(self, x, gz)
        return Apply(self, [x, gz], [x.type()])

    def perform(self, node, inputs, output_storage):
        x, gz = inputs
        geo = self._geometry(x)
        if geo.empty():
            output_storage[0][0] = np.zeros_like(x)
            return
        lead = x.shape[:x.ndim - self.ndim]
        self._check_shape(node, inputs, gz, lead + geo.out, "the output gradient")
        div = geo.divisor(self.mode)
        g = gz if div is None else gz / div
        gbuf = np.zeros(lead + geo.buf, dtype=g.dtype)
        for sl in geo.windows():
            gbuf[sl] += g
        output_storage[0][0] = np.ascontiguousarray(gbuf[(Ellipsis,) + geo.inner],
                                                    dtype=x.dtype)

    def infer_shape(self, node, shapes):
        return [shapes[0]]

    def L_op(self, inputs, outputs, output_grads):
        from graphc.gradient import zeros_grad
        x, gz = inputs
        (ggx,) = output_grads
        return [zeros_grad(x), Pool(**self._params())(ggx)]


# --------------------------------------------------------------------------- user functions
def _renamed(new, new_name, old, old_name, default=None):
    if old is None:
        return new
    if new is not None and new != default:
        raise ValueError(f"You can't provide a value to both '{new_name}' and '{old_name}'. "
                         f"Please provide a value only to '{new_name}'.")
    warnings.warn(f"DEPRECATION: the '{old_name}' parameter is deprecated, use '{new_name}' "
                  f"instead", DeprecationWarning, stacklevel=4)
    return old


def _pool_nd(nd, name, input, ws, ignore_border, stride, pad, mode, ds, st, padding):
    ws = _renamed(ws, "ws", ds, "ds")
    if ws is None:
        raise ValueError(f"{name}: you must provide a tuple value for the window size (ws)")
    stride = _renamed(stride, "stride", st, "st")
    pad = _renamed(pad, "pad", padding, "padding", default=(0,) * nd)
    input = as_tensor_variable(input)
    if input.ndim < nd:
        raise NotImplementedError(f"{name} requires a dimension >= {nd}, got {input.type}")
    if ignore_border is None:
        warnings.warn(f"{name}() will have the parameter ignore_border default value changed to "
                      f"True (currently False). To have consistent behavior with all Theano "
                      f"versions, explicitly add the parameter ignore_border=True.", stacklevel=3)
        ignore_border = False
    return Pool(ws, ignore_border, stride, pad, mode, ndim=nd)(input)


def pool_2d(input, ws=None, ignore_border=None, stride=None, pad=(0, 0), mode="max",
            ds=None, st=None, padding=None):
    """Pool the last 2 dims of ``input`` (Theano 1.0's signature; ``ds``, ``st`` and
    ``padding`` are the deprecated names of ``ws``, ``stride`` and ``pad``)."""
    return _pool_nd(2, "pool_2d", input, ws, ignore_border, stride, pad, mode, ds, st, padding)


def pool_3d(input, ws=None, ignore_border=None, stride=None, pad=(0, 0, 0), mode="max",
            ds=None, st=None, padding=None):
    """Pool the last 3 dims of ``input`` (Theano 1.0's signature)."""
    return _pool_nd(3, "pool_3d", input, ws, ignore_border, stride, pad, mode, ds, st, padding)


def max_pool_2d_same_size(input, patch_size):
    """Keep each non-overlapping patch's max in place and zero the rest (same shape)."""
    input = as_tensor_variable(input)
    out = Pool(patch_size, True, ndim=2)(input)
    return MaxPoolGrad(patch_size, True, ndim=2)(input, out, out)
