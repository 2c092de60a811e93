"""Row-wise softmax kernel for the cross-entropy ops (float32), written directly as LLVM IR.

The generic KernelSpec route needs four kernels for a softmax (row max, exp, row sum, divide),
each a pass over the whole (n, k) matrix. Here one call does a row at a time while the row is
in L1: its max, then e = exp(z - max) stored into the output while summing it, then
e *= 1/sum. So the matrix is read once and written once, and row blocks run on threads.

    softmax_rows(lo, hi, k, x, sx, b, sm, ssm, labels, nll)
        rows [lo, hi) of x (row stride sx elements, unit column stride), optional bias b (k,)
        (null when the kernel is built without one), int64 labels (n,) in [-k, k) ->
        sm (row stride ssm) and nll (n,): nll[i] = log(sum) - (z[i, label] - max), the
        reference's log(total) - s[i, y[i]] (log: vmath's float32 log, ~1.5e-7 rel. error)

The loops are explicit 8-lane vector code, four vectors per iteration, with a scalar tail:
the loop vectorizer does not reorder float reductions (max, sum), and on the exp loop it
chose one vector per iteration, whose ~50-cycle dependency chain then bounded the loop
(measured 4x slower than four independent chains). The max ignores nan (a vector select),
which changes nothing: a nan in a row makes its exp sum nan and with it every softmax entry
and the nll, as in the reference. 1/sum times e differs from the reference's e / sum by at
most one rounding.
"""
from __future__ import annotations

import hashlib
import os

from llvmlite import ir

from . import jit
from .codegen import emit_for
from .vmath import LN2_HI, LN2_LO, LOG2E, MathBuilder, log_f32

F32 = ir.FloatType()
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
LANES = 8
UNROLL = 4                  # independent vectors per iteration (hides the latency chains)
VEC = ir.VectorType(F32, LANES)

