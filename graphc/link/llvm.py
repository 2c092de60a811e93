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

import math
import time
from typing import Callable, Dict, List

import numpy as np

from graphc.backend.kernel_spec import DTYPES
from graphc.backend.llvm.blas import SMALL_PRODUCT, gemm_into, step_loops
from graphc.compile.graph_cache import compile_source
from graphc.configdefaults import config
from graphc.link import hugemem
from graphc.link.py import make_storage, node_error
from graphc.tensor.basic import Join
from graphc.tensor.blas import Gemm, _check_z
from graphc.tensor.elemwise import describe_values, shape_error
from graphc.tensor.fused import Fused
from graphc.tensor.subtensor import Subtensor, build_numpy_index


def _aliased_inputs(node, k) -> list:
    """Positions of the inputs whose buffer output ``k`` of ``node`` may share: declared
    views and inputs taken over in place (Elemwise.perform always returns fresh arrays)."""
    op = node.op
    pos = list((getattr(op, "view_map", None) or {}).get(k, ()))
    pos += (getattr(op, "destroy_map", None) or {}).get(k, ())
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
            a = hugemem.empty(shape, dtype)
            if self.reuse:
                self.arrays[k] = a
        elif not self.reuse:
            a = hugemem.empty(shape, dtype)
        return a


def _fused_step(node, ins, outs, reuse, dests=None) -> Callable:
    """``dests`` (optional, one per output): cells through which a caller may lend the
    array an output should be written to (a scan hands the row of its state buffer, which
    saves an allocation and a copy per step); a lent array of the right shape is used once,
    and the cell is cleared."""
    from graphc.backend.llvm import compile_kernel
    op: Fused = node.op
    if any(d not in DTYPES for d in op.in_dtypes) or \
            any(o.dtype not in DTYPES for o in node.outputs):
        return None
    kernel = compile_kernel(op.to_kernel_spec())
    out_dtypes = [o.type.numpy_dtype for o in node.outputs]
    bufs = _Buffers(len(outs), reuse)
    # destroy_map: the output may be written over the input's array (same layout: exact
    # aliasing, which the kernels' parallel inner loops allow, codegen.py). The kernel runs as
    # fast as into its own buffer and touches half the memory (MLP step, in-process A/B under
    # load: its Fused nodes 3.9 -> 2.2 and 6.2 -> 5.1 ms per step).
    destroy = dict(op.destroy) if op.reduce is None else {}
    check = op._broadcast_shape
    reduce_axes = op.reduce[1] if op.reduce is not None else None
    n_out = len(outs)
    last = [None, None]                     # input shapes of the previous call, output shape
    dests = dests or [None] * n_out

    def shape_of(vals):
        key = tuple([v.shape for v in vals])
        if key == last[0]:
            return last[1]
        shape = check(node, vals)           # Theano's broadcasting rule, with a clear error
        oshape = shape if reduce_axes is None else \
            tuple(s for d, s in enumerate(shape) if d not in reduce_axes)
        last[0], last[1] = key, oshape
        return oshape

    if n_out == 1:
        # the common case (a scan step is often just this), kept short: it runs per step.
        # ``fast[0]`` runs the plan of the previous call if the arrays have that call's
        # signature and then returns the output; else it runs nothing and returns another
        # object (see _plan_call). Kernel.__call__'s signature key costs more than the
        # kernel itself on small arrays.
        # plan call, output shape of the previous call, the allocator for that shape (numpy's
        # own below hugemem's sizes: hugemem.empty's checks cost ~0.5 us, a fifth of a
        # call of the dispatch workload's 200-op chain on 10 floats)
        fast = [_no_plan, (), hugemem.empty]
        get = bufs.get

        j0 = destroy.get(0)
        use_input = [j0 is not None]        # cleared when that input cannot take the output

        def slow(vals, a):
            oshape = shape_of(vals)
            if a.__class__ is not np.ndarray or a.shape != oshape or a.dtype != out_dtypes[0] \
                    or (j0 is not None and a is vals[j0]
                        and not (a.flags.c_contiguous and a.flags.writeable)):
                if j0 is not None and a is vals[j0]:
                    use_input[0] = False        # else every call would come through here
                a = get(0, oshape, out_dtypes[0])
            vals = _call(kernel, vals, [a])
            fast[0], fast[1] = _plan_call(kernel, vals, a), oshape
            fast[2] = hugemem.allocator(math.prod(oshape) * out_dtypes[0].itemsize)
            return a
        return _make_step1(ins, outs[0], dests[0] or [None], reuse, bufs.arrays,
                           out_dtypes[0], fast, slow, inplace=(j0, use_input))

    def step():
        vals = [c[0] for c in ins]
        oshape = shape_of(vals)
        arrays = []
        for k in range(n_out):
            j = destroy.get(k)
            if j is not None:
                a = vals[j]
                if a.shape == oshape and a.flags.c_contiguous and a.flags.writeable:
                    arrays.append(a)
                    continue
            d = dests[k]
            if d is not None and d[0] is not None:
                a, d[0] = d[0], None
                if a.shape == oshape and a.dtype == out_dtypes[k]:
                    arrays.append(a)
                    continue
            arrays.append(bufs.get(k, oshape, out_dtypes[k]))
        _call(kernel, vals, arrays)
        for k in range(n_out):
            outs[k][0] = arrays[k]
    return step


