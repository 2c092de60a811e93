"""Scalar semantics: one KernelSpec equation -> LLVM IR on scalar registers.

The reference for every op is numpy (see kernel_spec.SCALAR_OPS). Points where numpy's
behaviour is not the obvious one, and what this file does about each:

- Registers: bool is i1 (i8 in memory), ints are iN, floats are float/double.
- bool arithmetic is numpy's: the int result taken != 0 (add = or, mul = and, sub = xor,
  maximum = or, minimum = and, int_div = and, mod = False, pow = a or not b).
- Ops that only exist on floats (exp, log, sqrt, tanh, true_div, reciprocal, ...) on an
  int/bool dtype are computed in float64 and cast back: ``np.op(x.astype(f8)).astype(dtype)``.
  (numpy's own integer reciprocal is exactly that: ``1.0/x`` cast back.)
- int_div / mod: floor division and Python's sign rule; division by zero gives 0 (numpy gives 0
  with a warning), INT_MIN // -1 wraps to INT_MIN and INT_MIN % -1 is 0, never a SIGFPE.
- Float int_div / mod follow numpy's npy_divmod step by step (fmod, then sign fix-ups).
- maximum / minimum on floats propagate nan (llvm.maximum / llvm.minimum).
- cast float -> int is x86 ``cvtt`` like numpy on this platform: truncation, and nan, +-inf or
  out-of-range values give INT_MIN; int8/int16/uint8 targets go through int32 and wrap
  (numpy: np.float64(300).astype(np.int8) == 44, nan -> 0).
- round is half-to-even (llvm.roundeven), like np.round.
"""
from __future__ import annotations

from llvmlite import ir

from . import vmath
from .vmath import MathBuilder

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()
F64 = ir.DoubleType()


