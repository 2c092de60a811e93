"""Convolution kernels for a block of images in NCHW layout, written directly as LLVM IR:
im2col and col2im, and direct forward / weight-gradient kernels for filters with few taps
(further down).

The blocked convolution steps (graphc/link/llvm_conv.py) turn a few images at a time into
one patch matrix that stays in cache while BLAS multiplies it; im2col and col2im move the
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

from llvmlite import ir

from . import jit
from .codegen import _DistinctMD, emit_for, if_then_values, splat

I64 = ir.IntType(64)
PTR = ir.PointerType()
_FIELDS = ("C", "kh", "kw", "oh", "ow", "n", "sh", "sw", "dh", "dw", "sb", "sc", "sr",
           "hp", "wp")


def _function(dtype):
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


def _loop(b: ir.IRBuilder, start, stop, step, body, carried=()):
    """for (j = start; j < stop; j += step) carried = body(j, *carried); returns carried.
    The loop is marked not to be vectorized or unrolled: the kernels here are vectorized by
    hand, and LLVM's attempts on their many small nested loops (a copy per register tiling)
    took most of a second per kernel at a cold compile."""
    mod = b.module
    hints = [mod.add_metadata([ir.MetaDataString(mod, "llvm.loop.vectorize.enable"),
                               ir.Constant(ir.IntType(1), 0)]),
             mod.add_metadata([ir.MetaDataString(mod, "llvm.loop.unroll.disable")])]
    loop_id = _DistinctMD(mod, hints, self_ref=True)
    return emit_for(b, start, stop, ir.Constant(I64, step), list(carried),
                    lambda j, phis: body(j, *phis), loop_id)


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


def _row(b, m, et, elem, kind):
    """elem(w, x) for the output columns x of one patch row.  ``kind`` 'one': the row is one
    256-bit vector (sw == 1, ow == its lanes: LeNet's second layer), a single step;
    'unit' (sw == 1): vector steps of w columns, then one column at a time; 'strided': one
    column at a time.  (Left to the loop vectorizer, rows as short as LeNet's ow = 8 ran as
    scalars: its vector loop wants several vectors per iteration.)"""
    lanes = 32 // et_bytes(et)
    zero = ir.Constant(I64, 0)
    if kind == "one":
        elem(lanes, zero)
        return

    def each(w):
        def body(x):
            elem(w, x)
            return []
        return body
    wide = b.and_(m["ow"], ir.Constant(I64, -lanes)) if kind == "unit" else zero
    _loop(b, zero, wide, lanes, each(lanes))
    _loop(b, wide, m["ow"], 1, each(1))


def _by_row_kind(b, m, et, nest):
    """nest(kind) under tests of sw and ow, so that each loop nest has one kind of row (see
    _row); the row loops then carry no per-row tests."""
    one = ir.Constant(I64, 1)
    lanes = ir.Constant(I64, 32 // et_bytes(et))
    with b.if_else(b.icmp_signed("==", m["sw"], one)) as (unit, strided):
        with unit:
            with b.if_else(b.icmp_signed("==", m["ow"], lanes)) as (single, several):
                with single:
                    nest("one")
                with several:
                    nest("unit")
        with strided:
            nest("strided")


def im2col_ir(dtype: str) -> str:
    mod, b, et, m, src, cols = _function(dtype)
    zero = ir.Constant(I64, 0)

    def nest(kind):
        def row(s0, d0):
            def elem(w, x):
                col = b.mul(x, m["sw"]) if kind == "strided" else x
                ps = b.gep(src, [b.add(s0, col)], source_etype=et)
                _store(b, _load(b, ps, et, w), b.gep(cols, [b.add(d0, x)], source_etype=et))
            _row(b, m, et, elem, kind)

        def channel(c):
            _loop(b, zero, m["n"], 1, lambda bi: _patch_rows(b, m, c, bi, row) or [])
            return []
        _loop(b, zero, m["C"], 1, channel)
    _by_row_kind(b, m, et, nest)
    b.ret_void()
    return _no_builtins(str(mod))


def col2im_ir(dtype: str) -> str:
    mod, b, et, m, cols, dst = _function(dtype)
    zero = ir.Constant(I64, 0)
    fzero = ir.Constant(et, 0.0)

    def nest(kind):
        def row(d0, s0):
            def elem(w, x):
                col = b.mul(x, m["sw"]) if kind == "strided" else x
                q = b.gep(dst, [b.add(d0, col)], source_etype=et)
                v = _load(b, b.gep(cols, [b.add(s0, x)], source_etype=et), et, w)
                _store(b, b.fadd(_load(b, q, et, w), v), q)
            _row(b, m, et, elem, kind)

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
    _by_row_kind(b, m, et, nest)
    b.ret_void()
    return _no_builtins(str(mod))


# ------------------------------------------------------------------ direct kernels
# For filters with few taps (C*kh*kw: LeNet's first layer has 25), a product with so short
# an inner dimension runs BLAS at half speed, and im2col and the layout copy cost as much
# again.  These kernels work on 8-column runs of output rows (4 in float64) held in vector
# registers; the last run of a row starts at ow - 8 (so ow >= 8 is required), overlapping
# the one before it.  Each loop nest is emitted once per register tiling: every copy costs
# LLVM optimizer time at the first (cold) compile.
#
#   conv_direct(meta, src, wt, out)
#       meta: int64 [C, kh, kw, oh, ow, n, sh, dh, dw, s_b, s_c, s_r, O]; src as above with
#       unit column stride (sw == 1); wt C-contiguous (C*kh*kw, O), flipped by the caller
#       for a true convolution; out C-contiguous (n, O, oh, ow):
#       out[b, o, y, x] = sum_{c,i,j} wt[(c*kh + i)*kw + j, o] * src[b, c, y*sh + i*dh, x + j*dw]
#       A pass takes 12 filters (12 accumulators, one input load and 12 broadcast weights
#       per tap; the weights transposed so that they are adjacent), the last pass of a row
#       starting at O - 12 (overwriting equal values); fewer filters: passes of 4, then 1.
#
#   conv_direct_gw(meta, src, dout, acc)
#       meta as conv_direct's; dout C-contiguous (n, O, oh, ow); acc C-contiguous
#       (O, C*kh*kw), added to:
#       acc[o, (c*kh + i)*kw + j] += sum_{b,y,x} dout[b, o, y, x] * src[b, c, y*sh + i*dh, x + j*dw]
#       Tiles of 4 filters x 2 taps (8 vector accumulators over every image, row and run,
#       from 4 gradient and 2 input loads per step); remainders one filter x one tap.  An
#       overlapping last run masks out the columns the runs before it counted.
_DIRECT_FIELDS = ("C", "kh", "kw", "oh", "ow", "n", "sh", "dh", "dw", "sb", "sc", "sr", "O")
DIRECT_GROUP = 12
GW_FILTERS, GW_TAPS = 4, 2  # 8 accumulators + 4 gradient rows + 1 input (13 registers)


def _direct_function(dtype):
    et = ir.FloatType() if dtype == "float32" else ir.DoubleType()
    mod = ir.Module()
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [PTR] * 4), name=jit.PLACEHOLDER)
    for a in fn.args[1:]:
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    m = {name: b.load(b.gep(fn.args[0], [ir.Constant(I64, k)], source_etype=I64), typ=I64)
         for k, name in enumerate(_DIRECT_FIELDS)}
    return mod, b, et, m, fn.args[1:]


def _runs(b, m, lanes, body, carried=()):
    """body(x, base, *carried) over the runs of a row: base = t*lanes for t < ceil(ow/lanes)
    and x = min(base, ow - lanes), the run's first column."""
    lanes_c = ir.Constant(I64, lanes)
    count = b.sdiv(b.add(m["ow"], ir.Constant(I64, lanes - 1)), lanes_c)
    last = b.sub(m["ow"], lanes_c)

    def run(t, *carried):
        base = b.mul(t, lanes_c)
        x = b.select(b.icmp_signed("<", base, last), base, last)
        return body(x, base, *carried)
    return _loop(b, ir.Constant(I64, 0), count, 1, run, carried)


def _fma(b, acc, x, y):
    # contract: one fused multiply-add, as BLAS computes the product
    return b.fadd(acc, b.fmul(x, y, flags=("contract",)), flags=("contract",))


def direct_ir(dtype: str) -> str:
    mod, b, et, m, (src, wt, out) = _direct_function(dtype)
    mul, add = b.mul, b.add
    zero = ir.Constant(I64, 0)
    lanes = 32 // et_bytes(et)
    vt = ir.VectorType(et, lanes)
    plane_out = mul(m["oh"], m["ow"])

    def passes(og):
        """Every output row in passes of og filters, the last pass at O - og."""
        count = b.sdiv(add(m["O"], ir.Constant(I64, og - 1)), ir.Constant(I64, og))
        last = b.sub(m["O"], ir.Constant(I64, og))

        def image(bi):
            def out_row(y):
                def group(g):
                    o0 = mul(g, ir.Constant(I64, og))
                    o0 = b.select(b.icmp_signed("<", o0, last), o0, last)
                    _runs(b, m, lanes, lambda x, base: columns(bi, y, o0, og, x) or [])
                    return []
                return _loop(b, zero, count, 1, group) or []
            return _loop(b, zero, m["oh"], 1, out_row) or []
        _loop(b, zero, m["n"], 1, image)

    def columns(bi, y, o0, og, x):
        """out[bi, o0:o0+og, y, x:x+lanes]: og accumulators over every tap."""
        def chan(c, *accs):
            base = add(mul(bi, m["sb"]), mul(c, m["sc"]))

            def tap_row(i, *accs):
                row = add(base, add(mul(add(mul(y, m["sh"]), mul(i, m["dh"])), m["sr"]), x))
                k0 = mul(add(mul(c, m["kh"]), i), m["kw"])

                def tap(j, *accs):
                    v = _load(b, b.gep(src, [add(row, mul(j, m["dw"]))], source_etype=et),
                              et, lanes)
                    wrow = b.gep(wt, [add(mul(add(k0, j), m["O"]), o0)], source_etype=et)
                    return [_fma(b, acc, splat(b, b.load(b.gep(wrow, [ir.Constant(I64, o)],
                                                                source_etype=et), typ=et),
                                                lanes), v)
                            for o, acc in enumerate(accs)]
                return _loop(b, zero, m["kw"], 1, tap, accs)
            return _loop(b, zero, m["kh"], 1, tap_row, accs)
        accs = _loop(b, zero, m["C"], 1, chan, [ir.Constant(vt, [0.0] * lanes)] * og)
        for o, acc in enumerate(accs):
            at = add(mul(add(mul(bi, m["O"]), add(o0, ir.Constant(I64, o))), plane_out),
                     add(mul(y, m["ow"]), x))
            _store(b, acc, b.gep(out, [at], source_etype=et))

    # one nest per filter count class: O >= 12, 4 <= O < 12, O < 4
    big = b.icmp_signed(">=", m["O"], ir.Constant(I64, DIRECT_GROUP))
    mid = b.icmp_signed(">=", m["O"], ir.Constant(I64, 4))
    with b.if_else(big) as (then, otherwise):
        with then:
            passes(DIRECT_GROUP)
        with otherwise:
            with b.if_else(mid) as (then4, then1):
                with then4:
                    passes(4)
                with then1:
                    passes(1)
    b.ret_void()
    return str(mod)


def direct_gw_ir(dtype: str) -> str:
    mod, b, et, m, (src, dout, acc) = _direct_function(dtype)
    mul, add = b.mul, b.add
    zero = ir.Constant(I64, 0)
    lanes = 32 // et_bytes(et)
    vt = ir.VectorType(et, lanes)
    iota = ir.Constant(ir.VectorType(ir.IntType(32), lanes), list(range(lanes)))
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
        wide = b.and_(m["ow"], ir.Constant(I64, -lanes))
        last = b.sub(m["ow"], ir.Constant(I64, lanes))

        def image(bi, *accs):
            def out_row(y, *accs):
                srow = add(mul(bi, m["sb"]), mul(mul(y, m["sh"]), m["sr"]))
                drow = add(mul(mul(bi, m["O"]), plane_out), mul(y, m["ow"]))

                def run(x, accs, fresh=None):
                    g = [_load(b, b.gep(dout, [add(add(drow, mul(add(o0, ir.Constant(I64, o)),
                                                                 plane_out)), x)],
                                       source_etype=et), et, lanes) for o in range(ot)]
                    if fresh is not None:
                        g = [b.select(fresh, v, ir.Constant(vt, [0.0] * lanes)) for v in g]
                    new = list(accs)
                    for t in range(kt):
                        v = _load(b, b.gep(src, [add(srow, add(taps[t], x))], source_etype=et),
                                  et, lanes)
                        for o in range(ot):
                            new[o * kt + t] = _fma(b, new[o * kt + t], g[o], v)
                    return new
                accs = _loop(b, zero, wide, lanes, lambda x, *a: run(x, a), accs)
                # the last, overlapping run: its first wide - last lanes were counted
                def tail():
                    shift = splat(b, b.trunc(b.sub(wide, last), ir.IntType(32)), lanes)
                    return run(last, accs, b.icmp_signed(">=", iota, shift))
                return if_then_values(b, b.icmp_signed("<", wide, m["ow"]), accs, tail)
            return _loop(b, zero, m["oh"], 1, out_row, accs)
        sums = _loop(b, zero, m["n"], 1, image, [ir.Constant(vt, [0.0] * lanes)] * (ot * kt))
        for o in range(ot):
            for t in range(kt):
                total = b.extract_element(sums[o * kt + t], ir.Constant(I64, 0))
                for lane in range(1, lanes):
                    total = b.fadd(total, b.extract_element(sums[o * kt + t],
                                                            ir.Constant(I64, lane)))
                p = b.gep(acc, [add(mul(add(o0, ir.Constant(I64, o)), K),
                                    add(k0, ir.Constant(I64, t)))], source_etype=et)
                b.store(b.fadd(b.load(p, typ=et), total), p)

    # tiles of GW_FILTERS x GW_TAPS, then single (filter, tap) pairs for the rest
    o_full = b.sub(m["O"], b.srem(m["O"], ir.Constant(I64, GW_FILTERS)))
    k_full = b.sub(K, b.srem(K, ir.Constant(I64, GW_TAPS)))

    def tiled(o0):
        _loop(b, zero, k_full, GW_TAPS, lambda k0: tile(o0, GW_FILTERS, k0, GW_TAPS) or [])
        return []
    _loop(b, zero, o_full, GW_FILTERS, tiled)

    def single(p):
        # pairs (o, k) outside the tiles: o < o_full with k >= k_full, then every o >= o_full
        rest = b.sub(K, k_full)
        in_tiles = mul(o_full, rest)
        o = b.select(b.icmp_signed("<", p, in_tiles), b.sdiv(p, b.select(
            b.icmp_signed(">", rest, zero), rest, ir.Constant(I64, 1))),
            add(o_full, b.sdiv(b.sub(p, in_tiles), K)))
        k = b.select(b.icmp_signed("<", p, in_tiles), add(k_full, b.srem(p, b.select(
            b.icmp_signed(">", rest, zero), rest, ir.Constant(I64, 1)))),
            b.srem(b.sub(p, in_tiles), K))
        tile(o, 1, k, 1)
        return []
    pairs = add(mul(o_full, b.sub(K, k_full)), mul(b.sub(m["O"], o_full), K))
    _loop(b, zero, pairs, 1, single)
    b.ret_void()
    return str(mod)


# Optimizer level: the loops here are vectorized and laid out by hand; -O2 ran them as fast
# as -O3 and compiled ~4x faster (a cold compile of the four float32 kernels: ~0.4 s
# against ~1.6 s on a loaded machine).
OPT_LEVEL = 2


def load_convblock(kind: str, dtype: str) -> int:
    """Address of ``kind`` ('im2col', 'col2im', 'direct' or 'direct_gw') for float32 or
    float64."""
    make = {"im2col": im2col_ir, "col2im": col2im_ir, "direct": direct_ir,
            "direct_gw": direct_gw_ir}[kind]
    # _loop is codegen.emit_for
    key = jit.cache_key("convblock", kind, dtype, jit.source_hash("convblock.py", "codegen.py"))
    return jit.load_function(key, lambda: make(dtype), title=f"{kind} block {dtype}",
                             optimize=OPT_LEVEL)