# The one-output fused step, written out for its number of inputs: a list comprehension
# over the input cells costs about as much as running a small kernel.
_STEP1 = """
def step1():
    a = dest[0]
    if a is not None:                       # an array lent by the caller (see _fused_step)
        dest[0] = None
    else:
        a = {new_output}
    if fast[0]({vals}a) is not a:
        a = slow([{vals}], a)
    out[0] = a
"""


def _make_step1(ins, out, dest, reuse, kept, dtype, fast, slow, inplace=(None, None)):
    """The step of a one-output fused node: try the previous call's plan (``fast[0]``),
    else ``slow(values, array or None)`` checks the shapes, runs the kernel and updates
    ``fast``. The output goes to the lent array, else to input j while ``use_input[0]``
    (``inplace = (j, use_input)``, from destroy_map), else the kept buffer (``reuse``), else
    a new array of the previous call's shape; ``fast[0]`` rejects it if the shape changed,
    and ``slow`` if it cannot take the output."""
    j, use_input = inplace
    env = {"dest": dest, "out": out, "kept": kept, "dtype": dtype,
           "fast": fast, "slow": slow, "use_input": use_input}
    for k, cell in enumerate(ins):
        env[f"in{k}"] = cell
    new_output = "kept[0]" if reuse else "fast[2](fast[1], dtype)"
    if j is not None:
        new_output = f"in{j}[0] if use_input[0] else {new_output}"
    src = _STEP1.format(vals="".join(f"in{k}[0], " for k in range(len(ins))),
                        new_output=new_output)
    exec(compile_source(src, "<graphc fused step>"), env)
    return env["step1"]


def _call(kernel, vals, arrays):
    """kernel(vals, arrays); numpy scalars (some numpy performs return them for 0-d
    results) are passed as 0-d arrays.  Returns the inputs as passed."""
    try:
        kernel(vals, arrays)
    except TypeError:
        if not any(isinstance(v, np.generic) for v in vals):
            raise
        vals = [np.asarray(v) if isinstance(v, np.generic) else v for v in vals]
        kernel(vals, arrays)
    return vals


def _no_plan(*arrays):
    return False                            # not None: the output may be None (no buffer yet)


