"""The native CPU backend: fused regions run as LLVM kernels, matrix products as BLAS.

The linker turns the optimized graph into a flat list of zero-argument steps over storage
cells (one ``[value]`` per variable).  The step of a node is made by the first matching
entry of ``STEP_MAKERS`` (a table keyed by op type); ops without an entry run their numpy
``perform`` (the reference), so every graph runs.

Buffers: a node whose outputs never reach a function output (directly, through views, or
through an in-place op that takes the buffer over) keeps its output arrays from one call
to the next and writes into them again when the shape is unchanged, so a steady training
loop allocates nothing for intermediates.  A changed shape (another batch size) allocates
a new buffer; nothing is recompiled, since kernels take shapes and strides at run time.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List

import numpy as np

from graphc.backend.kernel_spec import DTYPES
from graphc.configdefaults import config
from graphc.graph.basic import Constant
from graphc.link.py import node_error
from graphc.tensor.blas import Gemm, _check_z
from graphc.tensor.elemwise import Elemwise, describe_values, shape_error
from graphc.tensor.fused import Fused


def _aliased_inputs(node, k) -> list:
    """Positions of the inputs whose buffer output ``k`` of ``node`` may share: declared
    views, inputs taken over in place, and the value input of Elemwise identity/second,
    whose numpy perform returns that input (or a broadcast view of it) without declaring
    a view_map."""
    op = node.op
    pos = list((getattr(op, "view_map", None) or {}).get(k, ()))
    pos += (getattr(op, "destroy_map", None) or {}).get(k, ())
    if isinstance(op, Elemwise) and op.scalar_op.name in ("identity", "second"):
        pos.append(len(node.inputs) - 1)
    return pos


def _escaping(fgraph) -> set:
    """Variables whose buffer may be seen by the caller after the call: the outputs, and
    whatever they view or took over in place."""
    out = set()
    stack = list(fgraph.outputs)
    while stack:
        v = stack.pop()
        if v in out:
            continue
        out.add(v)
        if v.owner is not None:
            stack.extend(v.owner.inputs[j] for j in _aliased_inputs(v.owner, v.index))
    return out


class _Buffers:
    """Output arrays of one node kept across calls (when the node's outputs don't escape)."""

    __slots__ = ("arrays", "reuse")

    def __init__(self, n, reuse):
        self.arrays = [None] * n
        self.reuse = reuse

    def get(self, k, shape, dtype):
        a = self.arrays[k]
        if a is None or a.shape != shape:
            a = np.empty(shape, dtype)
            if self.reuse:
                self.arrays[k] = a
        elif not self.reuse:
            a = np.empty(shape, dtype)
        return a


def _fused_step(node, ins, outs, reuse) -> Callable:
    from graphc.backend.llvm import compile_kernel
    op: Fused = node.op
    if any(d not in DTYPES for d in op.in_dtypes) or \
            any(o.dtype not in DTYPES for o in node.outputs):
        return None
    kernel = compile_kernel(op.to_kernel_spec())
    out_dtypes = [o.type.numpy_dtype for o in node.outputs]
    bufs = _Buffers(len(outs), reuse)
    destroy = dict(op.destroy) if op.reduce is None else {}
    check = op._broadcast_shape
    reduce_axes = op.reduce[1] if op.reduce is not None else None
    n_out = len(outs)
    last = [None, None]                     # input shapes of the previous call, output shape

    def step():
        vals = [c[0] for c in ins]
        key = tuple([v.shape for v in vals])
        if key == last[0]:
            oshape = last[1]
        else:
            shape = check(node, vals)       # Theano's broadcasting rule, with a clear error
            oshape = shape if reduce_axes is None else \
                tuple(s for d, s in enumerate(shape) if d not in reduce_axes)
            last[0], last[1] = key, oshape
        arrays = []
        for k in range(n_out):
            j = destroy.get(k)
            if j is not None:
                a = vals[j]
                if a.shape == oshape and a.flags.c_contiguous and a.flags.writeable:
                    arrays.append(a)
                    continue
            arrays.append(bufs.get(k, oshape, out_dtypes[k]))
        kernel(vals, arrays)
        for k in range(n_out):
            outs[k][0] = arrays[k]
    return step


def _gemm_step(node, ins, outs, reuse) -> Callable:
    from graphc.backend.llvm import gemm
    op: Gemm = node.op
    if node.outputs[0].dtype not in ("float32", "float64"):
        return None
    dtype = node.outputs[0].type.numpy_dtype
    bufs = _Buffers(1, reuse)
    ta, tb, has_z, inplace = op.trans_a, op.trans_b, op.has_z, op.inplace
    trace = getattr(node.tag, "trace", [])
    out = outs[0]

    def step():
        x, y, alpha = ins[0][0], ins[1][0], ins[2][0]
        m = x.shape[1] if ta else x.shape[0]
        n = y.shape[0] if tb else y.shape[1]
        k1, k2 = (x.shape[0] if ta else x.shape[1]), (y.shape[1] if tb else y.shape[0])
        if k1 != k2:
            raise shape_error(op, describe_values([x.T if ta else x, y.T if tb else y]),
                              f"inner dimensions differ ({k1} vs {k2})", trace)
        if has_z:
            z, beta = ins[3][0], ins[4][0]
            # Theano's rule, as in Gemm.perform: z broadcasts only where its type says so
            # (a plain ``c[...] = z`` would also stretch a size-1 dimension of a matrix)
            _check_z(op, node, z, (m, n))
            if inplace and z.shape == (m, n) and z.flags.c_contiguous and z.flags.writeable:
                c = z
            else:
                c = bufs.get(0, (m, n), dtype)
                c[...] = z
            gemm(ta, tb, float(alpha), x, y, float(beta), c)
        else:
            c = bufs.get(0, (m, n), dtype)
            gemm(ta, tb, float(alpha), x, y, 0.0, c)
        out[0] = c
    return step


# op type -> maker(node, input cells, output cells, reuse) -> step, or None to decline
STEP_MAKERS: Dict[type, Callable] = {
    Fused: _fused_step,
    Gemm: _gemm_step,
}


class _PerformStep:
    """Run the op's numpy reference (ops without a native kernel)."""

    __slots__ = ("perform", "node", "ins", "outs")

    def __init__(self, node, ins, outs):
        self.perform, self.node, self.ins, self.outs = node.op.perform, node, ins, outs

    def __call__(self):
        self.perform(self.node, [c[0] for c in self.ins], self.outs)


