"""Small-M float32 matrix products against a pre-packed right operand, on the spin pool.

A recurrent step multiplies a small batch by the same weight matrix at every step (an LSTM's
32x256 @ 256x1024, and 32x1024 @ 1024x256 in its backward loop). BLAS repacks the 1 MB
weight at every call and its threads gain little at this size: numpy's OpenBLAS took
~275-300 us per product on one or two threads on the development machine (2-core AMD EPYC).
Here the weight is packed once per loop (graphc.tensor.packed.pack_weights) into column
panels of NR = 16 that are contiguous along K, and a register-blocked kernel written in LLVM
IR (4 rows x 16 columns of accumulators: two 8-lane loads and four broadcasts per k) runs
over panel ranges: ~210-236 us on one thread; split over two threads ~125-155 us (the same
machine, in-process). The split runs on graphc's native spin pool (spinpool.py): Python's
thread pool costs a wake-up per call (two threads were slower than one: 317 vs 236 us).

    pg_gemm(p0, p1, M, K, A, lda, Bp, C, ldc, N, E1, ld1, E2, ld2)
        C[:, cols] = A @ B[:, cols] (+ E1[:, cols]) (+ E2[:, cols]) for the columns
        cols = p*16:(p+1)*16 of panels p in [p0, p1); A (M, K) with row stride lda and unit
        column stride, C (M, N) with row stride ldc, Bp the packed B: shape
        (ceil(N/16), K, 16), zero padded; E1, E2 null (no addend) or (M, N) with unit
        column stride and row stride ld1, ld2 (0: one row added to every row).
    pg_slice(d, s)
        the pool's region function: d = int64[15] (slices, panels, then pg_gemm's
        arguments from M on, then the address of pg_gemm); slice s gets panels
        [s * panels // slices, (s + 1) * panels // slices).

Rows are taken MR at a time; the rows of the last block past M are computed from row M - 1
and not stored, and the last panel of an N that is not a multiple of 16 is stored through a
lane mask, so the function has one block body (its compile time: ~0.26 s at -O3 with a
body per row count and per-column stores, ~0.03 s now).

Each entry is the plain sum over k in order (one fma per term), then the addends in order,
as a step's ``(x_t @ Wx + h @ Wh) + b`` adds them, so results differ from BLAS's only by
the rounding order of the product. The addends are read as the sum is stored: the same
pass over C, without a second kernel (a scan step's separate add cost ~19 us per step).

K is not blocked: 256-deep blocks that keep a slice of a 64 KB panel in L1 (the sum carried
in C between blocks) ran the backward shape 8-10% slower, on one thread and split (the
panels stream from L2 at the rate the fmas need them).
"""
from __future__ import annotations

import ctypes
from time import perf_counter

import numpy as np
from llvmlite import ir

from graphc.tensor.packed import PANEL

from . import jit
from .codegen import emit_for, if_then_values, splat
from .kernel import data_pointer
from .spinpool import TwoWays, get_pool, prefetch, ready, usable

F32 = ir.FloatType()
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
LANES = 8
NR = PANEL                 # columns per panel: two vectors
assert NR == 2 * LANES
MR = 4                     # rows per register block (8 accumulators; 6 rows ran no faster)
VEC = ir.VectorType(F32, LANES)
_GEMM_ARGS = [I64, I64, I64, I64, PTR, I64, PTR, PTR, I64, I64, PTR, I64, PTR, I64]


def _c(v):
    return ir.Constant(I64, v)