def _plan_call(kernel, inputs, out):
    """A callable that runs, on arrays with the signature of ``(*inputs, out)``, the plan
    the kernel just made for them, returning ``out``, and returns something else for any
    other arrays (running nothing). It is the plan's builtin (small loops: the signature
    is checked natively, see graphc/backend/llvm/pycall.py), or a Python check and one
    ctypes call; _no_plan when the plan is not one plain call (threads, prefill).
    Reads the kernel's plan cache with the kernel's own key (graphc/backend/llvm/kernel.py);
    should that change, nothing is found and every call goes through Kernel.__call__."""
    plans = getattr(kernel, "_plans", None)
    if plans is None or not all(v.__class__ is np.ndarray for v in inputs):
        return _no_plan
    key = (*[(a.__class__, a.dtype, a.shape, a.strides) for a in inputs],
           (out.__class__, out.dtype, out.shape, out.strides), None)
    plan = plans.get(key)
    if plan is None or not getattr(plan, "simple", False):
        return _no_plan
    if getattr(plan, "native", None) is not None:
        return plan.native
    if getattr(plan, "pending", None) is not None:
        return _no_plan             # through the kernel until its builtin is made
    sig = [(a.__class__, a.shape, a.strides, a.dtype) for a in (*inputs, out)]

    def checked(*arrays):
        try:
            if [(a.__class__, a.shape, a.strides, a.dtype) for a in arrays] != sig:
                return False
        except AttributeError:              # a Python scalar, or no output buffer yet
            return False
        plan.fn(0, plan.n0, 0, plan.meta_ptr, *map(id, arrays))
        return arrays[-1]
    return checked


def _gemm_step(node, ins, outs, reuse) -> Callable:
    """Gemm through numpy's BLAS (its CBLAS gemm, else ``np.dot(out=)``) into kept buffers.
    scipy's BLAS (graphc.backend.llvm.gemm) is another OpenBLAS build: measured on the
    development machine it ran the per-step products of an RNN (32x256 @ 256x1024) 1.5x
    slower than numpy's, with large products equal; and two OpenBLAS thread pools on the same
    cores slow each other down."""
    op: Gemm = node.op
    if node.outputs[0].dtype not in ("float32", "float64"):
        return None
    dtype = node.outputs[0].type.numpy_dtype
    bufs = _Buffers(1, reuse)
    scratch = _Buffers(1, True)             # the product before z is added (never escapes)
    ta, tb, has_z, inplace = op.trans_a, op.trans_b, op.has_z, op.inplace
    trace = getattr(node.tag, "trace", [])
    out = outs[0]

    def step():
        x, y, alpha = ins[0][0], ins[1][0], ins[2][0]
        a = x.T if ta else x
        b = y.T if tb else y
        if a.shape[1] != b.shape[0]:
            raise shape_error(op, describe_values([a, b]),
                              f"inner dimensions differ ({a.shape[1]} vs {b.shape[0]})", trace)
        if a.dtype != dtype or b.dtype != dtype:
            raise TypeError(f"{op}: operands are {a.dtype} and {b.dtype}, expected {dtype}")
        shape = (a.shape[0], b.shape[1])
        alpha = float(alpha)
        beta = float(ins[4][0]) if has_z else 0.0
        if beta == 0.0:
            c = bufs.get(0, shape, dtype)
            if has_z:
                _check_z(op, node, ins[3][0], shape)
            # np.dot(out=) when it is the same product; in a scan's step loop gemm_into,
            # which runs small products on one BLAS thread (blas.in_step_loop)
            # (all but tiny ones through gemm_into: one OpenBLAS thread, graphc's own split)
            if alpha == 0.0 or alpha == 1.0 and not step_loops[0] and \
                    a.shape[0] * a.shape[1] * c.shape[1] < SMALL_PRODUCT or \
                    not gemm_into(a, b, alpha, 0.0, c):
                np.dot(a, b, out=c)
                if alpha != 1.0:
                    c *= alpha
        else:
            z = ins[3][0]
            # Theano's rule, as in Gemm.perform: z broadcasts only where its type says so
            # (a plain ``c[...] = z`` would also stretch a size-1 dimension of a matrix)
            _check_z(op, node, z, shape)
            if inplace and z.shape == shape and z.flags.c_contiguous and z.flags.writeable:
                c = z
            else:
                c = bufs.get(0, shape, dtype)
                np.copyto(c, z)
            # one BLAS call (numpy's BLAS) scales c by beta and adds alpha * a @ b, where
            # np.dot needs a product array and two more passes over it
            if alpha == 0.0 or not gemm_into(a, b, alpha, beta, c):
                p = scratch.get(0, shape, dtype)
                np.dot(a, b, out=p)
                if beta != 1.0:
                    c *= beta
                if alpha != 1.0:
                    p *= alpha
                c += p
        out[0] = c
    return step


