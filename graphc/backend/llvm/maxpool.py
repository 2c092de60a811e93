"""2x2 max pooling (stride 2, no padding) and its gradient, written directly as LLVM IR.

The generic route runs KernelSpec kernels over the per-offset strided views of the input:
their strides are run-time values, so the loop vectorizer cannot see that the four cells of
a window are neighbours and falls back to scalar or gathered loads. Here each output row is
explicit vector code: V = 256 bits of outputs per step (then one V/2 step, then scalars),
from wide loads of the two input rows split into their even and odd columns by shuffles.
(Leaving the stride-2 loop to the loop vectorizer ran ~2x slower, and scalar for rows
shorter than its vector width, such as LeNet's second layer: ow = 4.)

    maxpool2x2(lo, hi, meta, x, out)
    maxpool2x2_grad(lo, hi, meta, x, m, g, gx)
        planes [lo, hi) (the flattened leading dimensions); meta: int64 [oh, ow, then the
        (plane, row) element strides of x, out (or m, g, gx)]; columns have unit stride.
        out[p, i, j] = max of x[p, 2i:2i+2, 2j:2j+2], nan-propagating, cells taken in row
        order like the reference's running maximum;
        gx[p, 2i+a, 2j+b] = (x[p, 2i+a, 2j+b] == m[p, i, j]) * g[p, i, j]  (0 * inf = nan
        as in the reference); cells in no window are left to the caller.
"""
from __future__ import annotations

from llvmlite import ir

from . import jit
from .softmax import _loop

I64 = ir.IntType(64)
PTR = ir.PointerType()


def _max(b, acc, v):
    """numpy.maximum: nan if either is nan, else the larger."""
    r = b.select(b.fcmp_ordered(">", v, acc), v, acc)
    return b.select(b.fcmp_unordered("uno", v, v), v, r)


def _build(dtype: str, grad: bool) -> str:
    et = ir.FloatType() if dtype == "float32" else ir.DoubleType()
    lanes = 8 if dtype == "float32" else 4          # outputs per vector step: 256 bits
    n_arr = 4 if grad else 2
    mod = ir.Module()
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I64, I64, PTR] + [PTR] * n_arr),
                     name=jit.PLACEHOLDER)
    lo, hi, meta = fn.args[:3]
    arrays = fn.args[3:]
    for a in arrays:
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    vals = [b.load(b.gep(meta, [ir.Constant(I64, k)], source_etype=I64), typ=I64)
            for k in range(2 + 2 * n_arr)]
    oh, ow = vals[:2]
    strides = [(vals[2 + 2 * a], vals[3 + 2 * a]) for a in range(n_arr)]
    zero, one, two = (ir.Constant(I64, v) for v in (0, 1, 2))
    align = 4 if dtype == "float32" else 8

    def at(a, p, row, col):
        sp, sr = strides[a]
        off = b.add(b.add(b.mul(p, sp), b.mul(row, sr)), col)
        return b.gep(arrays[a], [off], source_etype=et)

    def load(ptr, w):
        return b.load(ptr, typ=et if w == 1 else ir.VectorType(et, w), align=align)

    def pick(v, w, idx):
        """Lanes ``idx`` of the vector ``v`` (w lanes)."""
        return b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined),
                                ir.Constant(ir.VectorType(ir.IntType(32), len(idx)), idx))

    def windows(p, i, r0, r1, j, w):
        """The w windows of output row i starting at column j (w = 1: scalars)."""
        c0 = b.mul(j, two)
        if not grad:
            cells = []                      # x00, x01, x10, x11 of each window, as lanes
            for r in (r0, r1):
                if w == 1:
                    cells += [load(at(0, p, r, c), 1) for c in (c0, b.add(c0, one))]
                else:
                    v = load(at(0, p, r, c0), 2 * w)
                    cells += [pick(v, 2 * w, list(range(0, 2 * w, 2))),
                              pick(v, 2 * w, list(range(1, 2 * w, 2)))]
            acc = cells[0]
            for v in cells[1:]:             # row order, like the reference's running max
                acc = _max(b, acc, v)
            b.store(acc, at(1, p, i, j), align=align)
            return
        m, g = load(at(1, p, i, j), w), load(at(2, p, i, j), w)
        if w > 1:                           # each window's m and g on its two columns
            pairs = [k // 2 for k in range(2 * w)]
            m, g = pick(m, w, pairs), pick(g, w, pairs)
        for r in (r0, r1):
            for c in ((c0, b.add(c0, one)) if w == 1 else (c0,)):
                x = load(at(0, p, r, c), 1 if w == 1 else 2 * w)
                hit = b.uitofp(b.fcmp_ordered("==", x, m), x.type)
                b.store(b.fmul(hit, g), at(3, p, r, c), align=align)

    def plane(p):
        def out_row(i):
            r0 = b.mul(i, two)
            r1 = b.add(r0, one)
            wide = b.and_(ow, ir.Constant(I64, -lanes))
            half = b.and_(ow, ir.Constant(I64, -(lanes // 2)))

            def step(w):
                def body(j):
                    windows(p, i, r0, r1, j, w)
                    return []
                return body
            _loop(b, zero, wide, lanes, step(lanes))
            _loop(b, wide, half, lanes // 2, step(lanes // 2))     # at most once
            _loop(b, half, ow, 1, step(1))
            return []
        _loop(b, zero, oh, 1, out_row)
        return []

    _loop(b, lo, hi, 1, plane)
    b.ret_void()
    return str(mod)


def load_maxpool2x2(dtype: str, grad: bool = False) -> int:
    """Address of maxpool2x2 (or its gradient) for float32 or float64."""
    # _loop comes from softmax.py
    key = jit.cache_key("maxpool2x2", dtype, str(grad),
                        jit.source_hash("maxpool.py", "softmax.py"))
    return jit.load_function(key, lambda: _build(dtype, grad),
                             title=f"maxpool2x2 {dtype} grad={grad}")
