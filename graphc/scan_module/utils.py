"""Inner graphs shared by Scan and IfElse: structural signatures (op equality), compiled
inner functions, and shape inference through an inner graph."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from graphc.graph.basic import (Constant, Variable, ancestors, io_toposort, rebuild,
                                stands_in)


class until:
    """Returned by a scan step next to its outputs to stop the loop early
    (``theano.scan_module.until``): the loop ends after the first step where
    ``condition`` is true, and that step's outputs are kept."""

    def __init__(self, condition):
        from graphc.tensor.var import as_tensor_variable
        self.condition = as_tensor_variable(condition)
        if self.condition.ndim != 0:
            raise TypeError(f"until: the condition must be a scalar, got {self.condition.type}")


def serial(v: Variable) -> int:
    """Creation number of a variable (increasing): tells variables made by a step function
    from those that existed before it was called."""
    return int(v.auto_name[5:])


def substitute(outputs, replace: dict):
    """``outputs`` with the variables in ``replace`` substituted; unlike ``clone_replace``,
    only the nodes that depend on a replaced variable are rebuilt, so the rest of the graph
    (the outer graph a step reads) is shared, not copied."""
    memo = dict(replace)
    exact = {new for old, new in replace.items() if stands_in(old, new)}
    for node in io_toposort(list(replace), outputs):
        ins = [memo.get(v, v) for v in node.inputs]
        if any(a is not b for a, b in zip(ins, node.inputs)):
            exact.update(v for v in node.inputs if v not in memo)
            new = rebuild(node, ins, exact)
            for old, nv in zip(node.outputs, new.outputs):
                if nv.name is None:
                    nv.name = old.name
                memo[old] = nv
    return [memo.get(o, o) for o in outputs]


def graph_signature(inputs: Sequence[Variable], outputs: Sequence[Variable]) -> tuple:
    """A hashable description of the graph from ``inputs`` to ``outputs`` that is equal for
    two graphs exactly when they compute the same thing the same way (ops, wiring, types and
    constants); it makes two ops holding equal inner graphs equal, so they can be merged."""
    ref: Dict[Variable, tuple] = {v: ("in", k) for k, v in enumerate(inputs)}
    nodes = []
    for k, node in enumerate(io_toposort(inputs, outputs)):
        args = []
        for v in node.inputs:
            r = ref.get(v)
            if r is None:
                if not isinstance(v, Constant):
                    raise ValueError(f"inner graph has a free variable {v} ({v.type}); "
                                     f"it must be an inner input")
                r = ("const", v.signature())
            args.append(r)
        for i, o in enumerate(node.outputs):
            ref[o] = ("node", k, i)
        nodes.append((node.op, tuple(args), tuple(o.type for o in node.outputs)))
    outs = []
    for o in outputs:
        r = ref.get(o)
        if r is None:
            if not isinstance(o, Constant):
                raise ValueError(f"inner graph output {o} is a free variable")
            r = ("const", o.signature())
        outs.append(r)
    return (tuple(v.type for v in inputs), tuple(nodes), tuple(outs))


class InnerFunction:
    """An inner graph compiled once with graphc.function's machinery (same rewrites, same
    backend).  Callers write input values straight into ``in_cells``, call ``run()`` and
    read ``out_cells``: no argument checking or conversion per call, so a loop pays only
    for the graph itself."""

    def __init__(self, inputs, outputs, mode, cache_name=None):
        from graphc.compile import graph_cache
        from graphc.compile.function import function
        from graphc.configdefaults import config
        # cache_name: what stands for the graph in its graph-cache key (graph_cache.derived);
        # allow_gc off: a step's cells are read after it (scan_module/native.py records
        # them), and the step's buffers serve every step
        with graph_cache.derived(cache_name), config.change_flags(allow_gc=False):
            self.fn = function(list(inputs), list(outputs), mode=mode,
                               on_unused_input="ignore")
        self.in_cells: List[list] = self.fn._in_cells
        self.out_cells: List[list] = self.fn._out_cells
        self.run = self.fn._run
        # per output, a cell through which the loop may lend the array to write it into
        # (the LLVM backend's fused kernels take it; other backends have none)
        dests = getattr(self.run, "destinations", None)
        self.dest_cells: List[Optional[list]] = list(dests or [None] * len(self.out_cells))
        if dests is not None:               # the LLVM linker's
            # a loop runs its step's small kernels through the builtin trampoline thousands
            # of times: on a cold cache, have it compile now, ahead of the step's first plan
            from graphc.backend.llvm import pycall
            pycall.prefetch()

    def __call__(self, values):
        for cell, v in zip(self.in_cells, values):
            cell[0] = v
        self.run()
        return [c[0] for c in self.out_cells]