def _subtensor_step(node, ins, outs, reuse) -> Callable:
    """A Subtensor with constant indices (an LSTM step's gate columns ``z[:, 256:512]``):
    the index tuple is built once, so a step is one numpy view. Bad indices go through
    ``perform``, which raises the op's error."""
    op = node.op
    if len(node.inputs) != 1:
        return None
    idx = build_numpy_index(op.template, [])
    cell, out, perform = ins[0], outs[0], op.perform

    def step():
        x = cell[0]
        try:
            v = x[idx]
        except (IndexError, ValueError, TypeError):
            perform(node, [x], outs)
            return
        out[0] = v if v.__class__ is np.ndarray else np.asarray(v)
    return step


# op type -> maker(node, input cells, output cells, reuse) -> step, or None to decline
STEP_MAKERS: Dict[type, Callable] = {
    Fused: _fused_step,
    Gemm: _gemm_step,
    Subtensor: _subtensor_step,
}


def _joins_of_fused(fgraph, order) -> dict:
    """Join nodes whose inputs are distinct outputs of one Fused node that nothing else reads
    (an LSTM's four gate gradients): join node -> that Fused node."""
    found = {}
    outputs = set(fgraph.outputs)
    for node in order:
        if not isinstance(node.op, Join) or len(node.inputs) < 2:
            continue
        owner = node.inputs[0].owner
        if owner is None or not isinstance(owner.op, Fused) or \
                len(set(node.inputs)) != len(node.inputs):
            continue
        if all(v.owner is owner and v not in outputs and v.dtype == node.outputs[0].dtype
               and all(c is node for c, _ in fgraph.clients.get(v, ())) for v in node.inputs):
            found[node] = owner
    return found


class _JoinInto:
    """A Join of outputs of one fused kernel, written by the kernel straight into the join's
    output: ``lend`` (a step run just before the kernel's) puts views of the output's blocks
    into the kernel's destination cells, and the join step finds its inputs are those views
    and copies nothing.  Block sizes come from the previous call (the first call, or changed
    shapes, take numpy's concatenate).  The join's output array is the one lent to it (a
    scan's per-step buffer row), else a kept buffer, else (it escapes) a new array."""

    def __init__(self, node, ins, outs, reuse, cells, dest):
        self.node, self.ins, self.out = node, ins, outs[0]
        self.cells = cells                  # the kernel's destination cells, one per input
        self.dest = dest or [None]          # the join's own destination cell
        self.axis = node.op.axis % node.outputs[0].ndim
        self.dtype = node.outputs[0].type.numpy_dtype
        self.bufs = _Buffers(1, reuse)
        self.shape = None                   # output shape of the previous call
        self.blocks = None                  # per input, its index into the output
        self.target = None
        self.views = None

    def lend(self):
        if self.shape is None:
            return
        a = self.dest[0]
        if a is None or a.shape != self.shape or a.dtype != self.dtype:
            a = self.bufs.get(0, self.shape, self.dtype)
        self.target = a
        self.views = [a[b] for b in self.blocks]
        for c, v in zip(self.cells, self.views):
            c[0] = v

    def step(self):
        vals = [c[0] for c in self.ins]
        target, views = self.target, self.views
        self.target = self.views = None
        for c in self.cells:                # a view the kernel did not take
            c[0] = None
        d = self.dest[0]
        self.dest[0] = None
        if views is not None and all(v is w for v, w in zip(vals, views)):
            self.out[0] = target
            return
        try:
            res = np.concatenate(vals, axis=self.axis)
        except ValueError as e:
            raise shape_error(self.node.op, describe_values(vals), str(e),
                              getattr(self.node.tag, "trace", [])) from None
        if d is not None and d.shape == res.shape and d.dtype == res.dtype:
            d[...] = res
            res = d
        self.out[0] = res
        self.shape = res.shape
        start, self.blocks = 0, []
        for v in vals:
            n = v.shape[self.axis]
            self.blocks.append((slice(None),) * self.axis + (slice(start, start + n),))
            start += n


class _PerformStep:
    """Run the op's numpy reference (ops without a native kernel)."""

    __slots__ = ("perform", "node", "ins", "outs")

    def __init__(self, node, ins, outs):
        self.perform, self.node, self.ins, self.outs = node.op.perform, node, ins, outs

    def __call__(self):
        self.perform(self.node, [c[0] for c in self.ins], self.outs)


