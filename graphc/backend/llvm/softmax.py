"""Row-wise softmax kernel for the cross-entropy ops (float32), written directly as LLVM IR.

The generic KernelSpec route needs four kernels for a softmax (row max, exp, row sum, divide),
each a pass over the whole (n, k) matrix. Here one call does a row at a time while the row is
in L1: its max, then e = exp(z - max) stored into the output while summing it, then
e *= d/sum. So the matrix is read once and written once, and row blocks run on threads.

    softmax_rows(lo, hi, k, x, sx, b, out, sout, labels, nll, dnll, sdnll) -> bad
        rows [lo, hi) of x (row stride sx elements, unit column stride), optional bias b (k,)
        (null when the kernel is built without one), int32 or int64 labels (n,) ->
        out (row stride sout) and nll (n,): nll[i] = log(sum) - (z[i, label] - max), the
        reference's log(total) - s[i, y[i]] (log: vmath's float32 log, ~1.5e-7 rel. error).
        out is the softmax, or with ``grad`` the gradient of the nll for the incoming
        gradient dnll (element i * sdnll of row i: sdnll 0 broadcasts one value):
        dnll[i] * (softmax[i] - onehot(label[i])); dnll and sdnll are unused without grad.
        Labels count from the end when negative; ``bad`` is the number outside [-k, k)
        (their rows are computed for class 0: the caller raises the op's error).
        The arrays are data pointers, or with ``pyobj`` ndarray object addresses.

The loops are explicit 8-lane vector code, ``unroll`` vectors per iteration, with a scalar
tail: the loop vectorizer does not reorder float reductions (max, sum). The max ignores nan
(a vector select), which changes nothing: a nan in a row makes its exp sum nan and with it
every softmax entry and the nll, as in the reference. d/sum times e differs from the
reference's e / sum (times d) by at most one rounding (two).
"""
from __future__ import annotations

from time import perf_counter

import numpy as np
from llvmlite import ir

from . import jit
from .codegen import DATA_OFFSET, emit_for, splat
from .vmath import LN2_HI, LN2_LO, LOG2E, MathBuilder, log_f32

F32 = ir.FloatType()
I32 = ir.IntType(32)
I64 = ir.IntType(64)
I8 = ir.IntType(8)
PTR = ir.PointerType()
LANES = 8
UNROLL = 4                  # independent accumulators per iteration of the max and scale loops
VEC = ir.VectorType(F32, LANES)

# exp(t) for t <= _EXP_FLOOR is 0: t is clamped there, where n = round(t / ln 2) = -127 and
# the 2^n built from the low bits of k below is +0.0. Entries with exp(t) under float32's
# smallest normal (2^-126) are 0 or denormal, an absolute error under 1.2e-38 next to the row's
# largest entry exp(0) = 1.
_EXP_FLOOR = -88.0
# t * log2(e) + _ROUNDER rounds t / ln 2 to an integer n kept in the low mantissa bits:
# bits(k) = bits(1.5 * 2^23) + n + 127, and bits(1.5 * 2^23) << 23 wraps to 0, so
# bits(k) << 23 = bits(2^n) for n in [-126, 0] and 0 for n = -127.
_ROUNDER = 12582912.0 + 127.0
# exp(r) ~ 1 + r + r^2 (c2 + r (c3 + r (c4 + r (c5 + r c6)))) on |r| <= ln(2)/2: a degree-6
# minimax fit of the relative error (3e-9; 7e-8 with float32 rounding, as Cephes' degree 7)
_EXP_POLY = (1.3814382255077362e-3, 8.36875382810831e-3, 4.166839271783829e-2,
             0.1666651964187622, 0.4999999403953552, 1.0, 1.0)


