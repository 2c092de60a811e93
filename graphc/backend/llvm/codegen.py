"""KernelSpec + loop Variant -> LLVM IR text of one entry point.

Entry point ABI (every argument is an i64; ctypes passes them as c_void_p, its fastest
conversion of Python ints):

    void kernel(i64 start, i64 stop, i64 out_shift, i64 meta, i64 op_0, ..., i64 op_{K-1})

- operands are the spec's inputs then its outputs. ``op_k`` is either the address of the
  numpy array object (Variant.pyobj: the data pointer is read from the PyArrayObject, which
  saves ~1.4 us per array of ``arr.ctypes.data`` in Python) or the data pointer itself.
- ``meta`` points to int64s: ``shape[ndim]`` then, per operand, ``strides[ndim]`` in bytes,
  all in loop order (the caller has broadcast, permuted and collapsed the dimensions).
- loop ``Variant.split`` (the outermost one, except for 'accumulate' kernels, where it is a
  kept loop) runs over ``[start, stop)``: threads get disjoint slices of it.
- ``out_shift`` is a byte offset added to every output pointer (a thread's slot in the
  partial-results array of a full reduction).

Loop structure (Variant): ``ndim`` loops. 'map' kernels store every element; 'reduce' kernels
keep the first ``n_keep`` loops, accumulate over the rest in registers and store once per kept
index; 'accumulate' kernels combine each value into the output in place. The innermost stride of each operand is specialized at compile time: '0'
(broadcast: loaded once, outside the loop), '1' (unit stride: consecutive, vectorizable) or
's' (runtime stride). Outer strides are always runtime values.

Elementwise ('map') inner loops carry ``llvm.loop.parallel_accesses`` over their loads and
stores: an output never overlaps an input except as the very same array (the linker's in-place
kernels), where element i is read before it is written. Without it the vectorizer adds runtime
overlap checks, and exact aliasing fails them into the scalar loop (4-5x slower). Inner loops
whose body is heavy float32 vector math (vmath.POLY_F32) are interleaved INTERLEAVE times: the
out-of-order core then overlaps the long dependency chains of independent vectors (measured
on tanh(a*x+b)*sigmoid(x)+exp(-x*x), one core: 2.01 ns/element, 1.57 interleaved by 2, 1.54
by 4, whose compile took ~1.5x as long as by 2), and get no vector epilogue loop (see
vector_epilogue: it only saves compile time there).

The innermost reduced loop is blocked: each block of BLOCK elements is summed in a fresh
accumulator (reassociation allowed, so the vectorizer keeps 8-lane x interleaved partial sums),
and block results are added into a float64 accumulator for float32 sums/products. That keeps a
float32 sum of 2^22 values within ~1e-7 of the float64 result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

from llvmlite import ir

from .jit import PLACEHOLDER
from .scalar import DTYPES, I1, I32, I64, I8, ScalarEmitter, DType
from .vmath import POLY_F32

# Offset of ``char *data`` in numpy's PyArrayObject (after PyObject_HEAD on a 64-bit, non-debug
# CPython). kernel.py checks it at import against ``arr.ctypes.data`` and falls back to passing
# data pointers when it does not hold.
DATA_OFFSET = 16
BLOCK = 2048                           # elements per block of the innermost reduced loop
INTERLEAVE = 2                         # vector bodies per iteration of a heavy map loop
PTR = ir.PointerType()
VOID = ir.VoidType()


def splat(b: ir.IRBuilder, v, lanes: int):
    """The scalar ``v`` in every one of ``lanes`` lanes of a vector (one insert, one
    shuffle: the code generator emits a broadcast)."""
    vt = ir.VectorType(v.type, lanes)
    one = b.insert_element(ir.Constant(vt, ir.Undefined), v, ir.Constant(ir.IntType(32), 0))
    return b.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                            ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))


def if_then_values(b: ir.IRBuilder, cond, values, body):
    """``body()`` (new values for ``values``) where ``cond`` holds, else ``values``
    unchanged: the merged values (one phi each)."""
    before = b.block
    with b.if_then(cond):
        new = body()
        then = b.block
    merged = []
    for v, w in zip(values, new):
        phi = b.phi(v.type)
        phi.add_incoming(v, before)
        phi.add_incoming(w, then)
        merged.append(phi)
    return merged


def emit_for(b: ir.IRBuilder, lo, hi, step, carried, body, loop_id=None):
    """Emit ``for i in range(lo, hi, step): carried = body(i, carried)`` at ``b``'s position
    (``step`` an i64 value); return the carried values after the loop. ``loop_id``: llvm.loop
    metadata for the latch."""
    pre = b.block
    head = b.append_basic_block("for.head")
    loop = b.append_basic_block("for.body")
    done = b.append_basic_block("for.end")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name="i")
    i.add_incoming(lo, pre)
    phis = []
    for c in carried:
        p = b.phi(c.type)
        p.add_incoming(c, pre)
        phis.append(p)
    b.cbranch(b.icmp_signed("<", i, hi), loop, done)
    b.position_at_end(loop)
    new = body(i, phis)
    nxt = b.add(i, step, flags=["nsw"])
    latch = b.branch(head)
    if loop_id is not None:
        latch.set_metadata("llvm.loop", loop_id)
    i.add_incoming(nxt, b.block)
    for p, val in zip(phis, new):
        p.add_incoming(val, b.block)
    b.position_at_end(done)
    return phis

class _DistinctMD(ir.values.MDValue):
    """``distinct !{...}``, optionally with itself as first operand (a loop ID). llvmlite
    only makes uniqued nodes; loop IDs and access groups must be distinct."""

    def __init__(self, module, operands, self_ref):
        self.self_ref = self_ref
        super().__init__(module, operands, name=str(len(module.metadata)))

    def descr(self, buf):
        ops = [self.get_reference()] if self.self_ref else []
        ops += [op.get_reference() for op in self.operands]
        buf += ("distinct !{" + ", ".join(ops) + "}", "\n")


@dataclass(frozen=True)
class Variant:
    """How the loops of one kernel are laid out; one compiled function per Variant.

    mode 'map':        elementwise; every loop is an output dimension.
    mode 'reduce':     loops [0, n_keep) are kept, the rest reduced; accumulation in registers,
                       one store per kept index (row reductions, full reductions). With
                       ``outer`` > 0, the first ``outer`` loops are reduced too and come before
                       the kept ones (memory order: a conv bias gradient, sum over axes 0, 2,
                       3, walks n, then c, then h*w): each kept index then combines its
                       register result into the output, which the caller fills with the
                       identity first.
    mode 'accumulate': loops in memory order, the output (stride 0 along reduced loops) is the
                       accumulator: out = combine(out, value), the caller fills it with the
                       identity first. Used when the innermost loop is a kept dimension
                       (column sums), where register accumulation would stride through memory.
    """
    mode: str
    ndim: int                          # number of loops (>= 1)
    n_keep: int                        # 'reduce' only: number of leading kept loops
    inner: Tuple[str, ...]             # per operand: '0' | '1' | 's' (innermost stride kind)
    pyobj: bool                        # operands are PyArrayObject* (else raw data pointers)
    split: int = 0                     # the loop that runs over [start, stop)
    outer: int = 0                     # 'reduce' only: reduced loops before the kept ones

    @property
    def is_reduction(self) -> bool:
        return self.mode == "reduce"


def reduce_identity(kind: str, dt: DType):
    """Identity element of a reduction, as a Python scalar."""
    if kind == "add":
        return -0.0 if dt.is_float else 0          # -0.0 + x == x, also for x == -0.0
    if kind == "mul":
        return 1
    if kind in ("and", "or"):
        if dt.is_float:
            raise ValueError(f"reduction {kind!r} is not defined on {dt.name}")
        return (-1 if dt.kind != "b" else 1) if kind == "and" else 0
    big = kind == "min"                             # min starts high, max starts low
    if dt.is_float:
        return math.inf if big else -math.inf
    if dt.kind == "b":
        return int(big)
    if dt.kind == "u":
        return (1 << dt.bits) - 1 if big else 0
    return (1 << (dt.bits - 1)) - 1 if big else -(1 << (dt.bits - 1))


def accumulator_dtype(kind: str, dt: DType) -> DType:
    """float32 sums and products are accumulated across blocks in float64."""
    if dt.name == "float32" and kind in ("add", "mul"):
        return DTYPES["float64"]
    return dt


class _Builder:
    """State while generating one kernel function."""

    def __init__(self, spec, v: Variant):
        self.spec, self.v = spec, v
        self.in_dts = [DTYPES[d] for d in spec.in_dtypes]
        self.out_dts = [DTYPES[d] for d in spec.out_dtypes]
        self.op_dts = self.in_dts + self.out_dts
        self.n_in = len(self.in_dts)
        self.nops = len(self.op_dts)
        self.module = ir.Module(name="graphc_kernel")
        fnty = ir.FunctionType(VOID, [I64] * (4 + self.nops))
        self.fn = ir.Function(self.module, fnty, name=PLACEHOLDER)
        names = ["start", "stop", "out_shift", "meta"] + \
            [f"in{k}" for k in range(self.n_in)] + [f"out{j}" for j in range(len(self.out_dts))]
        for arg, name in zip(self.fn.args, names):
            arg.name = name
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.m = ScalarEmitter(self.b)

    # ------------------------------------------------------------------ helpers
    def for_range(self, lo, hi, step, carried, body, loop_id=None):
        """Emit ``for i in range(lo, hi, step): carried = body(i, carried)``; return carried."""
        return emit_for(self.b, lo, hi, step, carried, body, loop_id)

    def load(self, k, ptr, group=None):
        dt = self.op_dts[k]
        val = self.b.load(ptr, typ=dt.mem)
        if group is not None:
            val.set_metadata("llvm.access.group", group)
        if dt.kind == "b":
            return self.b.icmp_unsigned("!=", val, ir.Constant(I8, 0))
        return val

    def store(self, k, ptr, val, group=None):
        dt = self.op_dts[k]
        if dt.kind == "b":
            val = self.b.zext(val, I8)
        st = self.b.store(val, ptr)
        if group is not None:
            st.set_metadata("llvm.access.group", group)

    def map_loop_md(self):
        """(access group, loop ID) for an elementwise inner loop: parallel accesses, and
        interleaving when the body is heavy vector math (see the module docstring)."""
        mod = self.module
        group = _DistinctMD(mod, [], self_ref=False)
        hints = [mod.add_metadata([ir.MetaDataString(mod, "llvm.loop.parallel_accesses"),
                                   group])]
        if heavy_vector_math(self.spec):
            hints.append(mod.add_metadata([ir.MetaDataString(mod, "llvm.loop.interleave.count"),
                                           ir.Constant(I32, INTERLEAVE)]))
        return group, _DistinctMD(mod, hints, self_ref=True)

    def elem_ptr(self, k, row, i, d):
        """Address of element i of operand k along the innermost loop (row = its start)."""
        kind = self.v.inner[k]
        if kind == "0":
            return row
        if kind == "1":
            return self.b.gep(row, [i], inbounds=True, source_etype=self.op_dts[k].mem)
        off = self.b.mul(i, self.strides[k][d], flags=["nsw"])
        return self.b.gep(row, [off], inbounds=True, source_etype=I8)

    def rows(self, offs):
        return [self.b.gep(self.base[k], [offs[k]], inbounds=True, source_etype=I8)
                for k in range(self.nops)]

    def advance(self, offs, i, d, ops):
        return [self.b.add(o, self.b.mul(i, self.strides[k][d])) if k in ops else o
                for k, o in enumerate(offs)]

    def bounds(self, d):
        if d == self.v.split:
            return self.start, self.stop
        return ir.Constant(I64, 0), self.shape[d]

    # ------------------------------------------------------------------ entry
    def build(self) -> str:
        v, b = self.v, self.b
        args = list(self.fn.args)
        self.start, self.stop, out_shift, meta_i = args[:4]
        meta = b.inttoptr(meta_i, PTR)

        def meta_at(j):
            return b.load(b.gep(meta, [ir.Constant(I64, j)], inbounds=True,
                                source_etype=I64), typ=I64)

        self.shape = [meta_at(d) for d in range(v.ndim)]
        self.strides = [[meta_at(v.ndim * (1 + k) + d) for d in range(v.ndim)]
                        for k in range(self.nops)]
        self.base = []
        for k, a in enumerate(args[4:]):
            if v.pyobj:
                field = b.inttoptr(b.add(a, ir.Constant(I64, DATA_OFFSET)), PTR)
                p = b.load(field, typ=PTR)
            else:
                p = b.inttoptr(a, PTR)
            if k >= self.n_in:
                p = b.gep(p, [out_shift], inbounds=True, source_etype=I8)
            self.base.append(p)
        zero_offs = [ir.Constant(I64, 0)] * self.nops
        if v.is_reduction:
            self.reduction_level(0, zero_offs)
        else:
            self.elementwise_level(0, zero_offs)
        b.ret_void()
        return str(self.module)

    # ------------------------------------------------------------------ elementwise
    def elementwise_level(self, d, offs):
        lo, hi = self.bounds(d)
        everything = range(self.nops)
        if d < self.v.ndim - 1:
            def body(i, _):
                self.elementwise_level(d + 1, self.advance(offs, i, d, everything))
                return []
            self.for_range(lo, hi, ir.Constant(I64, 1), [], body)
            return
        rows = self.rows(offs)
        hoisted = {k: self.load(k, rows[k]) for k in range(self.n_in) if self.v.inner[k] == "0"}
        accumulate = self.v.mode == "accumulate"
        group, loop_id = (None, None) if accumulate else self.map_loop_md()

        def inner(i, _):
            ins = [hoisted[k] if k in hoisted
                   else self.load(k, self.elem_ptr(k, rows[k], i, d), group)
                   for k in range(self.n_in)]
            outs = self.m.emit(self.spec, ins)
            for j, val in enumerate(outs):
                k = self.n_in + j
                ptr = self.elem_ptr(k, rows[k], i, d)
                if accumulate:
                    val = self.combine(self.spec.reduce[0], self.load(k, ptr), val,
                                       self.out_dts[j])
                self.store(k, ptr, val, group)
            return []
        self.for_range(lo, hi, ir.Constant(I64, 1), [], inner, loop_id)

    # ------------------------------------------------------------------ reductions
    def reduction_level(self, d, offs):
        """Kept loops 0..n_keep-1 (after ``outer`` reduced ones), then one accumulation
        over the reduced loops."""
        v = self.v
        if d < v.outer + v.n_keep:
            lo, hi = self.bounds(d)

            def body(i, _):
                self.reduction_level(d + 1, self.advance(offs, i, d, range(self.nops)))
                return []
            self.for_range(lo, hi, ir.Constant(I64, 1), [], body)
            return
        kind = self.spec.reduce[0]
        out_dt = self.out_dts[0]
        acc_dt = accumulator_dtype(kind, out_dt)
        acc0 = ir.Constant(acc_dt.reg, reduce_identity(kind, acc_dt)) if acc_dt.kind != "b" \
            else ir.Constant(I1, reduce_identity(kind, acc_dt))
        acc = self.reduced_loops(d, offs, acc0, kind, out_dt, acc_dt)
        if acc_dt is not out_dt:
            acc = self.b.fptrunc(acc, out_dt.reg)
        k_out = self.n_in
        ptr = self.rows(offs)[k_out]
        if v.outer:                                 # outer reduced loops: combine in memory
            acc = self.combine(kind, self.load(k_out, ptr), acc, out_dt)
        self.store(k_out, ptr, acc)

    def reduced_loops(self, d, offs, acc, kind, out_dt, acc_dt):
        lo, hi = self.bounds(d)
        inputs = range(self.n_in)                  # outputs do not move along reduced dims
        if d < self.v.ndim - 1:
            def body(i, carried):
                return [self.reduced_loops(d + 1, self.advance(offs, i, d, inputs),
                                           carried[0], kind, out_dt, acc_dt)]
            return self.for_range(lo, hi, ir.Constant(I64, 1), [acc], body)[0]

        rows = self.rows(offs)
        hoisted = {k: self.load(k, rows[k]) for k in inputs if self.v.inner[k] == "0"}
        part0 = ir.Constant(out_dt.reg, reduce_identity(kind, out_dt)) if out_dt.kind != "b" \
            else ir.Constant(I1, reduce_identity(kind, out_dt))
        block = ir.Constant(I64, BLOCK)

        def one_block(blk, carried):
            b = self.b
            end = b.add(blk, block, flags=["nsw"])
            end = b.select(b.icmp_signed("<", end, hi), end, hi)

            def element(i, part):
                ins = [hoisted[k] if k in hoisted
                       else self.load(k, self.elem_ptr(k, rows[k], i, d)) for k in inputs]
                val = self.m.emit(self.spec, ins)[0]
                return [self.combine(kind, part[0], val, out_dt)]
            part = self.for_range(blk, end, ir.Constant(I64, 1), [part0], element)[0]
            if acc_dt is not out_dt:
                part = b.fpext(part, acc_dt.reg)
            return [self.combine(kind, carried[0], part, acc_dt)]
        return self.for_range(lo, hi, block, [acc], one_block)[0]

    def combine(self, kind, x, y, dt: DType):
        """One reduction step. Float add/mul may be reassociated (that is what lets the
        vectorizer keep several partial sums); nothing else in a kernel is."""
        b = self.b
        if dt.kind == "b":
            return b.or_(x, y) if kind in ("add", "max", "or") else b.and_(x, y)
        if dt.is_float:
            if kind == "add":
                return b.fadd(x, y, flags=["reassoc", "nsz"])
            if kind == "mul":
                return b.fmul(x, y, flags=["reassoc", "nsz"])
            if kind in ("max", "min"):
                return self.m._minmax(kind, x, y, dt)
            raise ValueError(f"reduction {kind!r} is not defined on {dt.name}")
        ops = {"add": b.add, "mul": b.mul, "and": b.and_, "or": b.or_}
        if kind in ops:
            return ops[kind](x, y)
        return self.m._minmax(kind, x, y, dt)


def heavy_vector_math(spec) -> bool:
    """Is the body heavy float32 vector math (vmath.POLY_F32)? Its elementwise loops are
    interleaved and get no vector epilogue (see vector_epilogue)."""
    return any(op in POLY_F32 and dt == "float32" for op, _, dt in spec.eqns)


def vector_epilogue(spec, variant: Variant) -> bool:
    """Should the loop vectorizer follow the main vector loop with a narrower vector loop for
    the remainder (LLVM's epilogue vectorization) before the scalar one? Not for heavy
    elementwise math: there it is a third copy of a long body (elemwise's kernel: 357 -> 265
    optimized IR lines, ~15-20% less optimizer + code generator time) that only ever runs on
    fewer than VF * INTERLEAVE elements per inner loop: such kernels run on long contiguous
    loops. Short rows of other kernels keep it. jit.load_function applies the answer."""
    return not (variant.mode == "map" and heavy_vector_math(spec))


def check_renders(spec) -> None:
    """Raise (ValueError, ...) where build_ir would for any variant of ``spec``: an op, dtype
    or reduction the backend cannot render. Emits the scalar body once, on function arguments,
    with no loops and no IR text: a fraction of the cost of build_ir."""
    n_ops = len(spec.in_dtypes) + len(spec.outputs)
    v = Variant("reduce" if spec.reduce else "map", 1, 0, ("1",) * n_ops, False)
    if v.mode != "map" and len(spec.outputs) != 1:
        raise ValueError("a reduction variant needs a spec with one output and a reduce")
    bld = _Builder(spec, v)
    # stand-ins for the loaded input registers: values of the right types, never printed
    ins = [ir.Argument(bld.fn, dt.reg, name=f"x{k}") for k, dt in enumerate(bld.in_dts)]
    outs = bld.m.emit(spec, ins)
    if spec.reduce is not None:
        kind, out_dt = spec.reduce[0], bld.out_dts[0]
        acc_dt = accumulator_dtype(kind, out_dt)
        reduce_identity(kind, acc_dt)
        bld.combine(kind, outs[0], outs[0], out_dt)


def build_ir(spec, variant: Variant) -> str:
    """LLVM IR text for ``spec`` under ``variant``; the entry point is named PLACEHOLDER."""
    if variant.mode != "map" and (spec.reduce is None or len(spec.outputs) != 1):
        raise ValueError("a reduction variant needs a spec with one output and a reduce")
    if len(variant.inner) != len(spec.in_dtypes) + len(spec.outputs):
        raise ValueError("variant.inner needs one stride kind per operand")
    return _Builder(spec, variant).build()