# exp(t) below this is under float32's smallest normal (2^-126): such entries count as 0, an
# absolute error under 1.2e-38 next to the row's largest entry exp(0) = 1.
_EXP_FLOOR = -87.0
_ROUNDER = 12582912.0       # 1.5 * 2^23: t + _ROUNDER rounds t to an integer in its low bits
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
             1.6666665459e-1, 5.0000001201e-1)          # Cephes expf, as graphc's vmath


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
        entries, nan where the row holds nan or inf). vmath's expf handles any x; here half
        its work goes: no overflow, no denormal results, and 2^n from the bits of the rounded
        value instead of a float -> int conversion. Max rel. error ~1.2e-7."""
        b, c = self.b, self.c
        small = b.fcmp_ordered("<", t, c(_EXP_FLOOR))      # false for nan: it stays nan
        tc = b.select(small, c(_EXP_FLOOR), t)
        k = self.fma(tc, c(LOG2E), c(_ROUNDER))              # low bits: n = round(t / ln 2)
        n = b.fsub(k, c(_ROUNDER))
        r = self.fma(n, c(-LN2_HI), tc)
        r = self.fma(n, c(-LN2_LO), r)
        p = c(_EXP_POLY[0])
        for coef in _EXP_POLY[1:]:
            p = self.fma(p, r, c(coef))
        y = b.fadd(self.fma(p, b.fmul(r, r), r), c(1.0))
        # bits(k) = bits(_ROUNDER) + n, and bits(_ROUNDER) << 23 wraps to 0: 2^n, n >= -126
        bits = b.shl(b.bitcast(k, self.ity), c(23, self.ity))
        scale = b.bitcast(b.add(bits, c(127 << 23, self.ity)), self.ty)
        return b.select(small, c(0.0), b.fmul(y, scale))


def _loop(b: ir.IRBuilder, start, stop, step, body, carried=()):
    """for (j = start; j < stop; j += step) carried = body(j, *carried); returns carried."""
    return emit_for(b, start, stop, ir.Constant(I64, step), list(carried),
                    lambda j, phis: body(j, *phis))


def _row_loop(b, k, body, init, combine):
    """Over j in [0, k): ``body(lanes, j, acc) -> acc`` on UNROLL independent vectors per
    iteration while UNROLL*LANES values remain, then on one vector while LANES remain, then
    on scalars; the accumulators (starting at ``init``) are combined with
    ``combine(lanes, a, b)`` and the total returned."""
    width = LANES * UNROLL
    kv = b.and_(k, ir.Constant(I64, -width))
    k1 = b.and_(k, ir.Constant(I64, -LANES))
    vec, one = _Lanes(b, True), _Lanes(b, False)

    def vbody(j, *accs):
        return [body(vec, b.add(j, ir.Constant(I64, LANES * u)), a) for u, a in enumerate(accs)]
    accs = _loop(b, ir.Constant(I64, 0), kv, width, vbody, [vec.c(init)] * UNROLL)
    acc = accs[0]
    for a in accs[1:]:
        acc = combine(vec, acc, a)
    (acc,) = _loop(b, kv, k1, LANES, lambda j, a: [body(vec, j, a)], [acc])
    s = b.extract_element(acc, ir.Constant(I64, 0))
    for lane in range(1, LANES):
        s = combine(one, s, b.extract_element(acc, ir.Constant(I64, lane)))
    (s,) = _loop(b, k1, k, 1, lambda j, a: [body(one, j, a)], [s])
    return s


def _at(b, base, j):
    return b.gep(base, [j], source_etype=F32)


def _splat(b, v):
    """The float32 scalar ``v`` in all lanes of a vector."""
    one = b.insert_element(ir.Constant(VEC, ir.Undefined), v, ir.Constant(I32, 0))
    return b.shuffle_vector(one, ir.Constant(VEC, ir.Undefined),
                            ir.Constant(ir.VectorType(I32, LANES), [0] * LANES))


def softmax_rows_ir(bias: bool) -> str:
    mod = ir.Module()
    args = [I64, I64, I64, PTR, I64, PTR, PTR, I64, PTR, PTR]
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), args), name=jit.PLACEHOLDER)
    lo, hi, k, x, sx, bp, sm, ssm, labels, nll = fn.args
    for a in (x, bp, sm, labels, nll):
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def row(i):
        xr = _at(b, x, b.mul(i, sx))
        smr = _at(b, sm, b.mul(i, ssm))

        def z(lanes, j):
            v = lanes.load(_at(b, xr, j))
            return b.fadd(v, lanes.load(_at(b, bp, j))) if bias else v

        top = _row_loop(b, k, lambda L, j, acc: L.max(acc, z(L, j)), float("-inf"),
                        lambda L, u, v: L.max(u, v))

        shift = {True: _splat(b, top), False: top}

        def exp_sum(lanes, j, acc):
            e = lanes.exp_nonpositive(b.fsub(z(lanes, j), shift[lanes.vec]))
            b.store(e, _at(b, smr, j), align=4)
            return b.fadd(acc, e)
        s = _row_loop(b, k, exp_sum, 0.0, lambda L, u, v: b.fadd(u, v))
        r = b.fdiv(ir.Constant(F32, 1.0), s)
        factor = {True: _splat(b, r), False: r}

        def scale(lanes, j, acc):           # no reduction: the accumulators stay unused
            p = _at(b, smr, j)
            b.store(b.fmul(lanes.load(p), factor[lanes.vec]), p, align=4)
            return acc
        _row_loop(b, k, scale, 0.0, lambda L, u, v: u)
        label = b.load(b.gep(labels, [i], source_etype=I64), typ=I64)
        label = b.select(b.icmp_signed("<", label, ir.Constant(I64, 0)), b.add(label, k), label)
        picked = b.fsub(z(_Lanes(b, False), label), top)
        b.store(b.fsub(log_f32(MathBuilder(b), s), picked), _at(b, nll, i))
        return []

    _loop(b, lo, hi, 1, row)
    b.ret_void()
    return str(mod)


_SOURCE_HASH = None


def _source_hash() -> str:
    """This file's text, part of the cache key (the generic codegen sources are in every key
    through jit.cache_key already)."""
    global _SOURCE_HASH
    if _SOURCE_HASH is None:
        with open(os.path.abspath(__file__), "rb") as f:
            _SOURCE_HASH = hashlib.sha256(f.read()).hexdigest()
    return _SOURCE_HASH


def load_softmax_rows(bias: bool) -> int:
    """Address of softmax_rows, with or without the bias operand."""
    key = jit.cache_key("rowsoftmax-nll", str(bias), _source_hash())
    return jit.load_function(key, lambda: softmax_rows_ir(bias), title=f"softmax_rows bias={bias}")