class _Lanes:
    """Arithmetic on float32 scalars or 8-lane vectors (same code for the vector loop and its
    scalar tail); IEEE, no fast-math flags."""

    def __init__(self, b: ir.IRBuilder, vec: bool):
        self.b, self.vec = b, vec
        self.ty = VEC if vec else F32
        self.ity = ir.VectorType(I32, LANES) if vec else I32
        self.sfx = "v8f32" if vec else "f32"

    def c(self, value, ty=None):
        ty = ty or self.ty
        if isinstance(ty, ir.VectorType):
            return ir.Constant(ty, [ir.Constant(ty.element, value)] * LANES)
        return ir.Constant(ty, value)

    def fma(self, x, y, z):
        name = "llvm.fmuladd." + self.sfx
        fn = self.b.module.globals.get(name) or \
            ir.Function(self.b.module, ir.FunctionType(self.ty, [self.ty] * 3), name=name)
        return self.b.call(fn, [x, y, z])

    def load(self, ptr):
        return self.b.load(ptr, typ=self.ty, align=4)

    def max(self, acc, v):
        return self.b.select(self.b.fcmp_ordered(">", v, acc), v, acc)

    def exp_nonpositive(self, t):
        """exp(t) for the shifted logits t = z - max(z): t <= 0, or nan (-inf for masked
        entries, nan where the row holds nan or inf). vmath's expf handles any x; here less
        work is needed: no overflow, no denormal scaling, and 2^n from the bits of the rounded
        value (no float -> int conversion, no select after the fact). Max rel. error ~1.2e-7."""
        b, c = self.b, self.c
        # clamp: t < floor is false for nan, which stays nan through to the result
        tc = b.select(b.fcmp_ordered("<", t, c(_EXP_FLOOR)), c(_EXP_FLOOR), t)
        k = self.fma(tc, c(LOG2E), c(_ROUNDER))
        n = b.fsub(k, c(_ROUNDER))
        r = self.fma(n, c(-LN2_HI), tc)
        r = self.fma(n, c(-LN2_LO), r)
        p = c(_EXP_POLY[0])
        for coef in _EXP_POLY[1:]:
            p = self.fma(p, r, c(coef))
        scale = b.bitcast(b.shl(b.bitcast(k, self.ity), c(23, self.ity)), self.ty)
        return b.fmul(p, scale)


def _loop(b: ir.IRBuilder, start, stop, step, body, carried=()):
    """for (j = start; j < stop; j += step) carried = body(j, *carried); returns carried."""
    return emit_for(b, start, stop, ir.Constant(I64, step), list(carried),
                    lambda j, phis: body(j, *phis))


def _row_loop(b, k, body, init, combine, unroll=UNROLL):
    """Over j in [0, k): ``body(lanes, j, acc) -> acc`` on ``unroll`` independent vectors per
    iteration while unroll*LANES values remain, then on one vector while LANES remain, then
    on scalars; the accumulators (starting at ``init``) are combined with
    ``combine(lanes, a, b)`` and the total returned."""
    width = LANES * unroll
    kv = b.and_(k, ir.Constant(I64, -width))
    k1 = b.and_(k, ir.Constant(I64, -LANES))
    vec, one = _Lanes(b, True), _Lanes(b, False)

    def vbody(j, *accs):
        return [body(vec, b.add(j, ir.Constant(I64, LANES * u)), a) for u, a in enumerate(accs)]
    accs = _loop(b, ir.Constant(I64, 0), kv, width, vbody, [vec.c(init)] * unroll)
    acc = accs[0]
    for a in accs[1:]:
        acc = combine(vec, acc, a)
    if unroll > 1:
        (acc,) = _loop(b, kv, k1, LANES, lambda j, a: [body(vec, j, a)], [acc])
    s = b.extract_element(acc, ir.Constant(I64, 0))
    for lane in range(1, LANES):
        s = combine(one, s, b.extract_element(acc, ir.Constant(I64, lane)))
    (s,) = _loop(b, k1, k, 1, lambda j, a: [body(one, j, a)], [s])
    return s


def _at(b, base, j):
    return b.gep(base, [j], source_etype=F32)


