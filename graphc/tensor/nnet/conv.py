"""2-d convolution with Theano 1.0's semantics (``T.nnet.conv2d``) and its two gradients.

Three ops; each one's gradient is expressed with the other two, so gradients of any order
stay inside this closed set::

    Conv2d(img, kern)                      -> out   (B, O, oh, ow)
    Conv2dGradInputs(kern, topgrad, hw)    -> dimg  (B, C, h, w)      transposed convolution
    Conv2dGradWeights(img, topgrad, khw)   -> dkern (O, C/G, kh, kw)

The input orders are those of Theano's AbstractConv2d / _gradInputs / _gradWeights.  The
shape inputs (``hw``, ``khw``: int64 vectors of length 2) are needed because with strides
the output size does not determine the input size.

Definition (G = num_groups, Og = O / G, Cg = C / G, o in group g = o // Og)::

    out[b, o, y, x] = sum_{c < Cg, i, j} P[b, g*Cg + c, y*sh + i*dh, x*sw + j*dw] * K[o, c, i, j]

where P is the input zero-padded by the border mode and K is the filter, flipped in both
spatial dimensions when ``filter_flip`` (a true convolution, Theano's default; False gives
cross-correlation).  Padding per side: 'valid' 0, 'full' d*(k-1), 'half' d*(k//2), an int p,
a pair (ph, pw), or a pair of pairs ((top, bottom), (left, right)).  Output size per dim:
``(n + pad_lo + pad_hi - d*(k-1) - 1) // s + 1``.

The numpy references use im2col: one strided view of the padded input, one copy into
patch matrices (per group (Cg*kh*kw, N) with N the output positions of the whole batch, or
per image and group (Cg*kh*kw, oh*ow): see _im2col) and one (batched) matmul (BLAS).  The
transposed direction scatters the columns back with kh*kw vectorized slice-adds (col2im).
Backend steps may pass a workspace dict and an output array so that scratch arrays and
results are kept across calls; the workspace may also carry a backend's "copy", "split"
(blocks of images) and "col2im" functions, which may run on threads.
"""
from __future__ import annotations

import warnings

import numpy as np
from numpy.lib.stride_tricks import as_strided

from graphc.graph.basic import Apply, Constant, Op
from graphc.tensor.basic import as_shape_vector, cast, shape_i, static_values
from graphc.tensor.elemwise import describe, describe_values, shape_error
from graphc.tensor.type import TensorType, is_float, upcast
from graphc.tensor.var import as_tensor_variable


# --------------------------------------------------------------------------- parameters
def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        v = (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2 or min(v) < 1:
        raise ValueError(f"conv2d: {name} must be a pair of positive ints, got {v}")
    return v


def normalize_border_mode(mode):
    """'valid' | 'full' | 'half' | (ph, pw) | ((top, bottom), (left, right))."""
    if isinstance(mode, str):
        if mode not in ("valid", "full", "half"):
            raise ValueError(f"conv2d: invalid border_mode {mode!r}; use 'valid', 'full', "
                             f"'half', an int, a pair of ints or a pair of (lo, hi) pairs")
        return mode
    if isinstance(mode, (int, np.integer)):
        mode = (mode, mode)
    if not isinstance(mode, (tuple, list)) or len(mode) != 2:
        raise ValueError(f"conv2d: invalid border_mode {mode!r}")
    pads = []
    for p in mode:
        if isinstance(p, (int, np.integer)):
            pads.append((int(p), int(p)))
        elif isinstance(p, (tuple, list)) and len(p) == 2:
            pads.append((int(p[0]), int(p[1])))
        else:
            raise ValueError(f"conv2d: invalid border_mode {mode!r}")
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"conv2d: border_mode padding must be >= 0, got {mode!r}")
    if all(lo == hi for lo, hi in pads):
        return (pads[0][0], pads[1][0])
    return tuple(pads)


