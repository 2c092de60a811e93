"""Native steps of the 2-d convolution ops (Conv2d, Conv2dGradInputs, Conv2dGradWeights).

Each maker has the signature of ``graphc.link.llvm.STEP_MAKERS`` (node, input cells, output
cells, reuse) -> zero-argument step, or None to leave the node to its numpy ``perform``.
A step runs the op's ``checked_args`` (the same checks and messages as ``perform``), then:

- Blocked (one group, float32/float64, numpy's CBLAS found): the batch is cut into blocks
  of a few images, handed out one at a time to the kernel threads (a thread slowed by
  another process takes fewer).  A block's patches are one (C*kh*kw, n*oh*ow) matrix made
  by the im2col kernel of graphc/backend/llvm/convblock.py, small enough to stay in cache
  while BLAS (one BLAS thread per Python thread, called through ctypes without the GIL)
  multiplies it:
    forward        out  = K (O, C*kh*kw) @ cols
    input grad     cols = K^T @ dout, then col2im adds the patches back into NCHW images
    weight grad    dK  += dout @ cols^T, one accumulator per thread, summed at the end
  The product's columns are ordered (image, row, col).  Feature maps of at least
  _PER_IMAGE_MIN pixels take one product per image, whose (O, oh*ow) block of the NCHW
  array BLAS reads or writes in place (leading dimensions select the image's columns of
  cols); smaller ones one product per block and a copy between the (O, n, oh*ow) order and
  NCHW's (n, O, oh*ow), which stays in cache.  A forward with few taps (C*kh*kw <=
  _DIRECT_MAX_TAPS, unit column stride) runs convblock's direct kernel instead: no patches,
  NCHW written at once (LeNet's first layer: 1.3 ms against 2.8 ms on one core, measured);
  so does its weight gradient (2.1 ms against ~3).
  Padding: each block is copied into a zeroed padded scratch (forward, weight grad) or
  added there and cropped (input grad).
- Otherwise: the numpy im2col + BLAS code of graphc.tensor.nnet.conv with its scratch arrays
  and result kept across calls (fresh multi-MB arrays cost page faults as large as the copies
  that fill them).  The weight gradient takes the patches the forward made of the same image
  in the same call.
"""
from __future__ import annotations

import ctypes
import weakref

import numpy as np

from graphc.link import hugemem
from graphc.link.llvm import STEP_MAKERS, _Buffers
from graphc.link.llvm_ops import _COPY_PARALLEL_MIN, _FLOATS, _L, _P, _ROWS_PARALLEL_MIN, \
    _in_threads
from graphc.tensor.nnet.conv import (Conv2d, Conv2dGradInputs, Conv2dGradWeights, border_pads,
                                     conv2d_forward, conv2d_grad_inputs, conv2d_grad_weights)

# --------------------------------------------------------------------------- numpy route
# img Variable -> (its storage cell, workspace, op) of the latest Conv2d step made on it: the
# Conv2dGradWeights step of the same image in the same linked function reuses its patches
_FORWARD_WS = weakref.WeakKeyDictionary()
_GEOMETRY = ("border_mode", "subsample", "filter_dilation", "num_groups")


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
        ws = {"copy": _split_copy, "split": _split_images}
        extra = {}
        if isinstance(op, Conv2dGradInputs):
            ws["col2im"] = _col2im_runner(dt)
        if isinstance(op, Conv2d):
            _FORWARD_WS[node.inputs[0]] = (ins[0], ws, op)
        elif isinstance(op, Conv2dGradWeights):
            extra["cols_ws"] = _forward_ws(node, ins)

        def step():
            args = op.checked_args(node, [c[0] for c in ins])
            out = bufs.get(0, out_shape(op, args), npdt)
            outs[0][0] = fn(*args, ws=ws, out=out, **extra)
        step.ws, step.cols_ws = ws, extra.get("cols_ws")     # for tests and debugging
        return step
    return make




def _split_copy(dst, src):
    """dst[...] = src (same shapes), cut along the first axis of extent > 1 into one slice
    per kernel thread when large: the im2col and layout copies of a convolution are
    memory-bound gathers that one core does not saturate (numpy releases the GIL)."""
    if dst.size < _COPY_PARALLEL_MIN or dst.shape != src.shape:
        np.copyto(dst, src, casting="unsafe")
        return
    axis = next((d for d, n in enumerate(dst.shape) if n > 1), 0)
    lead = (slice(None),) * axis

    def part(lo, hi):
        cut = lead + (slice(lo, hi),)
        np.copyto(dst[cut], src[cut], casting="unsafe")
    _in_threads(part, dst.shape[axis])