_perform_step = _PerformStep


def _dead_after(fgraph, steps, storage):
    """Per step, the cells of the intermediate results it is the last to read (or makes and
    nobody reads). For graphs with a step that allocates its results per call (an op run on
    numpy, a loop's buffers): freeing each after its last use lets a later node of the same
    call, and the next call, take its memory again (graphc/link/hugemem.py) instead of
    touching fresh pages. Kept buffers are held by their steps, not by the cells, and stay."""
    keep = set(fgraph.inputs) | set(fgraph.outputs)
    last = {}
    for i, (_, node, _) in enumerate(steps):
        for v in node.inputs:
            last[v] = i
        for v in node.outputs:
            last.setdefault(v, i)
    dead = [[] for _ in steps]
    for v, i in last.items():
        if v.owner is not None and v not in keep:
            dead[i].append(storage[v])
    return dead


class _Freeing:
    """A step, then the cells of the results it was the last to read are emptied."""

    __slots__ = ("step", "cells")

    def __init__(self, step, cells):
        self.step, self.cells = step, cells

    def __call__(self):
        self.step()
        for c in self.cells:
            c[0] = None


def _shape_group(fgraph, order, steps, storage):
    """The nodes that compute only from the shapes of the function's inputs (a mean's
    1 / n: Shape(x), Subtensor{0}, a cast and a reciprocal, DimShuffle{x}), as one step
    that runs them when those shapes changed since the last call and otherwise puts their
    last results back in their cells. In a small function each of these nodes costs a few
    microseconds once a large kernel has run between calls (Python's code and data out of
    the caches): softmax_xent_grad ran 6 of them, ~40 us of a ~250 us call (~10 us when
    each runs alone, over and over).

    Returns the steps with the group's first step replaced by the group's and the others
    removed, or the steps unchanged when there is no group of two or more nodes. Not
    grouped: results that leave the function (the caller may change them), results a node
    overwrites, and nodes of other kinds than shape arithmetic (only Shape, Subtensor,
    DimShuffle, MakeVector and elementwise nodes, with results of at most one dimension)."""
    from graphc.tensor.basic import MakeVector, Shape
    from graphc.tensor.elemwise import DimShuffle, Elemwise
    inputs = set(fgraph.inputs)
    made = {}                   # variables the group computes (a dict: in order)
    group = []
    for node in order:
        op = node.op
        if isinstance(op, Shape):
            ok = node.inputs[0] in inputs
        else:
            ok = isinstance(op, (Subtensor, DimShuffle, MakeVector, Elemwise, Fused)) and \
                all(v in made or (v.owner is None and v not in inputs) for v in node.inputs)
        if ok and not getattr(op, "destroy_map", None) and \
                all(o.ndim <= 1 for o in node.outputs):
            group.append(node)
            made.update(dict.fromkeys(node.outputs))
    if len(group) < 2 or any(o in made for o in fgraph.outputs):
        return steps
    members = set(group)
    for node in order:
        if node not in members:
            for outs in (getattr(node.op, "destroy_map", None) or {}).values():
                if any(node.inputs[i] in made for i in outs):
                    return steps
    # one step per member (a fused node that lends a Join its output has two)
    by_node = {}
    for item in steps:
        if item[1] in members:
            if item[1] in by_node:
                return steps
            by_node[item[1]] = item
    roots = {node.inputs[0] for node in group if isinstance(node.op, Shape)}
    memo = _ShapeMemo([by_node[node] for node in group],
                      [storage[v] for v in fgraph.inputs if v in roots],
                      [storage[v] for v in made])
    out, placed = [], False
    for item in steps:
        if item[1] in members:
            if not placed:
                out.append((memo, item[1], item[2]))
                placed = True
        else:
            out.append(item)
    return out