class DType:
    """How one numpy dtype lives in registers and in memory."""

    def __init__(self, name, reg, mem, kind, bits):
        self.name, self.reg, self.mem, self.kind, self.bits = name, reg, mem, kind, bits
        self.itemsize = max(1, bits // 8) if kind != "b" else 1

    @property
    def is_float(self):
        return self.kind == "f"

    @property
    def is_signed(self):
        return self.kind == "i"


DTYPES = {
    "bool": DType("bool", I1, I8, "b", 1),
    "int8": DType("int8", I8, I8, "i", 8),
    "int16": DType("int16", I16, I16, "i", 16),
    "int32": DType("int32", I32, I32, "i", 32),
    "int64": DType("int64", I64, I64, "i", 64),
    "uint8": DType("uint8", I8, I8, "u", 8),
    "float32": DType("float32", F32, F32, "f", 32),
    "float64": DType("float64", F64, F64, "f", 64),
}

# Ops that are defined on floats only; on other dtypes they go through float64.
FLOAT_ONLY = frozenset({"exp", "log", "log1p", "expm1", "sqrt", "tanh", "sin", "cos", "erf",
                        "sigmoid", "softplus", "true_div", "reciprocal"})
BITWISE = frozenset({"and", "or", "xor", "invert"})

_ICMP = {"lt": "<", "gt": ">", "le": "<=", "ge": ">=", "eq": "==", "neq": "!="}


def const(dt: DType, value):
    """An IR constant of dtype ``dt`` from a Python scalar (ints wrap like numpy casts)."""
    if dt.kind == "f":
        return ir.Constant(dt.reg, float(value))
    if dt.kind == "b":
        return ir.Constant(I1, int(bool(value)))
    v = int(value) & ((1 << dt.bits) - 1)
    if v >= 1 << (dt.bits - 1):
        v -= 1 << dt.bits
    return ir.Constant(dt.reg, v)


class ScalarEmitter(MathBuilder):
    """Emits the equations of a KernelSpec on scalar registers."""

    def emit(self, spec, in_values):
        """Return the register values of spec.outputs given the input registers."""
        vals = []

        def ref(r):
            if r[0] == "in":
                return in_values[r[1]]
            if r[0] == "eq":
                return vals[r[1]]
            return const(DTYPES[r[2]], r[1])

        for op, args, dtype in spec.eqns:
            xs = [ref(a) for a in args]
            arg_dts = [DTYPES[spec.ref_dtype(a)] for a in args]
            vals.append(self.op(op, xs, arg_dts, DTYPES[dtype]))
        return [ref(r) for r in spec.outputs]

    # ------------------------------------------------------------------------ dispatch
    def op(self, op, xs, arg_dts, dt: DType):
        if op == "cast":
            return self.cast(xs[0], arg_dts[0], dt)
        if op in _ICMP:
            return self.compare(op, xs[0], xs[1], arg_dts[0])
        if op == "switch":
            return self.b.select(xs[0], xs[1], xs[2])
        if op == "identity":
            return xs[0]
        if op == "clip":
            return self.minimum(self.maximum(xs[0], xs[1], dt), xs[2], dt)
        if op == "maximum":
            return self.maximum(xs[0], xs[1], dt)
        if op == "minimum":
            return self.minimum(xs[0], xs[1], dt)
        if dt.is_float:
            if op in BITWISE:
                raise ValueError(f"scalar op {op!r} is not defined on {dt.name}")
            return self.float_op(op, xs)
        if op in FLOAT_ONLY:
            f64 = DTYPES["float64"]
            ys = [self.cast(x, dt, f64) for x in xs]
            return self.cast(self.float_op(op, ys), f64, dt)
        if dt.kind == "b":
            return self.bool_op(op, xs)
        return self.int_op(op, xs, dt)

    # ------------------------------------------------------------------------ floats
    def float_op(self, op, xs):
        b = self.b
        x = xs[0]
        y = xs[1] if len(xs) > 1 else None
        unary = {
            "neg": lambda: b.fneg(x),
            "exp": lambda: vmath.exp(self, x),
            "log": lambda: vmath.log(self, x),
            "log1p": lambda: vmath.log1p(self, x),
            "expm1": lambda: vmath.expm1(self, x),
            "sqrt": lambda: self.call_f("sqrt", x),
            "sqr": lambda: b.fmul(x, x),
            "abs": lambda: self.fabs(x),
            "sgn": lambda: self.select(self.gt(x, self.c(x, 0.0)), self.c(x, 1.0),
                                       self.select(self.lt(x, self.c(x, 0.0)),
                                                   self.c(x, -1.0), x)),
            "tanh": lambda: vmath.tanh(self, x),
            "sin": lambda: self.call_f("sin", x),
            "cos": lambda: self.call_f("cos", x),
            "erf": lambda: vmath.erf(self, x),
            "floor": lambda: self.call_f("floor", x),
            "ceil": lambda: self.call_f("ceil", x),
            "round": lambda: self.call_f("roundeven", x),
            "sigmoid": lambda: vmath.sigmoid(self, x),
            "softplus": lambda: vmath.softplus(self, x),
            "reciprocal": lambda: b.fdiv(self.c(x, 1.0), x),
        }
        if op in unary:
            return unary[op]()
        binary = {
            "add": lambda: b.fadd(x, y),
            "sub": lambda: b.fsub(x, y),
            "mul": lambda: b.fmul(x, y),
            "true_div": lambda: b.fdiv(x, y),
            "int_div": lambda: self.float_divmod(x, y)[0],
            "mod": lambda: self.float_divmod(x, y)[1],
            "pow": lambda: self.call_f("pow", x, y),
        }
        if op in binary:
            return binary[op]()
        raise NotImplementedError(f"scalar op {op!r} on floats")

    def float_divmod(self, a, b_):
        """numpy's npy_floor_divide / npy_remainder (npymath), branch-free."""
        b = self.b
        zero = self.c(a, 0.0)
        mod = b.frem(a, b_)                                  # C fmod
        div = b.fdiv(b.fsub(a, mod), b_)
        has_mod = b.fcmp_unordered("!=", mod, zero)          # `if (mod)`: nan is true
        fix = b.and_(has_mod, b.xor(self.lt(b_, zero), self.lt(mod, zero)))
        mod2 = self.select(fix, b.fadd(mod, b_), mod)
        div2 = self.select(fix, b.fsub(div, self.c(a, 1.0)), div)
        mod3 = self.select(has_mod, mod2, self.copysign(zero, b_))
        fl = self.call_f("floor", div2)
        fl = self.select(self.gt(b.fsub(div2, fl), self.c(a, 0.5)),
                         b.fadd(fl, self.c(a, 1.0)), fl)
        q = b.fdiv(a, b_)
        fdiv = self.select(b.fcmp_unordered("!=", div2, zero), fl, self.copysign(zero, q))
        bzero = self.eq(b_, zero)
        return self.select(bzero, q, fdiv), self.select(bzero, mod, mod3)

    # ------------------------------------------------------------------------ bools
    def bool_op(self, op, xs):
        b = self.b
        x = xs[0]
        y = xs[1] if len(xs) > 1 else None
        one = ir.Constant(I1, 1)
        table = {
            "neg": lambda: x, "sqr": lambda: x, "abs": lambda: x, "sgn": lambda: x,
            "floor": lambda: x, "ceil": lambda: x, "round": lambda: x,
            "invert": lambda: b.xor(x, one),
            "add": lambda: b.or_(x, y), "sub": lambda: b.xor(x, y), "mul": lambda: b.and_(x, y),
            "int_div": lambda: b.and_(x, y), "mod": lambda: ir.Constant(I1, 0),
            "pow": lambda: b.or_(x, b.xor(y, one)),
            "and": lambda: b.and_(x, y), "or": lambda: b.or_(x, y), "xor": lambda: b.xor(x, y),
        }
        if op not in table:
            raise NotImplementedError(f"scalar op {op!r} on bool")
        return table[op]()

    # ------------------------------------------------------------------------ ints
    def int_op(self, op, xs, dt: DType):
        b = self.b
        x = xs[0]
        y = xs[1] if len(xs) > 1 else None
        zero = ir.Constant(dt.reg, 0)
        signed = dt.is_signed
        if op == "neg":
            return b.sub(zero, x)
        if op == "sqr":
            return b.mul(x, x)
        if op == "abs":
            return self.select(b.icmp_signed("<", x, zero), b.sub(zero, x), x) if signed else x
        if op == "sgn":
            pos = b.zext(b.icmp_unsigned("!=", x, zero) if not signed
                         else b.icmp_signed(">", x, zero), dt.reg)
            return b.sub(pos, b.zext(b.icmp_signed("<", x, zero), dt.reg)) if signed else pos
        if op in ("floor", "ceil", "round"):
            return x
        if op == "invert":
            return b.not_(x)
        simple = {"add": b.add, "sub": b.sub, "mul": b.mul,
                  "and": b.and_, "or": b.or_, "xor": b.xor}
        if op in simple:
            return simple[op](x, y)
        if op in ("int_div", "mod"):
            return self.int_divmod(x, y, dt)[0 if op == "int_div" else 1]
        if op == "pow":
            return self.int_pow(x, y, dt)
        raise NotImplementedError(f"scalar op {op!r} on {dt.name}")

    def int_divmod(self, a, d, dt: DType):
        """Floor division and Python-sign modulo without UB: the divisor is made safe
        (0 and -1 replaced by 1) and those two cases are patched afterwards."""
        b = self.b
        ty = dt.reg
        zero, one = ir.Constant(ty, 0), ir.Constant(ty, 1)
        dzero = b.icmp_signed("==", d, zero)
        if not dt.is_signed:
            safe = self.select(dzero, one, d)
            return (self.select(dzero, zero, b.udiv(a, safe)),
                    self.select(dzero, zero, b.urem(a, safe)))
        dneg1 = b.icmp_signed("==", d, ir.Constant(ty, -1))
        special = b.or_(dzero, dneg1)
        safe = self.select(special, one, d)
        q = b.sdiv(a, safe)
        r = b.srem(a, safe)
        # C truncates toward zero; floor needs one less when the remainder's sign differs.
        fix = b.and_(b.icmp_signed("!=", r, zero),
                     b.icmp_signed("<", b.xor(r, safe), zero))
        q = b.sub(q, b.zext(fix, ty))
        r = b.add(r, self.select(fix, safe, zero))
        q = self.select(dneg1, b.sub(zero, a), q)            # wraps for INT_MIN like numpy
        q = self.select(dzero, zero, q)
        r = self.select(special, zero, r)
        return q, r

    def int_pow(self, a, e, dt: DType):
        """Exponentiation by squaring over every exponent bit (branch-free, wraps like numpy).

        numpy refuses negative integer exponents; here they give the truncated value
        (1 for a == 1, +-1 for a == -1, else 0)."""
        b = self.b
        ty = dt.reg
        one = ir.Constant(ty, 1)
        r, base, k = one, a, e
        for _ in range(dt.bits - 1 if dt.is_signed else dt.bits):
            bit = b.trunc(k, I1)
            r = self.select(bit, b.mul(r, base), r)
            base = b.mul(base, base)
            k = b.lshr(k, one)
        if not dt.is_signed:
            return r
        zero = ir.Constant(ty, 0)
        odd = b.trunc(e, I1)
        neg = self.select(b.icmp_signed("==", a, one), one,
                          self.select(b.icmp_signed("==", a, ir.Constant(ty, -1)),
                                      self.select(odd, ir.Constant(ty, -1), one), zero))
        return self.select(b.icmp_signed("<", e, zero), neg, r)

    # ------------------------------------------------------------------------ shared
    def maximum(self, x, y, dt: DType):
        return self._minmax("max", x, y, dt)

    def minimum(self, x, y, dt: DType):
        return self._minmax("min", x, y, dt)

    def _minmax(self, which, x, y, dt: DType):
        if dt.is_float:                       # nan-propagating, like np.maximum
            return self.call_f("maximum" if which == "max" else "minimum", x, y)
        if dt.kind == "b":
            return self.b.or_(x, y) if which == "max" else self.b.and_(x, y)
        name = ("s" if dt.is_signed else "u") + which
        fn = self.intrinsic(f"llvm.{name}.i{dt.bits}", dt.reg, [dt.reg, dt.reg])
        return self.b.call(fn, [x, y])

    def compare(self, op, x, y, dt: DType):
        b = self.b
        if dt.is_float:
            if op == "neq":
                return b.fcmp_unordered("!=", x, y)           # nan != nan is True
            return b.fcmp_ordered(_ICMP[op], x, y)
        if dt.is_signed:
            return b.icmp_signed(_ICMP[op], x, y)
        return b.icmp_unsigned(_ICMP[op], x, y)

    def cast(self, x, src: DType, dst: DType):
        """numpy ``astype`` from src to dst (x86 conventions for float -> int)."""
        b = self.b
        if src.name == dst.name:
            return x
        if dst.kind == "b":
            if src.is_float:
                return b.fcmp_unordered("!=", x, ir.Constant(src.reg, 0.0))
            return b.icmp_unsigned("!=", x, ir.Constant(src.reg, 0))
        if src.kind == "b":
            return b.uitofp(x, dst.reg) if dst.is_float else b.zext(x, dst.reg)
        if src.is_float and dst.is_float:
            return b.fpext(x, dst.reg) if dst.bits > src.bits else b.fptrunc(x, dst.reg)
        if dst.is_float:
            return b.sitofp(x, dst.reg) if src.is_signed else b.uitofp(x, dst.reg)
        if src.is_float:
            if dst.bits == 64:
                return self._cvtt(x, I64, -9223372036854775808.0, 9223372036854775808.0)
            lo = -2147483648.0 if src.bits == 32 else -2147483649.0
            v = self._cvtt(x, I32, lo, 2147483648.0, lo_inclusive=src.bits == 32)
            return v if dst.bits == 32 else b.trunc(v, dst.reg)
        if dst.bits < src.bits:
            return b.trunc(x, dst.reg)
        if dst.bits > src.bits:
            return b.sext(x, dst.reg) if src.is_signed else b.zext(x, dst.reg)
        return x                                               # int8 <-> uint8

    def _cvtt(self, x, ity, lo, hi, lo_inclusive=True):
        """fptosi with x86 cvtt semantics: nan/out-of-range -> INT_MIN (no poison escapes:
        the out-of-range fptosi result is discarded by the select)."""
        b = self.b
        above = self.ge(x, self.c(x, lo)) if lo_inclusive else self.gt(x, self.c(x, lo))
        ok = b.and_(above, self.lt(x, self.c(x, hi)))
        int_min = ir.Constant(ity, -(1 << (ity.width - 1)))
        return self.select(ok, b.fptosi(x, ity), int_min)