def _split_images(fn, n, size):
    """fn(lo, hi) over images [0, n), in one block per kernel thread when the arrays it
    touches have ``size`` >= _COPY_PARALLEL_MIN elements: the per-image products of a
    batch-major convolution.  OpenBLAS gives a product one thread per 2^18
    multiply-adds, so each image's (LeNet's first layer: 20 x 25 x 576) runs on one core,
    and one call for the whole batch would use one core."""
    if n > 1 and size >= _COPY_PARALLEL_MIN:
        _in_threads(fn, n)
    else:
        fn(0, n)


def _col2im_runner(dt):
    """col2im(dcols, dxp, subsample, dilation) through the kernel of
    graphc/backend/llvm/col2im.py, channels split across the kernel threads when large."""
    from graphc.backend.llvm.col2im import load_col2im
    fn = ctypes.CFUNCTYPE(None, _L, _L, _P, _P, _P)(load_col2im(dt))

    def run(dcols, dxp, subsample, dilation):
        dcols = np.ascontiguousarray(dcols)     # (dxp is a C-contiguous workspace)
        C, kh, kw, oh, ow, B = dcols.shape
        meta = np.array([kh, kw, oh, ow, B, *subsample, *dilation, dxp.shape[1],
                         dxp.shape[2]], np.int64)
        args = (meta.ctypes.data, dcols.ctypes.data, dxp.ctypes.data)
        if dcols.size >= _ROWS_PARALLEL_MIN:
            _in_threads(fn, C, *args)
        else:
            fn(0, C, *args)
    return run


def _forward_ws(node, ins):
    """The workspace of the Conv2d step that runs on the same image earlier in every call of
    this function (steps are made in run order, so one registered with this very storage
    cell runs before this node), with the same geometry; else None."""
    found = _FORWARD_WS.get(node.inputs[0])
    if found is None or found[0] is not ins[0]:
        return None
    cell, ws, fop = found
    if any(getattr(fop, a) != getattr(node.op, a) for a in _GEOMETRY):
        return None
    return ws


def _conv_out(op, args):
    img, kern = args[:2]
    return (img.shape[0], kern.shape[0], *op._out_spatial(img.shape, kern.shape))


def _grad_inputs_out(op, args):
    kern, topgrad, hw = args[:3]
    return (topgrad.shape[0], kern.shape[1] * op.num_groups) + tuple(hw)