def _gemm_function(mod, name):
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), _GEMM_ARGS), name=name)
    p0, p1, m, k, a, lda, bp, c, ldc, n, e1, ld1, e2, ld2 = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    fma = ir.Function(mod, ir.FunctionType(VEC, [VEC] * 3), name="llvm.fma.v8f32")
    mask_ty = ir.VectorType(ir.IntType(1), LANES)
    mstore = ir.Function(mod, ir.FunctionType(ir.VoidType(), [VEC, PTR, I32, mask_ty]),
                         name="llvm.masked.store.v8f32.p0")
    mload = ir.Function(mod, ir.FunctionType(VEC, [PTR, I32, mask_ty, VEC]),
                        name="llvm.masked.load.v8f32.p0")
    zero = ir.Constant(VEC, [0.0] * LANES)
    lanes = ir.Constant(ir.VectorType(I32, LANES), list(range(LANES)))
    null = ir.Constant(PTR, None)
    pref = ir.Function(mod, ir.FunctionType(ir.VoidType(), [PTR, I32, I32, I32]),
                       name="llvm.prefetch.p0")
    has = [b.icmp_unsigned("!=", e1, null), b.icmp_unsigned("!=", e2, null)]

    def plus(cond, vals, ptr, masks):
        """vals + the 16 floats at ptr (masked to the panel's columns) where ``cond``."""
        return if_then_values(b, cond, vals, lambda: [
            b.fadd(v, b.call(mload, [b.gep(ptr, [_c(h * LANES)], source_etype=F32),
                                     ir.Constant(I32, 4), masks[h], zero]))
            for h, v in enumerate(vals)])

    def block(bpan, col0, masks, i0):
        """C[i0:i0+MR, panel] = A[i0:i0+MR] @ panel (+ e1 + e2), rows past M computed
        from row M-1 and not stored."""
        last = b.sub(m, _c(1))
        rows = [b.select(b.icmp_signed("<", b.add(i0, _c(r)), m), b.add(i0, _c(r)), last)
                for r in range(MR)]
        a_rows = [b.gep(a, [b.mul(i, lda)], source_etype=F32) for i in rows]
        # the addends' lines, fetched while the K loop runs: read only after it, each was
        # a cache miss (rows 4 KB apart, evicted by the panels since) that stalled the
        # next block's loop: the addends cost +15% of the LSTM's forward product (more
        # than a separate pass), +3% with this (one thread, in-process)
        for e, ld, h in ((e1, ld1, has[0]), (e2, ld2, has[1])):
            with b.if_then(h):
                for i in rows:
                    ptr = b.gep(e, [b.add(b.mul(i, ld), col0)], source_etype=F32)
                    for off in (0, NR - 1):         # the 16 floats may span two lines
                        b.call(pref, [b.gep(ptr, [_c(off)], source_etype=F32),
                                      ir.Constant(I32, 0), ir.Constant(I32, 3),
                                      ir.Constant(I32, 1)])

        def kstep(kk, accs):
            bk = b.gep(bpan, [b.mul(kk, _c(NR))], source_etype=F32)
            b0 = b.load(bk, typ=VEC, align=4)
            b1 = b.load(b.gep(bk, [_c(LANES)], source_etype=F32), typ=VEC, align=4)
            out = []
            for r in range(MR):
                x = splat(b, b.load(b.gep(a_rows[r], [kk], source_etype=F32), typ=F32), LANES)
                out += [b.call(fma, [x, b0, accs[2 * r]]), b.call(fma, [x, b1, accs[2 * r + 1]])]
            return out
        accs = emit_for(b, _c(0), k, _c(1), [zero] * (2 * MR), kstep)
        # the plain sum over k, then the addends in order (all rows' read before the
        # first store: no load waits behind a masked store to a line 4 KB away)
        sums = []
        for r in range(MR):
            vals = accs[2 * r:2 * r + 2]
            for e, ld, h in ((e1, ld1, has[0]), (e2, ld2, has[1])):
                ptr = b.gep(e, [b.add(b.mul(rows[r], ld), col0)], source_etype=F32)
                vals = plus(h, vals, ptr, masks)
            sums.append(vals)
        for r in range(MR):
            i = b.add(i0, _c(r))
            with b.if_then(b.icmp_signed("<", i, m)):
                row = b.gep(c, [b.add(b.mul(i, ldc), col0)], source_etype=F32)
                for h in range(2):
                    b.call(mstore, [sums[r][h], b.gep(row, [_c(h * LANES)], source_etype=F32),
                                    ir.Constant(I32, 4), masks[h]])

    def panel(p, _):
        bpan = b.gep(bp, [b.mul(p, b.mul(k, _c(NR)))], source_etype=F32)
        col0 = b.mul(p, _c(NR))
        # lanes < the panel's columns (< NR only in the last panel); compared as i32 lanes,
        # one vector compare (i64 lanes took a dozen packing instructions per use)
        cols = b.sub(n, col0)
        cols = b.trunc(b.select(b.icmp_signed("<", cols, _c(NR)), cols, _c(NR)), I32)
        masks = [b.icmp_signed("<", lanes, splat(b, b.sub(cols, ir.Constant(I32, h * LANES)),
                                                 LANES)) for h in range(2)]
        emit_for(b, _c(0), m, _c(MR), [], lambda i0, _: block(bpan, col0, masks, i0) or [])
        return []
    emit_for(b, p0, p1, _c(1), [], panel)
    b.ret_void()
    return fn


def _slice_ir() -> str:
    """pg_slice(d, s): slice s of d[0] slices of the d[1] panels, through the pg_gemm whose
    address is d[14] (the spin pool's region signature)."""
    fields = ("slices", "panels", "m", "k", "a", "lda", "bp", "c", "ldc", "n", "e1", "ld1",
              "e2", "ld2", "gemm")
    lines = ["define void @ENTRY_NAME(ptr %d, i64 %s) {", "entry:"]
    for i, name in enumerate(fields):
        lines += [f"  %p{name} = getelementptr inbounds i64, ptr %d, i64 {i}",
                  f"  %{name} = load i64, ptr %p{name}, align 8"]
    ptrs = ("a", "bp", "c", "e1", "e2")
    lines += ["  %x0 = mul i64 %s, %panels", "  %lo = sdiv i64 %x0, %slices",
              "  %s1 = add i64 %s, 1", "  %x1 = mul i64 %s1, %panels",
              "  %hi = sdiv i64 %x1, %slices", "  %f = inttoptr i64 %gemm to ptr"]
    lines += [f"  %{p}p = inttoptr i64 %{p} to ptr" for p in ptrs]
    lines += ["  call void %f(i64 %lo, i64 %hi, i64 %m, i64 %k, ptr %ap, i64 %lda, ptr %bpp, "
              "ptr %cp, i64 %ldc, i64 %n, ptr %e1p, i64 %ld1, ptr %e2p, i64 %ld2)",
              "  ret void", "}"]
    return "\n".join(lines)