class _ShapeMemo:
    """The step of a group of shape-arithmetic nodes (see _shape_group)."""

    __slots__ = ("runs", "roots", "cells", "key", "values")

    def __init__(self, runs, roots, cells):
        self.runs = runs                    # (step, node, ins) of the group, in order
        self.roots = roots                  # cells of the inputs whose shapes are the key
        self.cells = cells                  # cells of the group's results
        self.key = None
        self.values = None

    def __call__(self):
        key = tuple([c[0].shape for c in self.roots])
        if key == self.key:
            for c, v in zip(self.cells, self.values):
                c[0] = v
            return
        self.key = None
        for step, node, ins in self.runs:
            try:
                step()
            except Exception as e:
                raise node_error(node, [c[0] for c in ins], e) from e
        self.values = [c[0] for c in self.cells]
        self.key = key


class LLVMLinker:
    name = "llvm"

    def link(self, fgraph, profile=None):
        order = fgraph.toposort()
        storage = make_storage(fgraph, order)
        escaping = _escaping(fgraph)
        # destination cells of the outputs made by native fused kernels (see _fused_step)
        joins = _joins_of_fused(fgraph, order)
        dests = {o: [None] for o in fgraph.outputs if o.owner is not None and o not in
                 fgraph.inputs and (isinstance(o.owner.op, Fused) or o.owner in joins)}
        into = {}                           # fused node -> its _JoinInto objects
        for node, fused in joins.items():
            for v in node.inputs:
                dests.setdefault(v, [None])
            j = _JoinInto(node, [storage[i] for i in node.inputs], [storage[node.outputs[0]]],
                          node.outputs[0] not in escaping, [dests[v] for v in node.inputs],
                          dests.get(node.outputs[0]))
            into.setdefault(fused, []).append(j)
            joins[node] = j
        lent = set()
        steps: List = []
        for node in order:
            ins = [storage[i] for i in node.inputs]
            outs = [storage[o] for o in node.outputs]
            reuse = not any(o in escaping for o in node.outputs)
            step = None
            if node in joins:
                steps.append((joins[node].step, node, ins))
                if node.outputs[0] in dests:
                    lent.add(node.outputs[0])
                continue
            for j in into.get(node, ()):
                steps.append((j.lend, node, ins))
            maker = STEP_MAKERS.get(type(node.op))
            if maker is not None:
                try:
                    if maker is _fused_step:
                        cells = [dests.get(o) for o in node.outputs]
                        step = maker(node, ins, outs, reuse, cells)
                        if step is not None:
                            lent.update(o for o in node.outputs if o in dests)
                    else:
                        step = maker(node, ins, outs, reuse)
                except Exception as e:  # a kernel the backend cannot build: run the reference
                    if config.debug:
                        print(f"graphc llvm: {node.op} runs on numpy: {e}")
                    step = None
            if step is None:
                step = _perform_step(node, ins, outs)
            steps.append((step, node, ins))

        uses_numpy = any(isinstance(step, _PerformStep) for step, _, _ in steps)
        if profile is None:                 # (a profile times every node on its own)
            steps = _shape_group(fgraph, order, steps, storage)
        if uses_numpy and config.allow_gc:  # intermediate results freed after their last use
            dead = _dead_after(fgraph, steps, storage)
            steps = [(_Freeing(step, cells), node, ins) if cells else (step, node, ins)
                     for (step, node, ins), cells in zip(steps, dead)]
        if profile is None and len(steps) == 1:
            step0, node0, ins0 = steps[0]

            def run():                      # one node (a typical scan step): no loop
                try:
                    step0()
                except Exception as e:
                    raise node_error(node0, [c[0] for c in ins0], e) from e
        elif profile is None:
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
        run.steps = steps                    # (step, node, input cells), in order
        # per function output: the cell that lends it a destination array, or None
        run.destinations = [dests[o] if o in lent else None for o in fgraph.outputs]
        return storage, run


# native steps of the nnet ops (cross-entropy, convolution, pooling) register themselves
from graphc.link import (llvm_conv, llvm_ops, llvm_packed, llvm_reduce,  # noqa: E402,F401
                         llvm_rows)
# modules the steps above import when they first run, loaded with the linker instead: a warm
# process would import them inside its first call (~2.5 ms of the LSTM step's, measured)
from graphc.backend.llvm import (blas_split, bundle, convblock, packgemm,  # noqa: E402,F401
                                 packweights)
