"""Native-linker step for a standalone CAReduce sum (one whose input fusion could not take
in, e.g. a conv bias gradient read by other consumers too) in the layouts numpy reduces
slowly: a kept axis between reduced ones with the last axis reduced (sum of (n, c, h, w)
over n, h and w). numpy sums each short h*w row on its own and took 0.33 ms for 128 x 50 x
8 x 8 float32 (warm); the one-op fused kernel walks memory in order (codegen 'reduce' with
outer loops): ~0.08 ms. Other reductions keep numpy's ``perform``: a column sum is at
the memory bound there, and a row sum uses numpy's pairwise summation. So do sums whose
reduced rows are shorter than MIN_RUN: the native walk gains little on them, and numpy adds
a short row in order (exact on the reference tests' cancellation cases, 1e30 - 1e30 + 0.5,
where the kernel's reassociated adds lose the 0.5)."""
from __future__ import annotations

import math

import numpy as np

from graphc.link.llvm import STEP_MAKERS, _Buffers
from graphc.tensor.elemwise import CAReduce
from graphc.tensor.fused import Fused


MIN_RUN = 16


def native_layout(ndim, axes) -> bool:
    """Is this sum one that the native kernel runs faster than numpy (see above)?"""
    kept = [d for d in range(ndim) if d not in axes]
    return bool(kept) and ndim - 1 in axes and min(axes) < min(kept)


def _sum_step(node, ins, outs, reuse):
    from graphc.backend.llvm import compile_kernel
    op = node.op
    x = node.inputs[0]
    ndim, dtype = x.ndim, node.outputs[0].dtype
    axes = tuple(range(ndim)) if op.axis is None else tuple(op.axis)
    if op.kind != "add" or x.dtype != dtype or dtype not in ("float32", "float64") or \
            not native_layout(ndim, axes):
        return None
    spec = Fused([dtype], [("identity", None, (("in", 0),), dtype)], [("eq", 0)],
                 ("add", axes), ndim).to_kernel_spec()
    kernel = compile_kernel(spec)
    np_dtype = np.dtype(dtype)
    bufs = _Buffers(1, reuse)
    perform, out = op.perform, outs[0]
    trailing = []                           # the reduced axes after the last kept one
    for d in reversed(range(ndim)):
        if d not in axes:
            break
        trailing.append(d)

    def step():
        v = ins[0][0]
        if v.__class__ is not np.ndarray or v.dtype != np_dtype or v.ndim != ndim or \
                math.prod([v.shape[d] for d in trailing]) < MIN_RUN:
            # short rows; numpy scalars, bad input: its errors (its warnings silenced, as
            # functions silence them around numpy performs)
            with np.errstate(all="ignore"):
                perform(node, [v], outs)
            return
        shape = tuple(s for d, s in enumerate(v.shape) if d not in axes)
        o = bufs.get(0, shape, np_dtype)
        kernel([v], [o])
        out[0] = o
    return step


STEP_MAKERS[CAReduce] = _sum_step