def softmax_rows_ir(bias: bool, grad: bool, label_bits: int, pyobj: bool) -> str:
    mod = ir.Module()
    args = [I64, I64, I64, PTR, I64, PTR, PTR, I64, PTR, PTR, PTR, I64]
    fn = ir.Function(mod, ir.FunctionType(I64, args), name=jit.PLACEHOLDER)
    lo, hi, k, x, sx, bp, out, sout, labels, nll, dnll, sdnll = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    if pyobj:       # the array arguments are PyArrayObject addresses: their data pointers
        def data(a):
            return b.load(b.gep(a, [ir.Constant(I64, DATA_OFFSET)], source_etype=I8), typ=PTR)
        x, out, labels, nll = data(x), data(out), data(labels), data(nll)
        bp = data(bp) if bias else bp
        dnll = data(dnll) if grad else dnll
    scalar = _Lanes(b, False)
    lty = ir.IntType(label_bits)

    def row(i, bad):
        xr = _at(b, x, b.mul(i, sx))
        outr = _at(b, out, b.mul(i, sout))
        label = b.load(b.gep(labels, [i], source_etype=lty), typ=lty)
        label = b.sext(label, I64) if label_bits < 64 else label
        wrong = b.or_(b.icmp_signed("<", label, b.neg(k)), b.icmp_signed(">=", label, k))
        label = b.select(b.icmp_signed("<", label, ir.Constant(I64, 0)), b.add(label, k), label)
        label = b.select(wrong, ir.Constant(I64, 0), label)     # counted; the caller raises

        def z(lanes, j):
            v = lanes.load(_at(b, xr, j))
            return b.fadd(v, lanes.load(_at(b, bp, j))) if bias else v

        top = _row_loop(b, k, lambda L, j, acc: L.max(acc, z(L, j)), float("-inf"),
                        lambda L, u, v: L.max(u, v))
        shift = {True: splat(b, top, LANES), False: top}

        def exp_sum(lanes, j, acc):
            e = lanes.exp_nonpositive(b.fsub(z(lanes, j), shift[lanes.vec]))
            b.store(e, _at(b, outr, j), align=4)
            return b.fadd(acc, e)
        # one vector per iteration: the optimizer unrolls it 4x without register spills
        # (independent vectors of our own, 2 or 4, spilled), and out-of-order execution
        # overlaps the exp chains (~40 cycles) of successive iterations
        s = _row_loop(b, k, exp_sum, 0.0, lambda L, u, v: b.fadd(u, v), unroll=1)
        d = b.load(_at(b, dnll, b.mul(i, sdnll)), typ=F32) if grad else ir.Constant(F32, 1.0)
        r = b.fdiv(d, s)
        factor = {True: splat(b, r, LANES), False: r}

        def scale(lanes, j, acc):           # no reduction: the accumulators stay unused
            p = _at(b, outr, j)
            b.store(b.fmul(lanes.load(p), factor[lanes.vec]), p, align=4)
            return acc
        _row_loop(b, k, scale, 0.0, lambda L, u, v: u)
        if grad:                            # dx = d * (sm - onehot(label))
            p = _at(b, outr, label)
            b.store(b.fsub(scalar.load(p), d), p)
        picked = b.fsub(z(scalar, label), top)
        b.store(b.fsub(log_f32(MathBuilder(b), s), picked), _at(b, nll, i))
        return [b.add(bad, b.zext(wrong, I64))]

    (bad,) = _loop(b, lo, hi, 1, row, [ir.Constant(I64, 0)])
    b.ret(bad)
    return str(mod)


def load_softmax_rows(bias: bool, grad: bool, label_bits: int = 64, pyobj: bool = False) -> int:
    """Address of softmax_rows: with or without the bias operand, writing the softmax or
    (grad) the gradient of the nll, for int32 or int64 labels, taking data pointers or
    (pyobj) ndarray object addresses."""
    key = jit.cache_key("rowsoftmax-nll", str(bias), str(grad), str(label_bits), str(pyobj),
                        jit.source_hash("softmax.py"))
    return jit.load_function(key, lambda: softmax_rows_ir(bias, grad, label_bits, pyobj),
                             title=f"softmax_rows bias={bias} grad={grad}")


# ----------------------------------------------------------------- rows on the spin pool

