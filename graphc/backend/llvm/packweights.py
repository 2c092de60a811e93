"""The native packing of a weight into the panels the packed product reads (packgemm.py).

graphc.tensor.packed.pack_weights lays B = w (or w.T), (K, N), out as ceil(N/16) panels of
(K, 16), zero padded. numpy does it as a strided copy whose inner loop is one 16-float row
(~0.9 ms for an LSTM's 256x1024 weight, on a fresh zeroed megabyte each call) or a
gather along w's columns (w.T: ~0.45 ms); here ~0.12-0.15 ms each into a kept buffer
(in-process, warm W, loaded 2-core machine). Written in LLVM IR with explicit vectors and
compiled without optimizer passes (~30 ms cold, on a background thread from a step's second
call; numpy packs until it is loaded):

    pw_pack(trans, w, ldw, K, N, out)
        w float32 with unit column stride and row stride ldw: (K, N), or (N, K) with trans;
        out (ceil(N/16), K, 16), every element written (padding as zeros).

- plain: out[p, k, :] = w[k, 16p:16p+16]: two 8-lane loads (masked in the last panel,
  zeros elsewhere) and two stores per row of a panel;
- trans: out[p, k, :] = w[16p:16p+16, k]: 8x8 blocks of w (8 rows of 8 floats along k)
  transposed in registers (unpack, shuffle, 128-bit lane permute; rows past N load as
  zeros, columns past K are not stored), so reads and writes are whole vectors.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np
from llvmlite import ir

from graphc.tensor.packed import PANEL

from . import jit
from .codegen import emit_for, splat
from .kernel import data_pointer

F32 = ir.FloatType()
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
LANES = 8
assert PANEL == 2 * LANES
VEC = ir.VectorType(F32, LANES)
IVEC = ir.VectorType(I32, LANES)
MASK = ir.VectorType(ir.IntType(1), LANES)


def _c(v):
    return ir.Constant(I64, v)


def _shuffle(b, x, y, idx):
    return b.shuffle_vector(x, y, ir.Constant(IVEC, idx))


def _transpose8(b, v):
    """The 8 columns of the 8x8 block whose rows are ``v`` (as 8 vectors)."""
    t = []
    for i in range(0, 8, 2):               # interleave row pairs within 128-bit lanes
        t += [_shuffle(b, v[i], v[i + 1], [0, 8, 1, 9, 4, 12, 5, 13]),
              _shuffle(b, v[i], v[i + 1], [2, 10, 3, 11, 6, 14, 7, 15])]
    lo, hi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    s = []
    for q in (0, 4):                       # rows 0-3, then 4-7: 4-row columns per lane
        s += [_shuffle(b, t[q], t[q + 2], lo), _shuffle(b, t[q], t[q + 2], hi),
              _shuffle(b, t[q + 1], t[q + 3], lo), _shuffle(b, t[q + 1], t[q + 3], hi)]
    # s[c] holds column c (lanes 0-3) and column c + 4 (lanes 4-7) of rows 0-3; s[4 + c]
    # the same of rows 4-7
    cols = [None] * 8
    for c in range(4):
        cols[c] = _shuffle(b, s[c], s[4 + c], [0, 1, 2, 3, 8, 9, 10, 11])
        cols[c + 4] = _shuffle(b, s[c], s[4 + c], [4, 5, 6, 7, 12, 13, 14, 15])
    return cols


def _pack_function(mod, name):
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [I64, PTR, I64, I64, I64, PTR]),
                     name=name)
    trans, w, ldw, k, n, out = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    mload = ir.Function(mod, ir.FunctionType(VEC, [PTR, I32, MASK, VEC]),
                        name="llvm.masked.load.v8f32.p0")
    zero = ir.Constant(VEC, [0.0] * LANES)
    lanes = ir.Constant(IVEC, list(range(LANES)))
    panels = b.sdiv(b.add(n, _c(PANEL - 1)), _c(PANEL))

    def below(left):
        """lanes < left (an i64, any sign)."""
        left = b.select(b.icmp_signed("<", left, _c(LANES)), left, _c(LANES))
        return b.icmp_signed("<", lanes, splat(b, b.trunc(left, I32), LANES))

    def load(ptr, mask):
        return b.call(mload, [ptr, ir.Constant(I32, 4), mask, zero])

    def at(base, index):
        return b.gep(base, [index], source_etype=F32)

    def plain_row(p, kk, masks):
        src = at(w, b.add(b.mul(kk, ldw), b.mul(p, _c(PANEL))))
        dst = at(out, b.mul(b.add(b.mul(p, k), kk), _c(PANEL)))
        for h in range(2):
            b.store(load(at(src, _c(h * LANES)), masks[h]), at(dst, _c(h * LANES)), align=4)
        return []

    def plain_panel(p, _):
        cols = b.sub(n, b.mul(p, _c(PANEL)))
        masks = [below(b.sub(cols, _c(h * LANES))) for h in range(2)]
        emit_for(b, _c(0), k, _c(1), [], lambda kk, _: plain_row(p, kk, masks))
        return []

    def trans_block(p, k0, h):
        """out[p, k0:k0+8, 8h:8h+8] from rows 16p+8h.. of w, columns k0..k0+8."""
        kmask = below(b.sub(k, k0))
        rows = []
        for j in range(LANES):
            r = b.add(b.add(b.mul(p, _c(PANEL)), b.mul(h, _c(LANES))), _c(j))
            valid = b.icmp_signed("<", r, n)
            r = b.select(valid, r, _c(0))        # no address past w for a padding row
            mask = b.and_(kmask, splat(b, valid, LANES))
            rows.append(load(at(w, b.add(b.mul(r, ldw), k0)), mask))
        for c, col in enumerate(_transpose8(b, rows)):
            kk = b.add(k0, _c(c))
            with b.if_then(b.icmp_signed("<", kk, k)):
                dst = at(out, b.add(b.mul(b.add(b.mul(p, k), kk), _c(PANEL)), b.mul(h, _c(LANES))))
                b.store(col, dst, align=4)

    def trans_panel(p, _):
        def halves(k0, _):
            # the two halves of a panel as a loop: the transposition's code once
            emit_for(b, _c(0), _c(2), _c(1), [], lambda h, _: trans_block(p, k0, h) or [])
            return []
        emit_for(b, _c(0), k, _c(LANES), [], halves)
        return []

    with b.if_else(b.icmp_signed("!=", trans, _c(0))) as (then, otherwise):
        with then:
            emit_for(b, _c(0), panels, _c(1), [], trans_panel)
        with otherwise:
            emit_for(b, _c(0), panels, _c(1), [], plain_panel)
    b.ret_void()
    return fn


def pack_ir() -> str:
    """IR of pw_pack; the entry point is jit.PLACEHOLDER."""
    mod = ir.Module(name="packweights")
    _pack_function(mod, jit.PLACEHOLDER)
    return str(mod)


_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                          ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_state = {"fn": None, "status": "new"}        # new, loading, failed (fn set: loaded)
_lock = threading.Lock()


def _key() -> str:
    return jit.cache_key("packweights", jit.NOOPT_FLAGS, jit.source_hash("packweights.py"))


def _load():
    # explicit vectors and plain loops: no optimizer passes (their compile time was ~2/3 of
    # the total at -O1, and the code ran no faster)
    fn = _PROTO(jit.load_function(_key(), pack_ir, title="pack weights", optimize=False))
    _state["fn"] = fn
    return fn


def _background_load():
    try:
        _load()
    except Exception:           # numpy packs in this process; a later one retries
        _state["status"] = "failed"


def packer(compile: bool = True):
    """pw_pack as a ctypes function, or None (numpy packs meanwhile): loaded at once when
    this process has it or the cache holds it as a linked library; else, where ``compile``,
    compiled on a background thread. A step asks with ``compile=False`` on its first call:
    a cold first call does not spend ~30 ms of LLVM on a pack numpy does in ~1 ms."""
    fn = _state["fn"]
    if fn is not None:
        return fn
    with _lock:
        if _state["fn"] is None and _state["status"] == "new":
            if jit.linked(_key()):
                return _load()
            if compile:
                _state["status"] = "loading"
                threading.Thread(target=_background_load, name="graphc-packweights",
                                 daemon=True).start()
    return _state["fn"]


def pack_into(w: np.ndarray, trans: bool, out: np.ndarray, fn) -> np.ndarray:
    """``out`` := the panels of w (w.T with ``trans``) through ``fn`` = packer(); w float32
    with unit column stride (else copied), out C-contiguous float32 of the panels' shape."""
    if w.ndim != 2 or w.shape[1] > 1 and w.strides[1] != 4 or w.strides[0] % 4 or \
            w.strides[0] < 0:
        w = np.ascontiguousarray(w)
    k, n = w.shape[::-1] if trans else w.shape
    if out.size:
        fn(int(trans), data_pointer(w), w.strides[0] // 4, k, n, data_pointer(out))
    return out