_perform_step = _PerformStep


class LLVMLinker:
    name = "llvm"

    def link(self, fgraph, profile=None):
        storage = {v: [None] for v in fgraph.inputs}
        order = fgraph.toposort()
        for node in order:
            for v in node.inputs:
                if v not in storage:
                    storage[v] = [v.data] if isinstance(v, Constant) else [None]
            for o in node.outputs:
                storage[o] = [None]
        for o in fgraph.outputs:
            if o not in storage:
                storage[o] = [o.data] if isinstance(o, Constant) else [None]
        escaping = _escaping(fgraph)
        steps: List = []
        for node in order:
            ins = [storage[i] for i in node.inputs]
            outs = [storage[o] for o in node.outputs]
            reuse = not any(o in escaping for o in node.outputs)
            step = None
            maker = STEP_MAKERS.get(type(node.op))
            if maker is not None:
                try:
                    step = maker(node, ins, outs, reuse)
                except Exception as e:  # a kernel the backend cannot build: run the reference
                    if config.debug:
                        print(f"graphc llvm: {node.op} runs on numpy: {e}")
                    step = None
            if step is None:
                step = _perform_step(node, ins, outs)
            steps.append((step, node, ins))

        uses_numpy = any(isinstance(step, _PerformStep) for step, _, _ in steps)
        if profile is None:
            def run():
                for step, node, ins in steps:
                    try:
                        step()
                    except Exception as e:
                        raise node_error(node, [c[0] for c in ins], e) from e
        else:
            def run():
                for step, node, ins in steps:
                    t0 = time.perf_counter()
                    try:
                        step()
                    except Exception as e:
                        raise node_error(node, [c[0] for c in ins], e) from e
                    profile.add(node, time.perf_counter() - t0)
        run.uses_numpy = uses_numpy          # Function silences numpy warnings only then
        return storage, run
