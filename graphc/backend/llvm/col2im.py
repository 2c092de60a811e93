"""col2im for the convolution's input gradient, written directly as LLVM IR.

numpy adds the kh*kw patch gradients into the padded input gradient one offset at a time:
each of those passes reads and writes the whole (C, h, w, B) array, which for LeNet's second
layer (1.5 MB) falls out of L2, and the per-offset passes cost more than the product that
made the patches. Here one channel at a time takes all kh*kw offsets while its (h, w, B)
slice stays in cache, and channel blocks run on threads.

    col2im(lo, hi, meta, cols, dst)
        channels [lo, hi); meta: int64 [kh, kw, oh, ow, B, sh, sw, dh, dw, hp, wp];
        cols C-contiguous (C, kh, kw, oh, ow, B); dst C-contiguous (C, hp, wp, B), zeroed
        by the caller:  dst[c, i*dh + y*sh, j*dw + x*sw, :] += cols[c, i, j, y, x, :]
"""
from __future__ import annotations

from llvmlite import ir

from . import jit
from .softmax import _loop

I64 = ir.IntType(64)
PTR = ir.PointerType()
_FIELDS = ("kh", "kw", "oh", "ow", "B", "sh", "sw", "dh", "dw", "hp", "wp")


def col2im_ir(dtype: str) -> str:
    et = ir.FloatType() if dtype == "float32" else ir.DoubleType()
    mod = ir.Module()
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I64, I64, PTR, PTR, PTR]),
                     name=jit.PLACEHOLDER)
    lo, hi, meta, cols, dst = fn.args
    cols.add_attribute("noalias")
    dst.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    m = {name: b.load(b.gep(meta, [ir.Constant(I64, k)], source_etype=I64), typ=I64)
         for k, name in enumerate(_FIELDS)}
    zero = ir.Constant(I64, 0)
    mul, add = b.mul, b.add

    def channel(c):
        def offset_i(i):
            def offset_j(j):
                def out_row(y):
                    row = add(mul(i, m["dh"]), mul(y, m["sh"]))
                    dst_row = mul(add(mul(c, m["hp"]), row), m["wp"])
                    src_row = mul(add(mul(add(mul(add(mul(c, m["kh"]), i), m["kw"]), j),
                                          m["oh"]), y), m["ow"])

                    def out_col(x):
                        d0 = mul(add(dst_row, add(mul(j, m["dw"]), mul(x, m["sw"]))), m["B"])
                        s0 = mul(add(src_row, x), m["B"])
                        pd = b.gep(dst, [d0], source_etype=et)
                        ps = b.gep(cols, [s0], source_etype=et)

                        def elem(e):
                            q = b.gep(pd, [e], source_etype=et)
                            v = b.load(b.gep(ps, [e], source_etype=et), typ=et)
                            b.store(b.fadd(b.load(q, typ=et), v), q)
                            return []
                        _loop(b, zero, m["B"], 1, elem)
                        return []
                    _loop(b, zero, m["ow"], 1, out_col)
                    return []
                _loop(b, zero, m["oh"], 1, out_row)
                return []
            _loop(b, zero, m["kw"], 1, offset_j)
            return []
        _loop(b, zero, m["kh"], 1, offset_i)
        return []

    _loop(b, lo, hi, 1, channel)
    b.ret_void()
    return str(mod)


def load_col2im(dtype: str) -> int:
    """Address of col2im for float32 or float64."""
    # _loop comes from softmax.py
    key = jit.cache_key("col2im", dtype, jit.source_hash("col2im.py", "softmax.py"))
    return jit.load_function(key, lambda: col2im_ir(dtype), title=f"col2im {dtype}")
