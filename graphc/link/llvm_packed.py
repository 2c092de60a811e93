"""Native steps for graphc.tensor.packed, each into an output buffer kept across calls:
PackedDot (with its addends) through the packed-panel kernel of
graphc/backend/llvm/packgemm.py on the kernel threads (graphc.backend.llvm.kernel.num_threads);
PackWeights (once per loop, before it) through graphc/backend/llvm/packweights.py, which
also spares the page faults of a fresh megabyte per call."""
from __future__ import annotations

import numpy as np

from graphc.link.llvm import STEP_MAKERS, _Buffers
from graphc.tensor.packed import PANEL, PackedDot, PackWeights


def _packed_dot_step(node, ins, outs, reuse):
    from graphc.backend.llvm.kernel import num_threads
    from graphc.backend.llvm.packgemm import PackedProduct
    op: PackedDot = node.op
    product = PackedProduct()
    bufs = _Buffers(1, reuse)
    f32 = np.dtype(np.float32)
    trans = op.trans
    out = outs[0]
    threads = num_threads()
    extra = ins[3:]                      # the addends' cells

    def step():
        a, w, wp = ins[0][0], ins[1][0], ins[2][0]
        addends = [e[0] for e in extra]
        if a.dtype != f32 or w.dtype != f32 or wp.dtype != f32 or a.ndim != 2 or \
                not wp.flags.c_contiguous or \
                any(e.dtype != f32 or e.ndim != 2 for e in addends):
            op.perform(node, [a, w, wp, *addends], outs)
            return
        op.check(node, a, w, wp, *addends)
        n = w.shape[0] if trans else w.shape[1]
        c = bufs.get(0, (a.shape[0], n), f32)
        out[0] = product(a, wp, n, c, threads, addends)
    return step


def _pack_weights_step(node, ins, outs, reuse):
    from graphc.backend.llvm.packweights import pack_into, packer
    op: PackWeights = node.op
    bufs = _Buffers(1, reuse)
    f32 = np.dtype(np.float32)
    trans = op.trans
    out = outs[0]
    calls = [0]

    def step():
        w = ins[0][0]
        fn = packer(calls[0] > 0) if w.dtype == f32 and w.ndim == 2 else None
        calls[0] += 1
        if fn is None:                   # not compiled (yet), or not a float32 matrix
            op.perform(node, [w], outs)
            return
        k, n = w.shape[::-1] if trans else w.shape
        out[0] = pack_into(w, trans, bufs.get(0, (-(-n // PANEL), k, PANEL), f32), fn)
    return step


STEP_MAKERS[PackedDot] = _packed_dot_step
STEP_MAKERS[PackWeights] = _pack_weights_step