def _grad_weights_out(op, args):
    img, topgrad, khw = args[:3]
    return (topgrad.shape[1], img.shape[1] // op.num_groups) + tuple(khw)


# --------------------------------------------------------------------------- blocked route
_PER_IMAGE_MIN = 256        # pixels per feature map from which each image gets its own product
# patch matrix of one block: LeNet's second layer takes 8 images (N = 512 columns); blocks
# of 2 to 16 images ran the product at the same speed (~5.9-6.3 ms per op on one core), and
# each block costs ~15-20 us of Python under the GIL, which the threads take in turn
_BLOCK_BYTES = 1 << 20
_THREADS_MIN = 1 << 21      # multiply-adds from which the blocks are shared by threads
_DIRECT_MAX_TAPS = 64       # C*kh*kw up to which the direct kernels replace im2col + BLAS
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


class _Geometry:
    """Sizes of one call: images (B, C, H, W), filters (O, C, kh, kw), patches (K, P)."""

    def __init__(self, op, B, C, hw, O, khw, threads, itemsize):
        self.B, self.C, (self.H, self.W), self.O, (self.kh, self.kw) = B, C, hw, O, khw
        self.sub, self.dil = op.subsample, op.filter_dilation
        (t, b), (l, r) = border_pads(op.border_mode, self.kh, self.kw, self.dil)
        self.top, self.left = t, l
        self.padded = bool(t or b or l or r)
        self.hp, self.wp = self.H + t + b, self.W + l + r
        self.oh = (self.hp - self.dil[0] * (self.kh - 1) - 1) // self.sub[0] + 1
        self.ow = (self.wp - self.dil[1] * (self.kw - 1) - 1) // self.sub[1] + 1
        self.K, self.P = C * self.kh * self.kw, self.oh * self.ow
        self.per_image = self.P >= _PER_IMAGE_MIN
        # (convblock's direct kernels take rows of at least one 256-bit vector)
        self.direct = self.sub[1] == 1 and self.K <= _DIRECT_MAX_TAPS and \
            self.ow * itemsize >= 32
        work = B * O * self.K * self.P
        self.threads = max(1, min(threads, B)) if work >= _THREADS_MIN else 1
        per_image_bytes = self.K * self.P * itemsize
        self.nb = max(1, min(_BLOCK_BYTES // per_image_bytes, -(-B // self.threads)))
        self.metas = {}

    def meta(self, n, a):
        """(int64 meta of convblock.py, its address) for n images of ``a`` (image, channel,
        row strides in elements; its planes hp x wp).  Kept for the call: the blocks of a
        call share a few."""
        key = ("cols", n, a.strides, a.shape[2:])
        got = self.metas.get(key)
        if got is None:
            st = [s // a.itemsize for s in a.strides[:3]]
            m = np.array([self.C, self.kh, self.kw, self.oh, self.ow, n, *self.sub, *self.dil,
                          *st, a.shape[2], a.shape[3]], np.int64)
            got = self.metas.setdefault(key, (m, m.ctypes.data))  # another thread's may win
        return got[1]

    def direct_meta(self, n, a):
        """(int64 meta of convblock.py's direct kernels, its address) for n images of
        ``a``, kept for the call."""
        key = ("direct", n, a.strides)
        got = self.metas.get(key)
        if got is None:
            st = [s // a.itemsize for s in a.strides[:3]]
            m = np.array([self.C, self.kh, self.kw, self.oh, self.ow, n, self.sub[0],
                          *self.dil, *st, self.O], np.int64)
            got = self.metas.setdefault(key, (m, m.ctypes.data))
        return got[1]


def _kmat(kern, flip):
    """The filters as a C-contiguous (O, C*kh*kw) matrix, flipped for a true convolution."""
    if flip:
        kern = kern[:, :, ::-1, ::-1]
    return np.ascontiguousarray(kern).reshape(kern.shape[0], -1)


def _images(a):
    """``a`` (4-d) itself when BLAS and the kernels can take it (unit column stride, element
    strides), else a C-contiguous copy."""
    item = a.itemsize
    if a.strides[3] == item and all(s % item == 0 for s in a.strides):
        return a
    return np.ascontiguousarray(a)


class _Blocked:
    """The blocked convolution of one node (see the module docstring): per-thread scratch
    arrays kept across calls."""

    def __init__(self, kind, dtype, gemm):
        from graphc.backend.llvm.convblock import load_convblock
        self.kind, self.dtype, self.gemm = kind, np.dtype(dtype), gemm
        proto = ctypes.CFUNCTYPE(None, _P, _P, _P)
        self.im2col = proto(load_convblock("im2col", dtype)) if kind != "grad_inputs" else None
        self.col2im = proto(load_convblock("col2im", dtype)) if kind == "grad_inputs" else None
        direct = {"forward": "direct", "grad_weights": "direct_gw"}.get(kind)
        self.direct = ctypes.CFUNCTYPE(None, _P, _P, _P, _P)(
            load_convblock(direct, dtype)) if direct else None
        self.scratch = []

    def _ws(self, slot, key, shape, zero=False):
        """A per-thread scratch array kept across calls."""
        return self._ws_addr(slot, key, shape, zero)[0]

    def _ws_addr(self, slot, key, shape, zero=False):
        """(scratch array, its address): ``a.ctypes.data`` builds a helper object per use
        (~2 us), a cost per block."""
        d = self.scratch[slot]
        got = d.get(key)
        if got is None or got[0].shape != shape:
            a = hugemem.zeros(shape, self.dtype) if zero else hugemem.empty(shape, self.dtype)
            got = d[key] = (a, a.ctypes.data)
        return got

    def _mm(self, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc):
        """c = op(a) @ op(b) + beta * c, row-major, on pointers (ctypes drops the GIL)."""
        self.gemm(_ROW_MAJOR, _TRANS if ta else _NO_TRANS, _TRANS if tb else _NO_TRANS,
                  m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc)

    def run(self, g, body):
        """body(slot, b0, n) for every block of images, the blocks handed out one at a time
        to g.threads threads (a thread slowed by another process takes fewer of them)."""
        from graphc.backend.llvm.blas import one_blas_thread
        while len(self.scratch) < g.threads:
            self.scratch.append({})
        counter = iter(range(-(-g.B // g.nb)))      # next() on it is atomic under the GIL

        def worker(slot):
            for k in counter:
                body(slot, k * g.nb, min(g.nb, g.B - k * g.nb))

        # one BLAS thread per product: a block's product is too small to split (OpenBLAS
        # would put it on both cores, each then waiting for the other's half)
        with one_blas_thread():
            if g.threads == 1:
                worker(0)
                return
            from graphc.backend.llvm.kernel import _get_pool
            pool = _get_pool(g.threads - 1)
            futures = [pool.submit(worker, s) for s in range(1, g.threads)]
            try:
                worker(0)
            finally:
                for f in futures:
                    f.result()

    # ---- the pieces of a block
    def _source(self, slot, g, img, img_addr, b0, n):
        """(images [b0, b0 + n) as the kernels read them, address): padded into a scratch
        if needed."""
        if not g.padded:
            return img[b0:b0 + n], img_addr + b0 * img.strides[0]
        pad, addr = self._ws_addr(slot, "pad", (g.nb, g.C, g.hp, g.wp), zero=True)  # 0 borders
        np.copyto(pad[:n, :, g.top:g.top + g.H, g.left:g.left + g.W], img[b0:b0 + n])
        return pad[:n], addr

    def _patches(self, slot, g, img, img_addr, b0, n):
        """Address of the block's patch matrix (K, n*P), filled by im2col."""
        cols = self._ws_addr(slot, "cols", (g.K * g.nb * g.P,))[1]
        src, src_addr = self._source(slot, g, img, img_addr, b0, n)
        self.im2col(g.meta(n, src), src_addr, cols)
        return cols

    def _gathered(self, slot, g, dout, b0, n):
        """Address of dout[b0:b0+n] (n, O, P) as an (O, n*P) matrix, columns in the patches'
        order."""
        rows, addr = self._ws_addr(slot, "rows", (g.O * g.nb * g.P,))
        np.copyto(rows[:g.O * n * g.P].reshape(g.O, n, g.P),
                  dout[b0:b0 + n].reshape(n, g.O, g.P).transpose(1, 0, 2))
        return addr

    # ---- the three ops
    def forward(self, op, img, kern, out):
        B, C, H, W = img.shape
        O, _, kh, kw = kern.shape
        g = _Geometry(op, B, C, (H, W), O, (kh, kw), _num_threads(), self.dtype.itemsize)
        img, kmat = _images(img), _kmat(kern, op.filter_flip)
        item, O, K, P = self.dtype.itemsize, g.O, g.K, g.P
        kp, op_, ip = kmat.ctypes.data, out.ctypes.data, img.ctypes.data
        if g.direct:
            wt = np.ascontiguousarray(kmat.T)       # (K, O): a tap's weights adjacent
            wp = wt.ctypes.data

            def direct(slot, b0, n):
                src, src_addr = self._source(slot, g, img, ip, b0, n)
                self.direct(g.direct_meta(n, src), src_addr, wp, op_ + b0 * O * P * item)
            self.run(g, direct)
            return out

        def block(slot, b0, n):
            cp = self._patches(slot, g, img, ip, b0, n)
            if g.per_image:     # each image's (O, P) rows of the NCHW result, in place
                for b in range(n):
                    self._mm(False, False, O, P, K, kp, K, cp + b * P * item, n * P, 0.0,
                             op_ + (b0 + b) * O * P * item, P)
                return
            prod, pp = self._ws_addr(slot, "rows", (O * g.nb * P,))
            self._mm(False, False, O, n * P, K, kp, K, cp, n * P, 0.0, pp, n * P)
            np.copyto(out[b0:b0 + n].reshape(n, O, P),
                      prod[:O * n * P].reshape(O, n, P).transpose(1, 0, 2))
        self.run(g, block)
        return out

    def grad_inputs(self, op, kern, topgrad, hw, out):
        O, cg, kh, kw = kern.shape
        B = topgrad.shape[0]
        g = _Geometry(op, B, cg, hw, O, (kh, kw), _num_threads(), self.dtype.itemsize)
        dout, kmat = np.ascontiguousarray(topgrad), _kmat(kern, op.filter_flip)
        item, K, P = self.dtype.itemsize, g.K, g.P
        kp, dp = kmat.ctypes.data, dout.ctypes.data

        op_ = out.ctypes.data

        def block(slot, b0, n):
            cp = self._ws_addr(slot, "cols", (K * g.nb * P,))[1]
            if g.per_image:
                for b in range(n):
                    self._mm(True, False, K, P, O, kp, K, dp + (b0 + b) * O * P * item, P, 0.0,
                             cp + b * P * item, n * P)
            else:
                rp = self._gathered(slot, g, dout, b0, n)
                self._mm(True, False, K, n * P, O, kp, K, rp, n * P, 0.0, cp, n * P)
            if g.padded:        # added into a padded scratch, then cropped
                pad, dst_addr = self._ws_addr(slot, "pad", (g.nb, g.C, g.hp, g.wp))
                dst = pad[:n]
            else:
                dst, dst_addr = out[b0:b0 + n], op_ + b0 * out.strides[0]
            self.col2im(g.meta(n, dst), cp, dst_addr)
            if g.padded:
                np.copyto(out[b0:b0 + n], dst[:, :, g.top:g.top + g.H, g.left:g.left + g.W])
        self.run(g, block)
        return out

    def grad_weights(self, op, img, topgrad, khw, out):
        B, C, H, W = img.shape
        O = topgrad.shape[1]
        g = _Geometry(op, B, C, (H, W), O, khw, _num_threads(), self.dtype.itemsize)
        img, dout = _images(img), np.ascontiguousarray(topgrad)
        item, K, P = self.dtype.itemsize, g.K, g.P
        dp, ip = dout.ctypes.data, img.ctypes.data
        used = [False] * g.threads      # a slot's accumulator holds a sum

        def direct(slot, b0, n):
            acc, ap = self._ws_addr(slot, "acc", (O, K))
            if not used[slot]:
                acc.fill(0)
                used[slot] = True
            src, src_addr = self._source(slot, g, img, ip, b0, n)
            self.direct(g.direct_meta(n, src), src_addr, dp + b0 * O * P * item, ap)

        def block(slot, b0, n):
            cp = self._patches(slot, g, img, ip, b0, n)
            ap = self._ws_addr(slot, "acc", (O, K))[1]
            if g.per_image:
                for b in range(n):
                    self._mm(False, True, O, K, P, dp + (b0 + b) * O * P * item, P,
                             cp + b * P * item, n * P, 1.0 if used[slot] else 0.0, ap, K)
                    used[slot] = True
                return
            rp = self._gathered(slot, g, dout, b0, n)
            self._mm(False, True, O, K, n * P, rp, n * P, cp, n * P,
                     1.0 if used[slot] else 0.0, ap, K)
            used[slot] = True
        self.run(g, direct if g.direct else block)
        accs = [self.scratch[s]["acc"][0] for s in range(g.threads) if used[s]]
        total = accs[0]
        for a in accs[1:]:
            total = total + a
        dk = total.reshape(O, C, *khw)
        np.copyto(out, dk[:, :, ::-1, ::-1] if op.filter_flip else dk)
        return out


def _num_threads():
    from graphc.backend.llvm.kernel import num_threads
    return num_threads()


def _blocked_step(kind, fn, out_shape):
    """A maker of the blocked route's step for op ``kind``, or of the numpy route's
    (``_conv_step(fn, out_shape)``) when the node cannot take it."""
    numpy_make = _conv_step(fn, out_shape)

    def make(node, ins, outs, reuse):
        from graphc.backend.llvm.blas import numpy_cblas_gemm
        op = node.op
        dt = node.outputs[0].dtype
        if dt not in _FLOATS or any(v.dtype != dt for v in node.inputs[:2]):
            return None
        gemm = numpy_cblas_gemm(dt)
        if op.num_groups != 1 or gemm is None:
            return numpy_make(node, ins, outs, reuse)
        blocked = _Blocked(kind, dt, gemm)
        run = getattr(blocked, kind)
        npdt = np.dtype(dt)
        bufs = _Buffers(1, reuse)

        def step():
            args = op.checked_args(node, [c[0] for c in ins])
            shape = out_shape(op, args)
            if 0 in shape or 0 in args[0].shape or 0 in args[1].shape:
                outs[0][0] = fn(*args)      # nothing to multiply: the reference's result
                return
            n_arrays = 2 if kind == "forward" else 3
            outs[0][0] = run(op, *args[:n_arrays], bufs.get(0, shape, npdt))
        step.blocked = blocked              # for tests and debugging
        return step
    return make


STEP_MAKERS.update({
    Conv2d: _blocked_step("forward", conv2d_forward, _conv_out),
    Conv2dGradInputs: _blocked_step("grad_inputs", conv2d_grad_inputs, _grad_inputs_out),
    Conv2dGradWeights: _blocked_step("grad_weights", conv2d_grad_weights, _grad_weights_out),
})
