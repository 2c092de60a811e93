"""im2col and col2im for a block of images in NCHW layout, written directly as LLVM IR.

The blocked convolution steps (graphc/link/llvm_conv.py) turn a few images at a time into
one patch matrix that stays in cache while BLAS multiplies it; these two kernels move the
data between the images and that matrix.  The matrix has one row per (channel, filter row,
filter col) and one column per (image of the block, output row, output col):

    cols[c, i, j, b, y, x] = src[b, c, y*sh + i*dh, x*sw + j*dw]          (C-contiguous)

    im2col(meta, src, cols)     fills cols from src
    col2im(meta, cols, dst)     dst[b, c] = 0, then adds every patch entry back at its pixel:
                                dst[b, c, y*sh + i*dh, x*sw + j*dw] += cols[c, i, j, b, y, x]

meta: int64 [C, kh, kw, oh, ow, n, sh, sw, dh, dw, s_b, s_c, s_r, hp, wp], where s_* are the
element strides of src / dst over images, channels and rows (columns have unit stride) and
hp, wp the rows and cols of one of its planes (col2im zeroes the whole plane: cells no patch
covers get 0).  src / dst are the (already padded) images: padding is the caller's.
col2im takes one image at a time, all channels and offsets, so a plane it adds into stays in
L1 while its kh*kw*oh rows of patches arrive.
"""
from __future__ import annotations

import hashlib
import os

from llvmlite import ir

from . import jit
from .softmax import _loop

I64 = ir.IntType(64)
PTR = ir.PointerType()
_FIELDS = ("C", "kh", "kw", "oh", "ow", "n", "sh", "sw", "dh", "dw", "sb", "sc", "sr",
           "hp", "wp")


def _function(dtype, name_args):
    et = ir.FloatType() if dtype == "float32" else ir.DoubleType()
    mod = ir.Module()
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [PTR] * 3), name=jit.PLACEHOLDER)
    meta, a, c = fn.args
    a.add_attribute("noalias")
    c.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    m = {name: b.load(b.gep(meta, [ir.Constant(I64, k)], source_etype=I64), typ=I64)
         for k, name in enumerate(_FIELDS)}
    return mod, b, et, m, a, c


def _no_builtins(text: str) -> str:
    """The module's function marked "no-builtins": LLVM's loop-idiom pass would otherwise
    turn each row copy (8 floats for LeNet's second layer) into a call of libc's memcpy,
    and each plane's zeroing into memset calls (~3x slower im2col, measured)."""
    head, brace, rest = text.partition("\n{")
    return head + " #0" + brace + rest + '\nattributes #0 = { "no-builtins" }\n'


def _patch_rows(b, m, c, b_img, row_fn):
    """For every (i, j, y) of image ``b_img``, channel ``c``: row_fn(image offset of the
    patch row's first pixel, cols offset of that row)."""
    mul, add = b.mul, b.add
    zero = ir.Constant(I64, 0)
    plane = add(mul(b_img, m["sb"]), mul(c, m["sc"]))

    def offset_i(i):
        def offset_j(j):
            # cols row of (c, i, j, b): ((c*kh + i)*kw + j)*n + b, times oh*ow
            crow = add(mul(add(mul(add(mul(c, m["kh"]), i), m["kw"]), j), m["n"]), b_img)
            cbase = mul(crow, mul(m["oh"], m["ow"]))
            col0 = mul(j, m["dw"])

            def out_row(y):
                r = add(mul(y, m["sh"]), mul(i, m["dh"]))
                row_fn(add(plane, add(mul(r, m["sr"]), col0)), add(cbase, mul(y, m["ow"])))
                return []
            _loop(b, zero, m["oh"], 1, out_row)
            return []
        _loop(b, zero, m["kw"], 1, offset_j)
        return []
    _loop(b, zero, m["kh"], 1, offset_i)


def _load(b, ptr, et, w):
    return b.load(ptr, typ=et if w == 1 else ir.VectorType(et, w), align=et_bytes(et))


def _store(b, v, ptr):
    b.store(v, ptr, align=et_bytes(v.type.element if isinstance(v.type, ir.VectorType)
                                   else v.type))


