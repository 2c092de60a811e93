"""Scalar math written as straight-line LLVM IR, so that loops around it vectorize.

Calls such as ``llvm.exp.f32`` lower to scalar libm calls and stop the loop vectorizer (a fused
tanh/sigmoid/exp chain then runs slower than numpy). The float32 functions here are therefore
branch-free polynomial approximations built from fmuladd, selects and integer bit tricks,
which the vectorizer widens to 8-lane AVX2 code. All of them handle nan, +-inf, +-0, overflow
and the denormal range the way numpy does (up to rounding); max relative errors measured
against float64 references are in the docstrings (tests/backend/test_llvm_kernels.py checks
< 1e-5 on edge values for every op, and < 1e-6 on a sweep of 4.5M arguments for exp, tanh and
sigmoid; tests/backend/test_llvm_vmath.py bounds every float32 function here in ulps).

float64 uses libm (``exp``, ``log1p``, ``tanh``, ``erf``, ...): exact to ~1 ulp, scalar.

Coefficients: log is the Cephes single-precision minimax polynomial (S. Moshier), exp a
degree-4 minimax fit in the Cephes scheme (EXP_POLY); tanh is Eigen's 13/6 rational
interpolant; erfc is the Chebyshev fit from Numerical Recipes (fractional error < 1.2e-7)
and erf near 0 is its Taylor series.

Cost matters as much as accuracy here: a fused chain such as tanh(a*x+b)*sigmoid(x)+exp(-x*x)
is compute-bound (~90 AVX2 instructions per 8 elements), so special values are handled by
clamping the argument (min/max keep nan) and letting overflow/underflow happen naturally,
not by selects after the fact, and each function has at most one division. Such loop bodies
(interleaved by 2, ~200-330 instructions) are bound by their dependency chains, not by a port:
on Zen 3, the LSTM gate kernel (3 sigmoids + 2 tanh per element) ran 0.90x as long with
every division replaced by a multiply (wrong results; the bound of any division trick),
and 1.03-1.31x as long with vrcpps + Newton-Raphson (LLVM's arcp lowering, with or without
fma) or a bit-trick estimate + 3 Newton steps, so divisions stay IEEE fdiv (exact, shorter
latency). What paid was shortening chains and bodies: Estrin in exp (one term less), one
scale factor in exp(x <= 0), sigmoid as one division of a picked numerator (0.82-0.91x on
that kernel, 0.75-0.90x on the elemwise one, one thread); exp of -(x*x) and the like taking
that exp(x <= 0) (see nonpositive): elemwise 0.93-0.96x more; Estrin in log: log, log1p 0.91x.
(Estrin in tanh's numerator took the gate kernel further, 0.87x -> 0.79x, but cost the
elemwise one 4%: one more multiply and one more live value, which spills there; left out.)
"""
from __future__ import annotations

import math

from llvmlite import ir

F32 = ir.FloatType()
F64 = ir.DoubleType()
I1 = ir.IntType(1)
I32 = ir.IntType(32)
I64 = ir.IntType(64)

LOG2E = 1.44269504088896341
LN2_HI = 0.693359375            # ln2 split so that n*LN2_HI is exact for |n| < 2^9
LN2_LO = -2.12194440e-4
# exp(x) is finite up to x = 88.7228317 and rounds to 0 below x = -103.972084; arguments are
# clamped just outside that range, where the scaling below overflows to inf / underflows to 0.
EXP_CLAMP_HI = 89.0
EXP_CLAMP_LO = -104.0
# fma(x, log2(e), EXP_SHIFT) rounds x*log2(e) to an integer n held in the low mantissa bits:
# bits(j) = 0x4B400000 + n + 254 for |n| < 2^22 (1.5 * 2^23 pins the exponent).
EXP_SHIFT = 1.5 * 2 ** 23 + 254.0
# For x <= 0: bits(j) = 0x4B400000 + n + 151, n + 151 in [1, 151] is 2^(n + 24)'s exponent field.
EXP_SHIFT_NONPOS = 1.5 * 2 ** 23 + 151.0
# P(r) of exp(r) = 1 + r + r^2 P(r) on |r| <= ln2/2, highest degree first: a relative-error
# minimax fit (Lawson's iteration, rounded to float32) of degree 4; its own error, 3e-9, is
# far below float32 rounding, so one term less than Cephes' expf costs no accuracy.
EXP_POLY = (1.3814539415761828e-3, 8.36874544620514e-3, 4.166838899254799e-2,
            0.1666652113199234, 0.4999999403953552)
