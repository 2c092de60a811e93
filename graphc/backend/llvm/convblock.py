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


# ------------------------------------------------------------------ direct forward
# For filters with few taps (C*kh*kw: LeNet's first layer has 25), a product with so short
# an inner dimension runs BLAS at half speed, and im2col and the layout copy cost as much
# again.  This kernel computes each 8-column run of an output row for 12 filters at once:
# 12 vector accumulators, one input load and 12 broadcast weights per tap (the weights
# transposed, so that a tap's weights are adjacent: one base pointer for all).
#
#   conv_direct(meta, src, w, out)
#       meta: int64 [C, kh, kw, oh, ow, n, sh, dh, dw, s_b, s_c, s_r, O]; src as above with
#       unit column stride (sw == 1); wt C-contiguous (C*kh*kw, O), flipped by the caller
#       for a true convolution; out C-contiguous (n, O, oh, ow):
#       out[b, o, y, x] = sum_{c,i,j} wt[(c*kh + i)*kw + j, o] * src[b, c, y*sh + i*dh, x + j*dw]
_DIRECT_FIELDS = ("C", "kh", "kw", "oh", "ow", "n", "sh", "dh", "dw", "sb", "sc", "sr", "O")
DIRECT_GROUP = 12           # filters per pass: 12 accumulators + input + weight registers


def direct_ir(dtype: str) -> str:
    et = ir.FloatType() if dtype == "float32" else ir.DoubleType()
    mod = ir.Module()
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [PTR] * 4), name=jit.PLACEHOLDER)
    meta, src, w, out = fn.args
    for a in (src, w, out):
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    m = {name: b.load(b.gep(meta, [ir.Constant(I64, k)], source_etype=I64), typ=I64)
         for k, name in enumerate(_DIRECT_FIELDS)}
    mul, add = b.mul, b.add
    zero = ir.Constant(I64, 0)
    lanes = 32 // et_bytes(et)
    plane_out = mul(m["oh"], m["ow"])

    def columns(bi, y, o0, og, x, wid):
        """out[bi, o0:o0+og, y, x:x+wid]: og accumulators of wid lanes over every tap."""
        vt = et if wid == 1 else ir.VectorType(et, wid)
        zeros = [ir.Constant(vt, [0.0] * wid if wid > 1 else 0.0)] * og

        def chan(c, *accs):
            base = add(mul(bi, m["sb"]), mul(c, m["sc"]))

            def tap_row(i, *accs):
                r = add(mul(y, m["sh"]), mul(i, m["dh"]))
                row = add(base, add(mul(r, m["sr"]), x))
                k0 = mul(add(mul(c, m["kh"]), i), m["kw"])

                def tap(j, *accs):
                    v = _load(b, b.gep(src, [add(row, mul(j, m["dw"]))], source_etype=et),
                              et, wid)
                    wrow = b.gep(w, [add(mul(add(k0, j), m["O"]), o0)], source_etype=et)
                    new = []
                    for o, acc in enumerate(accs):
                        wk = b.load(b.gep(wrow, [ir.Constant(I64, o)], source_etype=et),
                                    typ=et)
                        if wid > 1:
                            wk = b.insert_element(ir.Constant(vt, ir.Undefined), wk,
                                                  ir.Constant(ir.IntType(32), 0))
                            wk = b.shuffle_vector(wk, ir.Constant(vt, ir.Undefined),
                                                  ir.Constant(ir.VectorType(ir.IntType(32),
                                                                            wid), [0] * wid))
                        # contract: one fused multiply-add (as BLAS computes the product)
                        new.append(b.fadd(acc, b.fmul(wk, v, flags=("contract",)),
                                          flags=("contract",)))
                    return new
                return _loop(b, zero, m["kw"], 1, tap, accs)
            return _loop(b, zero, m["kh"], 1, tap_row, accs)
        accs = _loop(b, zero, m["C"], 1, chan, zeros)
        for o, acc in enumerate(accs):
            at = add(mul(add(mul(bi, m["O"]), add(o0, ir.Constant(I64, o))), plane_out),
                     add(mul(y, m["ow"]), x))
            _store(b, acc, b.gep(out, [at], source_etype=et))

    def filters(bi, y, o0, og):
        wide = b.and_(m["ow"], ir.Constant(I64, -lanes))
        _loop(b, zero, wide, lanes, lambda x: columns(bi, y, o0, og, x, lanes) or [])
        _loop(b, wide, m["ow"], 1, lambda x: columns(bi, y, o0, og, x, 1) or [])

    def image(bi):
        def out_row(y):
            # groups of DIRECT_GROUP filters, then the remainder r in passes of 8, 4, 2, 1
            # (a pass of one filter waits on one accumulator's add latency at every tap)
            rem = b.srem(m["O"], ir.Constant(I64, DIRECT_GROUP))
            full = b.sub(m["O"], rem)
            _loop(b, zero, full, DIRECT_GROUP,
                  lambda o0: filters(bi, y, o0, DIRECT_GROUP) or [])
            for og in (8, 4, 2, 1):
                if og >= DIRECT_GROUP:
                    continue
                with b.if_then(b.icmp_signed("!=", b.and_(rem, ir.Constant(I64, og)), zero)):
                    filters(bi, y, add(full, b.and_(rem, ir.Constant(I64, -2 * og))), og)
            return []
        _loop(b, zero, m["oh"], 1, out_row)
        return []
    _loop(b, zero, m["n"], 1, image)
    b.ret_void()
    return str(mod)


