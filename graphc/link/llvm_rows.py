"""Native-linker step for graphc.tensor.flatjoin: FlatJoin into a kept output buffer (its
numpy ``perform`` allocates the matrix anew each call: a 1600 x 385 float32 join, fresh
pages every call, cost about as much again as the copy itself)."""
from __future__ import annotations

from graphc.link.llvm import STEP_MAKERS, _Buffers
from graphc.tensor.flatjoin import FlatJoin, flat_join


def _flat_join_step(node, ins, outs, reuse):
    op = node.op
    bufs = _Buffers(1, reuse)
    out = outs[0]

    def alloc(shape, dtype):
        return bufs.get(0, shape, dtype)

    def step():
        out[0] = flat_join(op, node, [c[0] for c in ins], alloc)
    return step


STEP_MAKERS[FlatJoin] = _flat_join_step