_ROW_ARGS = 9               # softmax_rows' arguments after (lo, hi, k)
_RES = 4 + _ROW_ARGS        # index of slice 0's result in a region's data
_slice_fn: list = []


def _rows_slice_ir() -> str:
    """rows_slice(d, s), the spin pool's region function: d = int64 [softmax_rows, n,
    slices, k, its 9 other arguments, then one result word per slice]; slice s runs rows
    [s * n // slices, (s + 1) * n // slices) and stores what softmax_rows returned (its
    count of labels out of range) in its result word."""
    lines = ["define void @ENTRY_NAME(ptr %d, i64 %s) {", "entry:"]
    names = ["fi", "n", "slices", "k"] + [f"a{i}" for i in range(_ROW_ARGS)]
    for i, name in enumerate(names):
        lines += [f"  %p{name} = getelementptr inbounds i64, ptr %d, i64 {i}",
                  f"  %{name} = load i64, ptr %p{name}, align 8"]
    args = ", ".join(f"i64 %a{i}" for i in range(_ROW_ARGS))
    lines += ["  %fn = inttoptr i64 %fi to ptr", "  %x0 = mul i64 %s, %n",
              "  %lo = sdiv i64 %x0, %slices", "  %s1 = add i64 %s, 1", "  %x1 = mul i64 %s1, %n",
              "  %hi = sdiv i64 %x1, %slices",
              f"  %bad = call i64 %fn(i64 %lo, i64 %hi, i64 %k, {args})",
              f"  %ri = add i64 %s, {_RES}",
              "  %rp = getelementptr inbounds i64, ptr %d, i64 %ri",
              "  store i64 %bad, ptr %rp, align 8", "  ret void", "}"]
    return "\n".join(lines)


def _rows_slice_key() -> str:
    return jit.cache_key("rowsoftmax-slice", "O1", _rows_slice_ir())


def _rows_slice() -> int:
    if not _slice_fn:
        text = _rows_slice_ir()
        _slice_fn.append(jit.load_function(
            _rows_slice_key(), lambda: text.replace("ENTRY_NAME", jit.PLACEHOLDER),
            title="softmax rows slice", optimize=1))
    return _slice_fn[0]


class RowSplit:
    """softmax_rows over all rows, on one thread or split by rows over the spin pool,
    whichever has recently been faster (spinpool.TwoWays). A (256, 1000) float32 matrix
    (~130-170 us on one thread on the development machine) is too small for Python's thread
    pool, whose wake-up and join cost about what a split saves; the spin pool's cost a few
    microseconds. Not re-entrant (as a compiled function is not)."""

    MIN_ROWS_PER_SLICE = 8

    def __init__(self, fn_addr: int, one, threads: int):
        from .spinpool import TwoWays, prefetch
        # one(n, k, *args): all rows without the pool (the caller's way for large matrices)
        self.fn, self.one, self.threads = fn_addr, one, threads
        self.ways = TwoWays()
        self.slices = 2 * threads           # a late worker leaves whole slices to the others
        self.data = np.zeros(_RES + self.slices, np.int64)
        self.addr = self.data.ctypes.data
        prefetch("softmax-rows", _rows_slice, keys=(_rows_slice_key(),))

    def __call__(self, n, k, *args) -> int:
        """The sum of softmax_rows' results over rows [0, n); ``args``: its arguments after
        (lo, hi, k), None for a null pointer."""
        from .spinpool import get_pool, ready, usable
        slices = min(self.slices, n // self.MIN_ROWS_PER_SLICE)
        if slices < 2 or not usable(1) or not ready() or not _slice_fn:
            return self.one(n, k, *args)
        split = self.ways.split()
        start = perf_counter()
        ran = False
        if split:
            d = self.data
            d[:_RES] = (self.fn, n, slices, k, *[0 if a is None else a for a in args])
            pool = get_pool(self.threads)
            ran = pool is not None and pool.run(_slice_fn[0], self.addr, slices)
            if ran:
                bad = int(d[_RES:_RES + slices].sum())
        if not ran:
            bad = self.one(n, k, *args)
        self.ways.record(ran, perf_counter() - start)
        return bad