def packed_gemm_ir() -> str:
    """IR of pg_gemm; the entry point is jit.PLACEHOLDER."""
    mod = ir.Module(name="packgemm")
    _gemm_function(mod, jit.PLACEHOLDER)
    return str(mod)


_GEMM_PROTO = ctypes.CFUNCTYPE(None, *([ctypes.c_int64] * 4 + [ctypes.c_void_p, ctypes.c_int64,
                                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                       ctypes.c_int64] + [ctypes.c_void_p, ctypes.c_int64] * 2))
_fns: dict = {}
_OPT = 1                   # optimizer level of pg_gemm


def _slice_key() -> str:
    return jit.cache_key("packgemm-slice", "O1", _slice_ir())


def _gemm_key() -> str:
    return jit.cache_key("packgemm", str(_OPT), jit.source_hash("packgemm.py"))


def _load(region: bool):
    """pg_slice's address (``region``), else pg_gemm as a ctypes function."""
    fn = _fns.get(region)
    if fn is None:
        if region:
            text = _slice_ir()
            fn = jit.load_function(_slice_key(),
                                   lambda: text.replace("ENTRY_NAME", jit.PLACEHOLDER),
                                   title="packed gemm slice", optimize=1)
        else:
            # explicit vector code: -O1 keeps the register blocking, at a fraction of O3's
            # compile time
            fn = _GEMM_PROTO(jit.load_function(_gemm_key(), packed_gemm_ir, title="packed gemm",
                                               optimize=_OPT))
        _fns[region] = fn
    return fn


def _gemm_address() -> int:
    addr = _fns.get("address")
    if addr is None:
        addr = _fns["address"] = ctypes.cast(_load(False), ctypes.c_void_p).value
    return addr


def row_major(a):
    """Whether pg_gemm can read ``a`` as it is: a matrix with unit column stride and a
    non-negative row stride of whole elements."""
    return a.ndim == 2 and (a.shape[1] <= 1 or a.strides[1] == 4) and a.strides[0] % 4 == 0 \
        and a.strides[0] >= 0


class PackedProduct:
    """``out[...] = a @ B (+ e1 (+ e2))`` for float32 ``a`` (M, K), B given packed
    (pack_weights) and up to two float32 addends of shape (M, N) or (1, N), on one thread or
    split over ``threads`` (the spin pool), whichever has recently been faster
    (spinpool.TwoWays). Not re-entrant (one region buffer per product, as a compiled
    function is not)."""

    MIN_PANELS_PER_THREAD = 4

    def __init__(self):
        self.ways = TwoWays()
        self.region = (ctypes.c_int64 * 15)()       # pg_slice's d, kept across calls
        self.region_addr = ctypes.addressof(self.region)
        prefetch("packgemm", lambda: (_load(True), _load(False)),
                 keys=(_slice_key(), _gemm_key()))

    def __call__(self, a, bp, n, out, threads, addends=()):
        if not row_major(a):
            a = np.ascontiguousarray(a)
        m, k = a.shape
        panels = bp.shape[0]
        if m == 0 or n == 0:
            return out
        if k == 0:
            out[...] = 0
            for e in addends:
                out += e
            return out
        lda = a.strides[0] // 4          # 0 for a broadcast row: every row reads it
        ldc = max(1, out.strides[0] // 4)
        ext = [0, 0, 0, 0]               # e1, ld1, e2, ld2 (null: no addend)
        kept = []                        # copies made here live until the kernel ran
        for j, e in enumerate(addends):
            if not row_major(e):
                e = np.ascontiguousarray(e)
                kept.append(e)
            ext[2 * j] = data_pointer(e)
            ext[2 * j + 1] = e.strides[0] // 4 if e.shape[0] > 1 else 0
        args = (m, k, data_pointer(a), lda, data_pointer(bp), data_pointer(out), ldc, n, *ext)
        t = min(threads, panels // self.MIN_PANELS_PER_THREAD)
        if t < 2 or not usable(1):
            _load(False)(0, panels, *args)
            return out
        # split only once the pool's code is loaded (prefetched in the background)
        split = self.ways.split() and ready() and True in _fns
        start = perf_counter()
        if split:
            slices = 2 * t          # a late worker leaves whole slices to the others
            self.region[:] = (slices, panels, *args, _gemm_address())
            split = get_pool(t).run(_load(True), self.region_addr, slices)
        if not split:
            _load(False)(0, panels, *args)
        self.ways.record(split, perf_counter() - start)
        return out