# Cephes logf's polynomial, highest degree first.
LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
            1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
            3.3333331174e-1)
TANH_CLAMP = 9.0                # tanh(x) rounds to +-1 in float32 beyond this

# Ops whose float32 form here is a long straight-line polynomial (codegen interleaves loops
# over them); float64 ones are libm calls.
POLY_F32 = frozenset({"exp", "log", "log1p", "expm1", "tanh", "erf", "sigmoid", "softplus"})


class MathBuilder:
    """An ``ir.IRBuilder`` plus the helpers that make math IR readable.

    Every helper works on scalar values; the loop vectorizer does the widening.
    """

    def __init__(self, builder: ir.IRBuilder):
        self.b = builder
        self.module = builder.module

    # ---- constants and intrinsics
    @staticmethod
    def const(ty, value):
        return ir.Constant(ty, value)

    def intrinsic(self, name: str, ret, args):
        """Declare (once per module) and return an intrinsic or libm function."""
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, args), name=name)
        return fn

    def call_f(self, base: str, *xs):
        """Call the overloaded float intrinsic llvm.<base>.f32/f64 on same-typed args."""
        ty = xs[0].type
        suffix = "f32" if ty == F32 else "f64"
        fn = self.intrinsic(f"llvm.{base}.{suffix}", ty, [ty] * len(xs))
        return self.b.call(fn, list(xs))

    def call_libm(self, name32: str, name64: str, *xs):
        ty = xs[0].type
        fn = self.intrinsic(name32 if ty == F32 else name64, ty, [ty] * len(xs))
        return self.b.call(fn, list(xs))

    # ---- arithmetic shorthands (IEEE, no fast-math flags: results must match numpy)
    def add(self, x, y):
        return self.b.fadd(x, y)

    def sub(self, x, y):
        return self.b.fsub(x, y)

    def mul(self, x, y):
        return self.b.fmul(x, y)

    def div(self, x, y):
        return self.b.fdiv(x, y)

    def fma(self, x, y, z):
        """x*y + z, fused where the target has FMA (llvm.fmuladd never becomes a libcall)."""
        return self.call_f("fmuladd", x, y, z)

    def poly(self, x, coeffs):
        """Horner: coeffs[0]*x^(n-1) + ... + coeffs[-1]."""
        ty = x.type
        acc = self.const(ty, coeffs[0])
        for c in coeffs[1:]:
            acc = self.fma(acc, x, self.const(ty, c))
        return acc

    def select(self, c, x, y):
        return self.b.select(c, x, y)

    def lt(self, x, y):
        return self.b.fcmp_ordered("<", x, y)

    def gt(self, x, y):
        return self.b.fcmp_ordered(">", x, y)

    def ge(self, x, y):
        return self.b.fcmp_ordered(">=", x, y)

    def eq(self, x, y):
        return self.b.fcmp_ordered("==", x, y)

    def isnan(self, x):
        return self.b.fcmp_unordered("uno", x, x)

    def fabs(self, x):
        return self.call_f("fabs", x)

    def copysign(self, mag, sign):
        return self.call_f("copysign", mag, sign)

    def c(self, x, value):
        """Constant of x's type."""
        return self.const(x.type, value)