def border_pads(border_mode, kh, kw, dilation):
    """((top, bottom), (left, right)); kh/kw may be ints or symbolic int64 scalars."""
    dh, dw = dilation
    if border_mode == "valid":
        return ((0, 0), (0, 0))
    if border_mode == "full":
        ph, pw = dh * (kh - 1), dw * (kw - 1)
    elif border_mode == "half":
        ph, pw = dh * (kh // 2), dw * (kw // 2)
    elif isinstance(border_mode[0], tuple):
        return border_mode
    else:
        ph, pw = border_mode
    return ((ph, ph), (pw, pw))


def conv_out_len(n, k, pad, s, d):
    """Output length of one spatial dim (ints or symbolic; None when unknown)."""
    if n is None or k is None:
        return None
    return (n + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


def get_conv_output_shape(image_shape, kernel_shape, border_mode, subsample,
                          filter_dilation=None):
    """Theano's helper: the 4-d output shape, with None where an input size is unknown."""
    border_mode = normalize_border_mode(border_mode)
    filter_dilation = (1, 1) if filter_dilation is None else filter_dilation
    b, o = image_shape[0], kernel_shape[0]
    kh, kw = kernel_shape[-2:]
    if kh is None or kw is None:
        return (b, o, None, None)
    pads = border_pads(border_mode, kh, kw, filter_dilation)
    return (b, o) + tuple(conv_out_len(image_shape[2 + i], kernel_shape[2 + i], pads[i],
                                       subsample[i], filter_dilation[i]) for i in range(2))


def _hint(shape):
    """A 4-entry shape hint as a tuple of int | None (symbolic entries carry no info)."""
    if shape is None:
        return None
    if len(shape) != 4:
        raise ValueError(f"conv2d: shape hints need 4 entries, got {shape!r}")
    out = []
    for s in shape:
        if isinstance(s, Constant):
            s = np.asarray(s.data).item()
        out.append(int(s) if isinstance(s, (int, np.integer)) else None)
    return tuple(out)


# --------------------------------------------------------------------------- numpy kernels
# Two patch layouts.  Batch-last: per group one (Cg*kh*kw, oh*ow*B) matrix copied from a
# batch-last copy of the input, so the im2col copy moves runs of ow*B values; the product
# (Og, oh*ow*B) then needs a gather back to (B, O, oh, ow).  Batch-major: per image and group
# a (Cg*kh*kw, oh*ow) matrix (runs of ow values), whose product with the filters is
# (Og, oh*ow): the NCHW result itself, written by the matmul with no transpose (and the weight
# gradient's products take the output gradient as it is).  Small feature maps (LeNet's second
# layer: ow = 8) take the batch-last order, where it made the im2col copy ~5x cheaper; wide
# ones (LeNet's first layer) the batch-major one, which saves two passes over the
# (B, O, oh, ow) arrays (~1.5x faster forward and weight gradient, measured).
_BATCH_LAST_BELOW = 16


def _batch_last_order(ow):
    return ow < _BATCH_LAST_BELOW


def _scratch(ws, key, shape, dtype):
    """An uninitialized array; with a workspace dict ``ws`` (kept by a backend step across
    calls) the same array comes back while the shape holds.  Fresh multi-MB arrays cost
    page faults on first touch, as much as the copy that fills them."""
    if ws is None:
        return np.empty(shape, dtype)
    a = ws.get(key)
    if a is None or a.shape != shape or a.dtype != dtype:
        a = ws[key] = np.empty(shape, dtype)
    return a


def _copy(ws, dst, src):
    """dst[...] = src; through the workspace's "copy" function when a backend gave one (it
    may split the copy across threads)."""
    copy = ws.get("copy") if ws is not None else None
    if copy is None:
        np.copyto(dst, src, casting="unsafe")
    else:
        copy(dst, src)


def _batches(ws, n, fn, size):
    """fn(lo, hi) over the images [0, n), which touches arrays of ``size`` elements in all;
    through the workspace's "split" function when a backend gave one (it may run blocks of
    images on threads)."""
    split = ws.get("split") if ws is not None else None
    if split is None:
        fn(0, n)
    else:
        split(fn, n, size)


def _padded(img, pads, batch_last, ws=None):
    """The zero-padded input; C-contiguous (C, h, w, B) if batch_last, else (B, C, h, w)."""
    (t, b), (l, r) = pads
    if not batch_last and t == b == l == r == 0:
        return img
    B, C, H, W = img.shape
    shape = (C, H + t + b, W + l + r, B) if batch_last else (B, C, H + t + b, W + l + r)
    out = _scratch(ws, "padded", shape, img.dtype)
    if t or b or l or r:
        out.fill(0)
    if batch_last:
        _copy(ws, out[:, t: t + H, l: l + W], img.transpose(1, 2, 3, 0))
    else:
        _copy(ws, out[:, :, t: t + H, l: l + W], img)
    return out


def _im2col(xp, kh, kw, oh, ow, subsample, dilation, groups, batch_last, ws=None):
    """Patches of the padded input ``xp`` from _padded (one copy): (G, Cg*kh*kw, N) with N
    over (oh, ow, B) if batch_last, else (B, G, Cg*kh*kw, oh*ow)."""
    view, cols = _patches(xp, kh, kw, oh, ow, subsample, dilation, groups, batch_last, ws)
    _copy(ws, cols, view)
    return _cols_matrices(cols, batch_last)


def _patches(xp, kh, kw, oh, ow, subsample, dilation, groups, batch_last, ws=None):
    """(strided view of the patches, the scratch array they are copied into) for _im2col."""
    if batch_last:
        C, B = xp.shape[0], xp.shape[3]
        sc, sy, sx, sb = xp.strides
    else:
        B, C = xp.shape[:2]
        sb, sc, sy, sx = xp.strides
    cg = C // groups
    shape = (groups, cg, kh, kw)
    strides = (cg * sc, sc, dilation[0] * sy, dilation[1] * sx)
    rows, rs = (oh, ow), (subsample[0] * sy, subsample[1] * sx)
    if batch_last:
        shape, strides = shape + rows + (B,), strides + rs + (sb,)
    else:
        shape, strides = (B,) + shape + rows, (sb,) + strides + rs
    view = as_strided(xp, shape, strides, writeable=False)
    return view, _scratch(ws, "cols", shape, xp.dtype)


def _cols_matrices(cols, batch_last):
    """The patch array of _im2col as its (batched) matrices."""
    if batch_last:
        G, cg, kh, kw, oh, ow, B = cols.shape
        return cols.reshape(G, cg * kh * kw, oh * ow * B)
    B, G, cg, kh, kw, oh, ow = cols.shape
    return cols.reshape(B, G, cg * kh * kw, oh * ow)


def _group_rows(topgrad, groups, ws=None):
    """(B, O, oh, ow) -> (G, Og, N) with N over (oh, ow, B): the batch-last column order."""
    B, O, oh, ow = topgrad.shape
    t = topgrad.reshape(B, groups, O // groups, oh * ow).transpose(1, 2, 3, 0)
    rows = _scratch(ws, "rows", t.shape, topgrad.dtype)
    _copy(ws, rows, t)
    return rows.reshape(groups, O // groups, B * oh * ow)


def _kernel_matrix(kern, groups, flip):
    """(G, Og, Cg*kh*kw), C-contiguous: a flipped filter reshapes to a view with negative
    strides, which numpy's matmul runs without BLAS (~5x slower for LeNet's first layer)."""
    O, cg, kh, kw = kern.shape
    if flip:
        kern = kern[:, :, ::-1, ::-1]
    return np.ascontiguousarray(kern).reshape(groups, O // groups, cg * kh * kw)


def _bmm(a, b, ws=None):
    # a plain 2-d matmul when there is one group: guaranteed to be one BLAS call
    dtype = np.result_type(a.dtype, b.dtype)
    out = _scratch(ws, "prod", (a.shape[0], a.shape[1], b.shape[2]), dtype)
    if a.shape[0] == 1:
        np.matmul(a[0], b[0], out=out[0])
    else:
        np.matmul(a, b, out=out)
    return out


def _result(out, value, dtype, ws=None):
    """``value`` as a C-contiguous array of ``dtype``, written into ``out`` when given."""
    if out is None:
        return np.ascontiguousarray(value, dtype=dtype)
    _copy(ws, out, value)
    return out


def _made_cols(ws, img, pads, geometry):
    """Note what ws["cols"] holds, for conv2d_grad_weights(cols_ws=ws)."""
    if ws is not None:
        kh, kw, oh, ow, subsample, dilation, groups, bl = geometry
        ws["cols_of"] = (img, (kh, kw, oh, ow, pads, subsample, dilation, groups, bl))


def conv2d_forward(img, kern, border_mode, subsample, flip, dilation, groups, ws=None,
                   out=None):
    """``ws``: a workspace dict for scratch arrays kept across calls; ``out``: an array of
    the result's shape and dtype to write into (both optional, for backend steps)."""
    B, C, H, W = img.shape
    O, cg, kh, kw = kern.shape
    pads = border_pads(border_mode, kh, kw, dilation)
    oh = conv_out_len(H, kh, pads[0], subsample[0], dilation[0])
    ow = conv_out_len(W, kw, pads[1], subsample[1], dilation[1])
    bl = _batch_last_order(ow)
    geometry = (kh, kw, oh, ow, subsample, dilation, groups, bl)
    kmat = _kernel_matrix(kern, groups, flip)                         # (G, Og, K)
    if not bl:
        # per image and group (Og, K) @ (K, oh*ow): the rows of the NCHW result.  A block
        # of images copies its patches and multiplies them while they are in cache; blocks
        # go to the backend's threads, if any (OpenBLAS runs products this small on one
        # core).
        view, cols6 = _patches(_padded(img, pads, bl, ws), *geometry, ws)
        cols = _cols_matrices(cols6, bl)
        dtype = np.result_type(kmat.dtype, cols.dtype)
        direct = out is not None and out.dtype == dtype and out.flags.c_contiguous
        res = out if direct else np.empty((B, O, oh, ow), dtype)
        res_rows = res.reshape(B, groups, O // groups, oh * ow)
        k = kmat[0] if groups == 1 else kmat

        def block(lo, hi):
            np.copyto(cols6[lo:hi], view[lo:hi])
            np.matmul(k, cols[lo:hi], out=res_rows[lo:hi])
        _batches(ws, B, block, cols.size + res.size)
        _made_cols(ws, img, pads, geometry)
        return res if direct else _result(out, res, img.dtype, ws)
    cols = _im2col(_padded(img, pads, bl, ws), *geometry, ws)
    _made_cols(ws, img, pads, geometry)
    prod = _bmm(kmat, cols, ws)                                       # (G, Og, N)
    prod = prod.reshape(O, oh, ow, B).transpose(3, 0, 1, 2)
    return _result(out, prod, img.dtype, ws)


def conv2d_grad_weights(img, topgrad, khw, border_mode, subsample, flip, dilation, groups,
                        ws=None, out=None, cols_ws=None):
    """``cols_ws``: the workspace of a conv2d_forward that ran earlier in the same function
    call: when it made its patches from this very image array with this geometry, they are
    used as they are instead of being copied out again (the caller guarantees the order, and
    that nothing wrote into the image in between)."""
    B, C, H, W = img.shape
    kh, kw = khw
    O, oh, ow = topgrad.shape[1:]
    pads = border_pads(border_mode, kh, kw, dilation)
    bl = _batch_last_order(ow)
    made = cols_ws.get("cols_of") if cols_ws is not None else None
    if made is not None and made[0] is img and \
            made[1] == (kh, kw, oh, ow, pads, subsample, dilation, groups, bl):
        cols = _cols_matrices(cols_ws["cols"], bl)
    else:
        cols = _im2col(_padded(img, pads, bl, ws), kh, kw, oh, ow, subsample, dilation,
                       groups, bl, ws)
    if bl:
        rows = _group_rows(topgrad, groups, ws)
        dk = _bmm(rows, cols.transpose(0, 2, 1), ws)                 # (G, Og, Cg*kh*kw)
    else:
        # per image and group (Og, oh*ow) @ (oh*ow, K), summed over the batch
        rows = topgrad.reshape(B, groups, O // groups, oh * ow)
        dtype = np.result_type(rows.dtype, cols.dtype)
        per_image = _scratch(ws, "prod", (B, groups, O // groups, cols.shape[2]), dtype)
        cols_t = cols.transpose(0, 1, 3, 2)
        _batches(ws, B, lambda lo, hi: np.matmul(rows[lo:hi], cols_t[lo:hi],
                                                 out=per_image[lo:hi]), cols.size + rows.size)
        dk = per_image.sum(axis=0)
    dk = dk.reshape(O, C // groups, kh, kw)
    if flip:
        dk = dk[:, :, ::-1, ::-1]
    return _result(out, dk, img.dtype)


def conv2d_grad_inputs(kern, topgrad, hw, border_mode, subsample, flip, dilation, groups,
                       ws=None, out=None):
    O, cg, kh, kw = kern.shape
    B, _, oh, ow = topgrad.shape
    H, W = hw
    C = cg * groups
    (t, b), (l, r) = border_pads(border_mode, kh, kw, dilation)
    kmat = _kernel_matrix(kern, groups, flip)
    rows = _group_rows(topgrad, groups, ws)
    dcols = _bmm(kmat.transpose(0, 2, 1), rows, ws).reshape(C, kh, kw, oh, ow, B)
    # col2im in a (C, h, w, B) layout: each offset's slice-add then runs over contiguous
    # (ow, B) blocks instead of rows of ow values (~1.5x faster for small feature maps)
    dxp = _scratch(ws, "dxp", (C, H + t + b, W + l + r, B), dcols.dtype)
    dxp.fill(0)
    sh, sw = subsample
    dh, dw = dilation
    native = ws.get("col2im") if ws is not None else None
    if native is not None:          # a backend's kernel: all offsets of a channel at once
        native(dcols, dxp, subsample, dilation)
    else:
        for i in range(kh):
            for j in range(kw):
                dxp[:, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                    j * dw: j * dw + sw * (ow - 1) + 1: sw] += dcols[:, i, j]
    dx = dxp[:, t: t + H, l: l + W].transpose(3, 0, 1, 2)
    return _result(out, dx, kern.dtype, ws)


# --------------------------------------------------------------------------- ops
class BaseConv2d(Op):
    """Parameters shared by the three ops (Theano's BaseAbstractConv)."""

    __props__ = ("imshp", "kshp", "border_mode", "subsample", "filter_flip",
                 "filter_dilation", "num_groups")

    def __init__(self, imshp=None, kshp=None, border_mode="valid", subsample=(1, 1),
                 filter_flip=True, filter_dilation=(1, 1), num_groups=1):
        self.imshp = _hint(imshp)
        self.kshp = _hint(kshp)
        self.border_mode = normalize_border_mode(border_mode)
        self.subsample = _pair(subsample, "subsample")
        self.filter_flip = bool(filter_flip)
        self.filter_dilation = _pair(filter_dilation, "filter_dilation")
        if int(num_groups) < 1:
            raise ValueError(f"conv2d: num_groups must be >= 1, got {num_groups}")
        self.num_groups = int(num_groups)

    def __str__(self):
        parts = [f"{self.border_mode}"]
        if self.subsample != (1, 1):
            parts.append(f"subsample={self.subsample}")
        if self.filter_dilation != (1, 1):
            parts.append(f"dilation={self.filter_dilation}")
        if not self.filter_flip:
            parts.append("no_flip")
        if self.num_groups != 1:
            parts.append(f"groups={self.num_groups}")
        return f"{type(self).__name__}{{{', '.join(parts)}}}"

    def _params(self, **over):
        kw = dict(imshp=self.imshp, kshp=self.kshp, border_mode=self.border_mode,
                  subsample=self.subsample, filter_flip=self.filter_flip,
                  filter_dilation=self.filter_dilation, num_groups=self.num_groups)
        kw.update(over)
        return kw

    def _args(self):
        return (self.border_mode, self.subsample, self.filter_flip, self.filter_dilation,
                self.num_groups)

    # ---- static checks, shared by make_node (static shapes) and perform (runtime shapes)
    def _static(self, var, hint, what, inputs):
        shape = list(var.type.shape)
        if hint is not None:
            for d, (s, h) in enumerate(zip(shape, hint)):
                if h is None:
                    continue
                if s is not None and s != h:
                    raise shape_error(self, describe(inputs),
                                      f"the {what} shape hint {hint} disagrees with the "
                                      f"{what}'s static shape {var.type.shape_str()}")
                shape[d] = h
        return shape

    def _check(self, img_shp, kern_shp, out_shp, describe_inputs, trace=None):
        """Raise a ShapeError for inconsistent channel counts or an empty output.  Each
        argument is a 4-tuple of int | None (the output's may be None altogether)."""
        G = self.num_groups
        C, (O, cg) = img_shp[1], kern_shp[:2]

        def fail(why):
            return shape_error(self, describe_inputs, why, trace)

        if O is not None and O % G:
            raise fail(f"the number of filters ({O}) is not divisible by num_groups={G}")
        if C is not None and C % G:
            raise fail(f"the number of input channels ({C}) is not divisible by num_groups={G}")
        if C is not None and cg is not None and C != cg * G:
            raise fail(f"the input has {C} channels but the filters expect {cg * G} "
                       f"(filter shape (out, in{'/groups' if G > 1 else ''}, rows, cols) "
                       f"= {tuple(kern_shp)}, num_groups={G})")
        if out_shp is not None:
            if out_shp[0] is not None and img_shp[0] is not None and out_shp[0] != img_shp[0]:
                raise fail(f"batch sizes differ: input {img_shp[0]}, output {out_shp[0]}")
            if out_shp[1] is not None and O is not None and out_shp[1] != O:
                raise fail(f"the output gradient has {out_shp[1]} channels but there are "
                           f"{O} filters")
        kh, kw = kern_shp[2:]
        if kh is None or kw is None:
            return
        pads = border_pads(self.border_mode, kh, kw, self.filter_dilation)
        for d in range(2):
            n, k = img_shp[2 + d], kern_shp[2 + d]
            o = conv_out_len(n, k, pads[d], self.subsample[d], self.filter_dilation[d])
            if o is None:
                continue
            if o < 1:
                eff = self.filter_dilation[d] * (k - 1) + 1
                raise fail(f"the filter's {'rows' if d == 0 else 'cols'} (size {k}, {eff} with "
                           f"dilation) do not fit in the padded input ({n} + {sum(pads[d])} "
                           f"padding) with border_mode={self.border_mode!r}")
            if out_shp is not None and out_shp[2 + d] is not None and out_shp[2 + d] != o:
                raise fail(f"the output gradient has {out_shp[2 + d]} "
                           f"{'rows' if d == 0 else 'cols'}, but convolving an input of "
                           f"size {n} with a filter of size {k} gives {o}")

    def _check_hints(self, node, img_shape, kern_shape, inputs):
        for hint, actual, what in ((self.imshp, img_shape, "input"),
                                   (self.kshp, kern_shape, "filter")):
            if hint is None or actual is None:
                continue
            if any(h is not None and h != a for h, a in zip(hint, actual)):
                raise shape_error(self, describe_values(inputs),
                                  f"the {what} has shape {tuple(actual)} but its shape hint "
                                  f"({what}_shape) says {hint}", getattr(node.tag, "trace", []))

    def _out_spatial(self, img_shp, kern_shp):
        kh, kw = kern_shp[2:]
        if kh is None or kw is None:
            return [None, None]
        pads = border_pads(self.border_mode, kh, kw, self.filter_dilation)
        return [conv_out_len(img_shp[2 + d], kern_shp[2 + d], pads[d], self.subsample[d],
                             self.filter_dilation[d]) for d in range(2)]

    def _sym_out_spatial(self, img_shp, kern_shp):
        pads = border_pads(self.border_mode, kern_shp[2], kern_shp[3], self.filter_dilation)
        return [conv_out_len(img_shp[2 + d], kern_shp[2 + d], pads[d], self.subsample[d],
                             self.filter_dilation[d]) for d in range(2)]


def _float_pair(a, b):
    """Cast two inputs to one float dtype (ints become floatX)."""
    a, b = as_tensor_variable(a), as_tensor_variable(b)
    dtype = upcast(a.dtype, b.dtype)
    if not is_float(dtype):
        from graphc.configdefaults import config
        dtype = config.floatX
    return cast(a, dtype), cast(b, dtype)


def _four_d(op, var, what):
    if var.ndim != 4:
        raise TypeError(f"{op}: {what} must be a 4-d tensor, got {var.type}")


def _spatial_vector(var, hint=None):
    """The last two sizes of ``var`` as an int64 vector (constants where known)."""
    dims = []
    for d in (2, 3):
        s = var.type.shape[d]
        if s is None and hint is not None:
            s = hint[d]
        dims.append(int(s) if s is not None else shape_i(var, d))
    return as_shape_vector(dims)


def _shape_vector(op, shape):
    shape = as_shape_vector(list(shape) if isinstance(shape, (tuple, list)) else shape)
    if shape.ndim != 1 or shape.type.shape[0] not in (None, 2):
        raise TypeError(f"{op}: the shape input must be 2 ints (rows, cols), got {shape.type}")
    return shape


def _merged(var, hint):
    """The static shape of ``var`` completed by a shape hint (they agree: make_node checked)."""
    if hint is None:
        return tuple(var.type.shape)
    return tuple(s if s is not None else h for s, h in zip(var.type.shape, hint))


class Conv2d(BaseConv2d):
    """out = conv2d(img, kern): see the module docstring."""

    def make_node(self, img, kern):
        img, kern = _float_pair(img, kern)
        _four_d(self, img, "input")
        _four_d(self, kern, "filters")
        ishp = self._static(img, self.imshp, "input", [img, kern])
        kshp = self._static(kern, self.kshp, "filter", [img, kern])
        self._check(ishp, kshp, None, describe([img, kern]))
        out = (ishp[0], kshp[0], *self._out_spatial(ishp, kshp))
        return Apply(self, [img, kern], [TensorType(img.dtype, shape=out)()])

    def checked_args(self, node, inputs):
        """The arguments of conv2d_forward for these input values, after the run-time
        shape checks (shared with the native backend's step)."""
        img, kern = inputs
        self._check_hints(node, img.shape, kern.shape, inputs)
        self._check(img.shape, kern.shape, None, describe_values(inputs),
                    getattr(node.tag, "trace", []))
        return (img, kern) + self._args()

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = conv2d_forward(*self.checked_args(node, inputs))

    def infer_shape(self, node, shapes):
        ishp, kshp = shapes
        return [(ishp[0], kshp[0], *self._sym_out_spatial(ishp, kshp))]

    def L_op(self, inputs, outputs, output_grads):
        img, kern = inputs
        (gz,) = output_grads
        params = self._params(imshp=_merged(img, self.imshp), kshp=_merged(kern, self.kshp))
        d_img = Conv2dGradInputs(**params)(kern, gz, _spatial_vector(img, self.imshp))
        d_kern = Conv2dGradWeights(**params)(img, gz, _spatial_vector(kern, self.kshp))
        return [d_img, d_kern]


class Conv2dGradInputs(BaseConv2d):
    """The gradient of Conv2d w.r.t. its input (a transposed convolution): ``hw`` gives
    the input's (rows, cols)."""

    def make_node(self, kern, topgrad, hw):
        kern, topgrad = _float_pair(kern, topgrad)
        _four_d(self, kern, "filters")
        _four_d(self, topgrad, "output gradient")
        hw = _shape_vector(self, hw)
        h, w = static_values(hw) or (None, None)
        kshp = self._static(kern, self.kshp, "filter", [kern, topgrad])
        G = self.num_groups
        ishp = [topgrad.type.shape[0], None if kshp[1] is None else kshp[1] * G, h, w]
        if self.imshp is not None:
            ishp = [a if a is not None else b for a, b in zip(ishp, self.imshp)]
        self._check(ishp, kshp, topgrad.type.shape, describe([kern, topgrad]))
        return Apply(self, [kern, topgrad, hw], [TensorType(kern.dtype, shape=tuple(ishp))()])

    def checked_args(self, node, inputs):
        """The arguments of conv2d_grad_inputs, after the run-time shape checks."""
        kern, topgrad, hw = inputs
        hw = tuple(int(v) for v in hw)
        ishp = (topgrad.shape[0], kern.shape[1] * self.num_groups) + hw
        self._check_hints(node, ishp, kern.shape, inputs)
        self._check(ishp, kern.shape, topgrad.shape, describe_values(inputs),
                    getattr(node.tag, "trace", []))
        return (kern, topgrad, hw) + self._args()

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = conv2d_grad_inputs(*self.checked_args(node, inputs))

    def infer_shape(self, node, shapes):
        kern, topgrad, hw = node.inputs
        kshp, tshp, _ = shapes
        return [(tshp[0], kshp[1] * self.num_groups, hw[0], hw[1])]

    def L_op(self, inputs, outputs, output_grads):
        from graphc.gradient import disconnected_grad_type
        kern, topgrad, hw = inputs
        (g_img,) = output_grads
        params = self._params(imshp=tuple(outputs[0].type.shape), kshp=tuple(kern.type.shape))
        d_kern = Conv2dGradWeights(**params)(g_img, topgrad, _spatial_vector(kern, self.kshp))
        d_top = Conv2d(**params)(g_img, kern)
        return [d_kern, d_top, disconnected_grad_type()]

    def connection_pattern(self, node):
        return [[True], [True], [False]]


class Conv2dGradWeights(BaseConv2d):
    """The gradient of Conv2d w.r.t. its filters: ``khw`` gives the filters' (rows, cols)."""

    def make_node(self, img, topgrad, khw):
        img, topgrad = _float_pair(img, topgrad)
        _four_d(self, img, "input")
        _four_d(self, topgrad, "output gradient")
        khw = _shape_vector(self, khw)
        kh, kw = static_values(khw) or (None, None)
        ishp = self._static(img, self.imshp, "input", [img, topgrad])
        G = self.num_groups
        kshp = [topgrad.type.shape[1], None if ishp[1] is None else ishp[1] // G, kh, kw]
        if self.kshp is not None:
            kshp = [a if a is not None else b for a, b in zip(kshp, self.kshp)]
        self._check(ishp, kshp, topgrad.type.shape, describe([img, topgrad]))
        return Apply(self, [img, topgrad, khw], [TensorType(img.dtype, shape=tuple(kshp))()])

    def checked_args(self, node, inputs):
        """The arguments of conv2d_grad_weights, after the run-time shape checks."""
        img, topgrad, khw = inputs
        khw = tuple(int(v) for v in khw)
        kshp = (topgrad.shape[1], img.shape[1] // self.num_groups) + khw
        self._check_hints(node, img.shape, kshp, inputs)
        self._check(img.shape, kshp, topgrad.shape, describe_values(inputs),
                    getattr(node.tag, "trace", []))
        return (img, topgrad, khw) + self._args()

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = conv2d_grad_weights(*self.checked_args(node, inputs))

    def infer_shape(self, node, shapes):
        img, topgrad, khw = node.inputs
        ishp, tshp, _ = shapes
        return [(tshp[1], ishp[1] // self.num_groups, khw[0], khw[1])]

    def L_op(self, inputs, outputs, output_grads):
        from graphc.gradient import disconnected_grad_type
        img, topgrad, khw = inputs
        (g_kern,) = output_grads
        params = self._params(imshp=tuple(img.type.shape), kshp=tuple(outputs[0].type.shape))
        d_img = Conv2dGradInputs(**params)(g_kern, topgrad, _spatial_vector(img, self.imshp))
        d_top = Conv2d(**params)(img, g_kern)
        return [d_img, d_top, disconnected_grad_type()]

    def connection_pattern(self, node):
        return [[True], [True], [False]]


# --------------------------------------------------------------------------- user functions
def _no_unshared(unshared):
    if unshared:
        raise NotImplementedError("conv2d: unshared (locally connected) filters are not "
                                  "supported by graphc")


def conv2d(input, filters, input_shape=None, filter_shape=None, border_mode="valid",
           subsample=(1, 1), filter_flip=True, image_shape=None, filter_dilation=(1, 1),
           num_groups=1, unshared=False, **kwargs):
    """``T.nnet.conv2d``: a batch of 2-d convolutions (Theano 1.0's signature).

    input: (batch, channels, rows, cols); filters: (out channels, channels / num_groups,
    filter rows, filter cols).  ``input_shape`` / ``filter_shape`` are optional 4-tuples
    (int or None per entry) that give the output a static shape and are checked at run time.
    """
    if "imshp_logical" in kwargs or "kshp_logical" in kwargs:
        raise ValueError("conv2d: 'imshp_logical' and 'kshp_logical' are not supported "
                         "(upsample the input explicitly instead)")
    if kwargs:
        warnings.warn(f"conv2d: keyword arguments {sorted(kwargs)} are deprecated and ignored",
                      stacklevel=2)
    if image_shape is not None:
        if input_shape is not None:
            raise ValueError("conv2d: input_shape and image_shape should not be provided at "
                             "the same time")
        warnings.warn("conv2d: the `image_shape` keyword argument is deprecated, it has been "
                      "renamed to `input_shape`", DeprecationWarning, stacklevel=2)
        input_shape = image_shape
    _no_unshared(unshared)
    op = Conv2d(imshp=input_shape, kshp=filter_shape, border_mode=border_mode,
                subsample=subsample, filter_flip=filter_flip, filter_dilation=filter_dilation,
                num_groups=num_groups)
    return op(input, filters)


def conv2d_grad_wrt_inputs(output_grad, filters, input_shape, filter_shape=None,
                           border_mode="valid", subsample=(1, 1), filter_flip=True,
                           filter_dilation=(1, 1), num_groups=1, unshared=False):
    """The gradient of conv2d w.r.t. its input, i.e. a transposed convolution (Theano 1.0).

    ``input_shape`` has 4 entries: the first two may be None, the last two (the rows and
    cols of the result) must be ints or symbolic int scalars."""
    _no_unshared(unshared)
    if len(input_shape) != 4:
        raise ValueError(f"conv2d_grad_wrt_inputs: input_shape needs 4 entries, "
                         f"got {input_shape!r}")
    if input_shape[2] is None or input_shape[3] is None:
        raise ValueError("conv2d_grad_wrt_inputs: the last two entries of input_shape "
                         "(the result's rows and cols) must be given")
    op = Conv2dGradInputs(imshp=input_shape, kshp=filter_shape, border_mode=border_mode,
                          subsample=subsample, filter_flip=filter_flip,
                          filter_dilation=filter_dilation, num_groups=num_groups)
    return op(filters, output_grad, list(input_shape[2:]))


def conv2d_grad_wrt_weights(input, output_grad, filter_shape, input_shape=None,
                            border_mode="valid", subsample=(1, 1), filter_flip=True,
                            filter_dilation=(1, 1), num_groups=1, unshared=False):
    """The gradient of conv2d w.r.t. its filters (Theano 1.0).  The last two entries of
    ``filter_shape`` (the filter rows and cols) must be given."""
    _no_unshared(unshared)
    if len(filter_shape) != 4 or filter_shape[2] is None or filter_shape[3] is None:
        raise ValueError(f"conv2d_grad_wrt_weights: filter_shape needs 4 entries whose last "
                         f"two are given, got {filter_shape!r}")
    op = Conv2dGradWeights(imshp=input_shape, kshp=filter_shape, border_mode=border_mode,
                           subsample=subsample, filter_flip=filter_flip,
                           filter_dilation=filter_dilation, num_groups=num_groups)
    return op(input, output_grad, list(filter_shape[2:]))


# Theano 1.0 names (theano.tensor.nnet.abstract_conv)
AbstractConv2d = Conv2d
AbstractConv2d_gradInputs = Conv2dGradInputs
AbstractConv2d_gradWeights = Conv2dGradWeights