def et_bytes(et):
    return 4 if isinstance(et, ir.FloatType) else 8


def _row(b, m, et, elem, unit):
    """elem(w, x) for the output columns x of one patch row: with unit column stride
    (``unit``: sw == 1) in 256-bit vector steps of w columns, then one column at a time;
    else one column at a time.  (Left to the loop vectorizer, rows as short as LeNet's
    ow = 8 ran as scalars: its vector loop wants several vectors per iteration.)"""
    lanes = 32 // et_bytes(et)
    zero = ir.Constant(I64, 0)
    ow = m["ow"]

    def each(w):
        def body(x):
            elem(w, x)
            return []
        return body
    wide = b.and_(ow, ir.Constant(I64, -lanes)) if unit else zero
    _loop(b, zero, wide, lanes, each(lanes))
    _loop(b, wide, ow, 1, each(1))


def _both_strides(b, m, nest):
    """nest(unit) under a test of sw == 1, so that each loop nest has one kind of row."""
    with b.if_else(b.icmp_signed("==", m["sw"], ir.Constant(I64, 1))) as (unit, strided):
        with unit:
            nest(True)
        with strided:
            nest(False)


def im2col_ir(dtype: str) -> str:
    mod, b, et, m, src, cols = _function(dtype, "im2col")
    zero = ir.Constant(I64, 0)

    def nest(unit):
        def row(s0, d0):
            def elem(w, x):
                ps = b.gep(src, [b.add(s0, x if unit else b.mul(x, m["sw"]))], source_etype=et)
                _store(b, _load(b, ps, et, w), b.gep(cols, [b.add(d0, x)], source_etype=et))
            _row(b, m, et, elem, unit)

        def channel(c):
            _loop(b, zero, m["n"], 1, lambda bi: _patch_rows(b, m, c, bi, row) or [])
            return []
        _loop(b, zero, m["C"], 1, channel)
    _both_strides(b, m, nest)
    b.ret_void()
    return _no_builtins(str(mod))


def col2im_ir(dtype: str) -> str:
    mod, b, et, m, cols, dst = _function(dtype, "col2im")
    zero = ir.Constant(I64, 0)
    fzero = ir.Constant(et, 0.0)

    def nest(unit):
        def row(d0, s0):
            def elem(w, x):
                q = b.gep(dst, [b.add(d0, x if unit else b.mul(x, m["sw"]))], source_etype=et)
                v = _load(b, b.gep(cols, [b.add(s0, x)], source_etype=et), et, w)
                _store(b, b.fadd(_load(b, q, et, w), v), q)
            _row(b, m, et, elem, unit)

        def image(bi):
            def channel(c):
                plane = b.add(b.mul(bi, m["sb"]), b.mul(c, m["sc"]))

                def clear_row(r):
                    r0 = b.add(plane, b.mul(r, m["sr"]))

                    def elem(x):
                        b.store(fzero, b.gep(dst, [b.add(r0, x)], source_etype=et))
                        return []
                    _loop(b, zero, m["wp"], 1, elem)
                    return []
                _loop(b, zero, m["hp"], 1, clear_row)
                _patch_rows(b, m, c, bi, row)
                return []
            _loop(b, zero, m["C"], 1, channel)
            return []
        _loop(b, zero, m["n"], 1, image)
    _both_strides(b, m, nest)
    b.ret_void()
    return _no_builtins(str(mod))


_SOURCE_HASH = None


def load_convblock(kind: str, dtype: str) -> int:
    """Address of ``kind`` ('im2col' or 'col2im') for float32 or float64."""
    global _SOURCE_HASH
    if _SOURCE_HASH is None:
        h = hashlib.sha256()
        here = os.path.dirname(os.path.abspath(__file__))
        for name in ("convblock.py", "softmax.py", "codegen.py"):   # _loop: emit_for
            with open(os.path.join(here, name), "rb") as f:
                h.update(f.read())
        _SOURCE_HASH = h.hexdigest()
    make = {"im2col": im2col_ir, "col2im": col2im_ir}[kind]
    key = jit.cache_key("convblock", kind, dtype, _SOURCE_HASH)
    return jit.load_function(key, lambda: make(dtype), title=f"{kind} block {dtype}")