# ------------------------------------------------------------- direct weight gradient
# The weight gradient of a filter with few taps, without patches: for a tile of OT filters
# x KT taps, OT*KT vector accumulators run over every (image, row, 8-column run) of the
# block, from OT output-gradient loads and KT input loads per step.
#
#   conv_direct_gw(meta, src, dout, acc)
#       meta as conv_direct's; dout C-contiguous (n, O, oh, ow); acc C-contiguous
#       (O, C*kh*kw), added to:
#       acc[o, (c*kh + i)*kw + j] += sum_{b,y,x} dout[b, o, y, x] * src[b, c, y*sh + i*dh, x + j*dw]
GW_FILTERS, GW_TAPS = 4, 2  # tile: 8 accumulators + 4 gradient rows + 1 input (13 registers)


def _merge(b, et, *incoming):
    """phi of (value, block) pairs, at the builder's position (a join block)."""
    phi = b.phi(et)
    for v, blk in incoming:
        phi.add_incoming(v, blk)
    return phi


def direct_gw_ir(dtype: str) -> str:
    et = ir.FloatType() if dtype == "float32" else ir.DoubleType()
    mod = ir.Module()
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [PTR] * 4), name=jit.PLACEHOLDER)
    meta, src, dout, acc = fn.args
    for a in (src, dout, acc):
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    m = {name: b.load(b.gep(meta, [ir.Constant(I64, k)], source_etype=I64), typ=I64)
         for k, name in enumerate(_DIRECT_FIELDS)}
    mul, add = b.mul, b.add
    zero = ir.Constant(I64, 0)
    lanes = 32 // et_bytes(et)
    khw = mul(m["kh"], m["kw"])
    K = mul(m["C"], khw)
    plane_out = mul(m["oh"], m["ow"])

    def tap_offset(k):
        """Offset in an image of tap k = (c*kh + i)*kw + j: c*s_c + i*dh*s_r + j*dw."""
        c, r = b.sdiv(k, khw), b.srem(k, khw)
        i, j = b.sdiv(r, m["kw"]), b.srem(r, m["kw"])
        return add(mul(c, m["sc"]), add(mul(mul(i, m["dh"]), m["sr"]), mul(j, m["dw"])))

    def tile(o0, ot, k0, kt):
        taps = [tap_offset(add(k0, ir.Constant(I64, t))) for t in range(kt)]

        def run(wid, x0, x1, accs):
            vt = et if wid == 1 else ir.VectorType(et, wid)

            def image(bi, *accs):
                def out_row(y, *accs):
                    srow = add(mul(bi, m["sb"]), mul(mul(y, m["sh"]), m["sr"]))
                    drow = add(mul(mul(bi, m["O"]), plane_out), mul(y, m["ow"]))

                    def step(x, *accs):
                        g = [_load(b, b.gep(dout, [add(add(drow, mul(add(o0, ir.Constant(
                            I64, o)), plane_out)), x)], source_etype=et), et, wid)
                            for o in range(ot)]
                        new = list(accs)
                        for t in range(kt):
                            v = _load(b, b.gep(src, [add(srow, add(taps[t], x))],
                                               source_etype=et), et, wid)
                            for o in range(ot):
                                n = o * kt + t
                                new[n] = b.fadd(new[n], b.fmul(g[o], v, flags=("contract",)),
                                                flags=("contract",))
                        return new
                    return _loop(b, x0, x1, wid, step, accs)
                return _loop(b, zero, m["oh"], 1, out_row, accs)
            return _loop(b, zero, m["n"], 1, image,
                         accs or [ir.Constant(vt, [0.0] * wid if wid > 1 else 0.0)] * (ot * kt))

        wide = b.and_(m["ow"], ir.Constant(I64, -lanes))
        vecs = run(lanes, zero, wide, None)
        scalar_zero = ir.Constant(et, 0.0)
        before = b.block
        with b.if_then(b.icmp_signed("<", wide, m["ow"])):     # columns past the vectors
            tails = run(1, wide, m["ow"], None)
            tails_end = b.block
        tails = [_merge(b, et, (scalar_zero, before), (t, tails_end)) for t in tails]
        for o in range(ot):
            for t in range(kt):
                n = o * kt + t
                total = tails[n]
                for lane in range(lanes):
                    total = b.fadd(total, b.extract_element(vecs[n], ir.Constant(I64, lane)))
                p = b.gep(acc, [add(mul(add(o0, ir.Constant(I64, o)), K),
                                    add(k0, ir.Constant(I64, t)))], source_etype=et)
                b.store(b.fadd(b.load(p, typ=et), total), p)

    def tiles(o0, ot):
        """Every tap for filters [o0, o0 + ot): tiles of GW_TAPS taps, then single taps."""
        full = b.sub(K, b.srem(K, ir.Constant(I64, GW_TAPS)))
        _loop(b, zero, full, GW_TAPS, lambda k0: tile(o0, ot, k0, GW_TAPS) or [])
        _loop(b, full, K, 1, lambda k0: tile(o0, ot, k0, 1) or [])

    full = b.sub(m["O"], b.srem(m["O"], ir.Constant(I64, GW_FILTERS)))
    _loop(b, zero, full, GW_FILTERS, lambda o0: tiles(o0, GW_FILTERS) or [])
    _loop(b, full, m["O"], 1, lambda o0: tiles(o0, 1) or [])
    b.ret_void()
    return str(mod)


_SOURCE_HASH = None


def load_convblock(kind: str, dtype: str) -> int:
    """Address of ``kind`` ('im2col', 'col2im', 'direct' or 'direct_gw') for float32 or
    float64."""
    global _SOURCE_HASH
    if _SOURCE_HASH is None:
        h = hashlib.sha256()
        here = os.path.dirname(os.path.abspath(__file__))
        for name in ("convblock.py", "softmax.py", "codegen.py"):   # _loop: emit_for
            with open(os.path.join(here, name), "rb") as f:
                h.update(f.read())
        _SOURCE_HASH = h.hexdigest()
    make = {"im2col": im2col_ir, "col2im": col2im_ir, "direct": direct_ir,
            "direct_gw": direct_gw_ir}[kind]
    key = jit.cache_key("convblock", kind, dtype, _SOURCE_HASH)
    return jit.load_function(key, lambda: make(dtype), title=f"{kind} block {dtype}")