def compiled(op, key, inputs, outputs, mode):
    """The InnerFunction of ``op`` for ``key``, compiled on first use and kept on the op.
    ``inputs``/``outputs``: the op's own inner graph for ``key``, so that an op loaded from
    the graph cache (graph_cache.origin) names it by where it came from and ``key``."""
    cache = op.__dict__.setdefault("_compiled", {})
    fn = cache.get(key)
    if fn is None:
        origin = op.__dict__.get("_cache_origin")
        fn = cache[key] = InnerFunction(inputs, outputs, mode,
                                        None if origin is None else (*origin, key))
    return fn


def resolve_mode(mode):
    """The mode an inner graph is compiled with: the op's own, else the configured default."""
    from graphc.compile.mode import get_mode
    return get_mode(mode)


def infer_inner_shapes(inputs, outputs, input_shapes) -> List[Optional[tuple]]:
    """Shapes of inner ``outputs`` as outer symbolic scalars, from the (outer) shapes of the
    inner ``inputs``.  An entry is None where the shape cannot be written without inner
    values (e.g. an inner Reshape whose target is computed per step)."""
    from graphc.tensor.var import constant
    shapes: Dict[Variable, Optional[tuple]] = dict(zip(inputs, input_shapes))
    inner = set(inputs)

    def shape_of(v):
        if v in shapes:
            return shapes[v]
        if isinstance(v, Constant):
            return tuple(constant(np.int64(s)) for s in np.shape(v.data))
        return None

    for node in io_toposort(inputs, outputs):
        inner.update(node.outputs)
        ins = [shape_of(v) for v in node.inputs]
        outs = None
        if all(s is not None for s in ins) and hasattr(node.op, "infer_shape"):
            try:
                outs = node.op.infer_shape(node, ins)
            except (NotImplementedError, AttributeError, TypeError, ValueError):
                outs = None
        for k, o in enumerate(node.outputs):
            shapes[o] = tuple(outs[k]) if outs is not None else None

    result = []
    for o in outputs:
        s = shape_of(o)
        if s is None:
            result.append(None)
            continue
        dims = []
        for d, e in enumerate(s):
            static = o.type.shape[d]
            if static is not None:
                dims.append(constant(np.int64(static)))
            elif not isinstance(e, Variable):
                dims.append(constant(np.int64(e)))
            elif any(a in inner for a in ancestors([e])):
                dims.append(None)
            else:
                dims.append(e)
        result.append(tuple(dims))
    return result


def is_zero(g) -> bool:
    """True for gradients that are known zeros (``zeros_like`` or a zero constant)."""
    from graphc.tensor.basic import Alloc
    from graphc.tensor.elemwise import DimShuffle, Elemwise

    def zero_constant(v):               # 0, or 0 broadcast by a DimShuffle (zeros_like(x))
        while v.owner is not None and isinstance(v.owner.op, DimShuffle):
            v = v.owner.inputs[0]
        return isinstance(v, Constant) and not np.any(v.data)

    if isinstance(g, Constant):
        return not np.any(g.data)
    node = g.owner
    if node is not None and isinstance(node.op, Elemwise) and node.op.scalar_op.name == "second":
        return zero_constant(node.inputs[1])
    if node is not None and isinstance(node.op, Alloc):
        return zero_constant(node.inputs[0])
    return False