# ------------------------------------------------------------------------------------ exp
def estrin(m: MathBuilder, x, x2, coeffs):
    """coeffs[0]*x^(n-1) + ... + coeffs[-1] by Estrin's scheme, given x2 = x*x: as many fmas
    as Horner (plus one multiply for x^4 from 7 coefficients on), in a chain of depth
    ~log2(n) instead of n - 1. The loops these polynomials sit in are latency-bound (see
    the module docstring), so the shorter chain is what counts."""
    c = [m.c(x, v) for v in coeffs]
    terms = []                      # lowest degree first: c[k-1]*x + c[k], then c[0] if left
    k = len(c) - 1
    while k > 0:
        terms.append(m.fma(c[k - 1], x, c[k]))
        k -= 2
    if k == 0:
        terms.append(c[0])
    power = x2                      # terms[i] is the coefficient of power^i
    while len(terms) > 3:
        terms = [m.fma(power, terms[i + 1], terms[i]) if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
        power = m.mul(power, power)
    if len(terms) == 3:             # t0 + p*(t1 + p*t2): depth 2 without computing p^2
        return m.fma(power, m.fma(power, terms[2], terms[1]), terms[0])
    if len(terms) == 2:
        return m.fma(power, terms[1], terms[0])
    return terms[0]


def exp(m: MathBuilder, x):
    if x.type == F64:
        return m.call_f("exp", x)
    if nonpositive(x):
        return exp_nonpositive_f32(m, x)
    return exp_f32(m, x)


def _is_op(v, opname):
    return isinstance(v, ir.Instruction) and v.opname == opname


def _nonnegative(v) -> bool:
    """v is a*a or fabs(a): >= 0 or nan whatever a is."""
    if _is_op(v, "fmul"):
        return v.operands[0] is v.operands[1]
    return _is_op(v, "call") and v.callee.name.startswith("llvm.fabs.")


def nonpositive(x) -> bool:
    """Does x's IR prove it <= 0 or nan? -(a*a), (-a)*a, a*(-a), -fabs(a): the shapes of
    exp(-x*x) (Gaussians, RBF kernels), whose exp then skips the upper clamp and the
    two-factor scaling (exp_nonpositive_f32). The operand objects are compared, so this sees
    the pattern when the kernel loaded a once (codegen emits one value per spec reference)."""
    if _is_op(x, "fneg"):
        return _nonnegative(x.operands[0])
    if _is_op(x, "fmul"):
        a, b = x.operands
        return (_is_op(a, "fneg") and a.operands[0] is b) or \
            (_is_op(b, "fneg") and b.operands[0] is a)
    return False


def _exp_reduce(m: MathBuilder, xc, shift):
    """n = round(xc / ln2) by the shifter trick (no round or convert instructions) and
    exp(r) = 1 + r + r^2 P(r), r = xc - n*ln2 in [-ln2/2, ln2/2]. Returns (j, y); the low
    bits of bits(j) hold n + (shift - 1.5 * 2^23)."""
    j = m.fma(xc, m.c(xc, LOG2E), m.c(xc, shift))
    n = m.sub(j, m.c(xc, shift))                                 # exact
    r = m.fma(n, m.c(xc, -LN2_HI), xc)
    r = m.fma(n, m.c(xc, -LN2_LO), r)
    r2 = m.mul(r, r)
    p = estrin(m, r, r2, EXP_POLY)
    return j, m.add(m.fma(p, r2, r), m.c(xc, 1.0))


def exp_f32(m: MathBuilder, x):
    """exp(x) = 2^n * exp(r); max rel. error ~1.2e-7 (1 ulp).

    2^n is applied as two factors 2^(n>>1) * 2^(n - n>>1), both normal floats, so that
    results in the denormal range (x down to -103.97) come out like numpy's and x > 88.72
    overflows to inf without a select. nan passes the clamp and poisons every later step,
    so it needs no select either.
    """
    b = m.b
    xc = m.select(m.gt(x, m.c(x, EXP_CLAMP_HI)), m.c(x, EXP_CLAMP_HI), x)
    xc = m.select(m.lt(xc, m.c(x, EXP_CLAMP_LO)), m.c(x, EXP_CLAMP_LO), xc)
    j, y = _exp_reduce(m, xc, EXP_SHIFT)
    # exponent fields e1 = (n + 254) >> 1 and e2 = n + 254 - e1: shifting bits(j) left by 23
    # drops the 0x4B400000 part, so no subtraction of the shifter is needed.
    jb = b.bitcast(j, I32)
    h = b.lshr(jb, ir.Constant(I32, 1))
    s1 = b.bitcast(b.shl(h, ir.Constant(I32, 23)), F32)
    s2 = b.bitcast(b.shl(b.sub(jb, h), ir.Constant(I32, 23)), F32)
    return m.mul(m.mul(y, s1), s2)


def exp_nonpositive_f32(m: MathBuilder, x):
    """exp(x) for x <= 0 or nan (sigmoid, softplus), as exact as exp_f32 and 3 instructions
    shorter: n is in [-150, 0], so 2^(n+24) is one normal float built by one shift; the
    final * 2^-24 is exact for normal results and rounds denormal ones once."""
    b = m.b
    xc = m.select(m.lt(x, m.c(x, EXP_CLAMP_LO)), m.c(x, EXP_CLAMP_LO), x)
    j, y = _exp_reduce(m, xc, EXP_SHIFT_NONPOS)
    s = b.bitcast(b.shl(b.bitcast(j, I32), ir.Constant(I32, 23)), F32)
    return m.mul(m.mul(y, s), m.c(x, 2.0 ** -24))


# ------------------------------------------------------------------------------------ log
def log(m: MathBuilder, x):
    if x.type == F64:
        return m.call_f("log", x)
    return log_f32(m, x)


def log_f32(m: MathBuilder, x):
    """Cephes logf: x = 2^e * f, f in [sqrt(.5), sqrt(2)); log(f) by a degree-9 polynomial.

    Max rel. error ~1.5e-7. Denormals are pre-scaled by 2^23.
    """
    b = m.b
    den = m.lt(x, m.c(x, 1.17549435e-38))         # FLT_MIN; also true for <= 0 (fixed below)
    xs = m.select(den, m.mul(x, m.c(x, 8388608.0)), x)
    bits = b.bitcast(xs, I32)
    e = b.sub(b.lshr(bits, ir.Constant(I32, 23)), ir.Constant(I32, 126))
    e = m.select(den, b.sub(e, ir.Constant(I32, 23)), e)
    f = b.bitcast(b.or_(b.and_(bits, ir.Constant(I32, 0x807FFFFF)),
                        ir.Constant(I32, 0x3F000000)), F32)     # f in [0.5, 1)
    small = m.lt(f, m.c(x, 0.707106781186547524))
    e = m.select(small, b.sub(e, ir.Constant(I32, 1)), e)
    t = m.sub(m.select(small, m.add(f, f), f), m.c(x, 1.0))    # exact
    z = m.mul(t, t)
    p = estrin(m, t, z, LOG_POLY)
    y = m.mul(m.mul(p, t), z)
    fe = b.sitofp(e, F32)
    y = m.fma(fe, m.c(x, LN2_LO), y)
    y = m.fma(z, m.c(x, -0.5), y)
    r = m.add(t, y)
    r = m.fma(fe, m.c(x, LN2_HI), r)
    r = m.select(m.eq(x, m.c(x, 0.0)), m.c(x, -math.inf), r)
    r = m.select(m.lt(x, m.c(x, 0.0)), m.c(x, math.nan), r)
    r = m.select(m.eq(x, m.c(x, math.inf)), x, r)
    return m.select(m.isnan(x), x, r)


# ------------------------------------------------------------------------- log1p / expm1
def log1p(m: MathBuilder, x):
    """log1p(x) = log(u) * x / (u - 1) with u = 1 + x (Goldberg): exact correction of the
    rounding in 1 + x, so it is as accurate as log itself."""
    if x.type == F64:
        return m.call_libm("log1pf", "log1p", x)
    u = m.add(x, m.c(x, 1.0))
    d = m.sub(u, m.c(x, 1.0))
    r = m.mul(log_f32(m, u), m.div(x, d))
    r = m.select(m.eq(d, m.c(x, 0.0)), x, r)                 # 1 + x rounded to 1
    return m.select(m.eq(x, m.c(x, math.inf)), x, r)         # inf/inf would give nan


def expm1(m: MathBuilder, x):
    """Taylor series up to x^9/9! for |x| < 0.5 (rel. error < 3e-9 before rounding),
    exp(x) - 1 elsewhere (cancellation costs at most a factor 2.6 there)."""
    if x.type == F64:
        return m.call_libm("expm1f", "expm1", x)
    inv = [1.0 / math.factorial(k) for k in range(9, 1, -1)]     # 1/9! .. 1/2!
    small = m.fma(m.mul(m.poly(x, inv), x), x, x)                # x + x^2 * P(x)
    large = m.sub(exp_f32(m, x), m.c(x, 1.0))
    return m.select(m.lt(m.fabs(x), m.c(x, 0.5)), small, large)


# ------------------------------------------------------------------------------- tanh etc.
def tanh(m: MathBuilder, x):
    """Eigen's 13/6 rational interpolant on x clamped to [-9, 9]: one division, no exp.

    Scaled so the numerator is x + x^3 * P(x^2): exact for tiny and denormal x.
    Max rel. error ~3.3e-7 (5 ulp, near |x| = 0.02); nan passes the clamp.
    """
    if x.type == F64:
        return m.call_libm("tanhf", "tanh", x)
    xc = m.select(m.gt(x, m.c(x, TANH_CLAMP)), m.c(x, TANH_CLAMP), x)
    xc = m.select(m.lt(xc, m.c(x, -TANH_CLAMP)), m.c(x, -TANH_CLAMP), xc)
    z = m.mul(xc, xc)
    a1 = 4.89352455891786e-03
    p = m.poly(z, [c / a1 for c in (-2.76076847742355e-16, 2.00018790482477e-13,
                                    -8.60467152213735e-11, 5.12229709037114e-08,
                                    1.48572235717979e-05, 6.37261928875436e-04)])
    q = m.poly(z, [c / a1 for c in (1.19825839466702e-06, 1.18534705686654e-04,
                                    2.26843463243900e-03, 4.89352518554385e-03)])
    return m.div(m.fma(m.mul(xc, z), p, xc), q)


def _exp_nonpositive(m: MathBuilder, x):
    return exp_nonpositive_f32(m, x) if x.type == F32 else m.call_f("exp", x)


def sigmoid(m: MathBuilder, x):
    """1/(1+exp(-x)) evaluated on e = exp(-|x|) so nothing overflows and tiny results keep
    their precision: x >= 0: 1/(1+e),  x < 0: e/(1+e), one correctly rounded division of the
    picked numerator. The pick tests x's sign bit (a blend, no compare); -0.0 takes the e
    branch, which gives 1/2 as well, and nan gives nan either way."""
    e = _exp_nonpositive(m, m.b.fneg(m.fabs(x)))
    ity = I32 if x.type == F32 else I64
    negative = m.b.icmp_signed("<", m.b.bitcast(x, ity), ir.Constant(ity, 0))
    num = m.select(negative, e, m.c(x, 1.0))
    return m.div(num, m.add(e, m.c(x, 1.0)))


def softplus(m: MathBuilder, x):
    """log(1 + exp(x)) = log1p(exp(-|x|)) + max(x, 0) (numpy's logaddexp(0, x))."""
    t = log1p(m, _exp_nonpositive(m, m.b.fneg(m.fabs(x))))
    pos = m.select(m.gt(x, m.c(x, 0.0)), x, m.c(x, 0.0))
    return m.add(t, pos)


def erf(m: MathBuilder, x):
    """|x| < 0.5: Taylor series of erf to x^15 (rel. error < 1e-8);
    else 1 - erfc(|x|) with the Numerical Recipes erfc (fractional error < 1.2e-7), signed."""
    if x.type == F64:
        return m.call_libm("erff", "erf", x)
    ax = m.fabs(x)
    z = m.mul(x, x)
    # erf(x) = 2/sqrt(pi) * sum_k (-1)^k x^(2k+1) / (k! (2k+1))
    taylor = [2.0 / math.sqrt(math.pi) * (-1) ** k / (math.factorial(k) * (2 * k + 1))
              for k in range(7, -1, -1)]
    small = m.mul(m.poly(z, taylor), x)
    t = m.div(m.c(x, 1.0), m.fma(ax, m.c(x, 0.5), m.c(x, 1.0)))
    q = m.poly(t, [0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807,
                   -0.18628806, 0.09678418, 0.37409196, 1.00002368, -1.26551223])
    erfc = m.mul(t, exp_f32(m, m.sub(q, z)))
    large = m.copysign(m.sub(m.c(x, 1.0), erfc), x)
    return m.select(m.lt(ax, m.c(x, 0.5)), small, large)
