"""Large matrix products split by columns over the spin pool, one BLAS thread per slice.

numpy's OpenBLAS splits a product over its own threads with a fixed share each and waits
for all of them. When the machine has more runnable threads than cores (other processes,
other tenants of a VM), one of those threads waits for a time slice and the whole product
waits with it: a 256x1024 @ 1024x1024 float32 product took 75-80 ms on OpenBLAS's two
threads against 16 ms on one (development machine, load ~3.9, median of 10, in-process).

Here C = alpha * A @ B + beta * C is cut into column slices (multiples of 16 columns) that
the caller and the spin pool's workers claim one by one (graphc/backend/llvm/spinpool.py),
each one call of numpy's own CBLAS gemm on one OpenBLAS thread. A worker that gets no core
leaves its slices to the others, so a loaded machine costs about the one-thread time, and
an idle one gets both cores, and OpenBLAS's own threads never run (see blas.py: they
busy-wait after a call). Each product shape times the split against one call now and then
and uses the faster (spinpool.TwoWays): 3.8 / 3.8 / 6.6 ms against 8.4 / 6.2 / 11.6 ms for
the LSTM step's three large products (1600x128 @ 128x1024, and the weight gradients
128x1600 @ 1600x1024 and 256x1600 @ 1600x1024), idle machine.

    gemm_slice(d, s)
        d = int64 [cblas gemm, slices, order, transA, transB, M, N, K, alpha (double bits),
        A, lda, B, ldb, beta (double bits), C, ldc, bytes per column of B, itemsize]:
        columns [n0, n1) of slice s (boundaries rounded down to 16 columns) as one
        ``cblas_?gemm(order, ta, tb, M, n1 - n0, K, alpha, A, lda, B + n0 col, ldb, beta,
        C + n0 col, ldc)``; integer arguments of the library's width (32 or 64 bits).
"""
from __future__ import annotations

import ctypes
from time import perf_counter

import numpy as np

from . import jit
from .spinpool import TwoWays, get_pool, prefetch, ready, usable

UNIT = 16                   # columns per slice boundary (whole vectors for the kernels)
SLICES_PER_THREAD = 2
MIN_WORK = 1 << 22          # multiply-adds below which OpenBLAS's own call is kept
_FIELDS = ("fn", "slices", "order", "ta", "tb", "m", "n", "k", "alpha", "a", "lda", "b", "ldb",
           "beta", "c", "ldc", "bstep", "item")


def _gemm_slice_ir(real: str, bits: int) -> str:
    """IR text of gemm_slice for ``real`` ('float' or 'double') and ``bits``-wide ints."""
    lines = ["define void @ENTRY_NAME(ptr %d, i64 %s) {", "entry:"]
    for i, name in enumerate(_FIELDS):
        lines += [f"  %p{name} = getelementptr inbounds i64, ptr %d, i64 {i}",
                  f"  %{name} = load i64, ptr %p{name}, align 8"]
    lines += [
        "  %f = inttoptr i64 %fn to ptr",
        "  %x0 = mul i64 %s, %n", "  %y0 = sdiv i64 %x0, %slices",
        f"  %n0 = and i64 %y0, {-UNIT}",
        "  %s1 = add i64 %s, 1", "  %x1 = mul i64 %s1, %n", "  %y1 = sdiv i64 %x1, %slices",
        f"  %r1 = and i64 %y1, {-UNIT}",
        "  %last = icmp eq i64 %s1, %slices",
        "  %n1 = select i1 %last, i64 %n, i64 %r1",
        "  %w = sub i64 %n1, %n0",
        "  %empty = icmp sle i64 %w, 0",
        "  br i1 %empty, label %done, label %run",
        "run:",
        "  %boff = mul i64 %n0, %bstep", "  %bp0 = inttoptr i64 %b to ptr",
        "  %bp = getelementptr inbounds i8, ptr %bp0, i64 %boff",
        "  %coff = mul i64 %n0, %item", "  %cp0 = inttoptr i64 %c to ptr",
        "  %cp = getelementptr inbounds i8, ptr %cp0, i64 %coff",
        "  %ap = inttoptr i64 %a to ptr",
        "  %ad = bitcast i64 %alpha to double", "  %bd = bitcast i64 %beta to double"]
    if real == "float":
        lines += ["  %al = fptrunc double %ad to float", "  %be = fptrunc double %bd to float"]
    else:
        lines += ["  %al = fadd double %ad, 0.0", "  %be = fadd double %bd, 0.0"]
    args = []
    for name in ("order", "ta", "tb"):
        lines.append(f"  %{name}32 = trunc i64 %{name} to i32")
        args.append(f"i32 %{name}32")
    conv = {}
    for name in ("m", "w", "k", "lda", "ldb", "ldc"):
        if bits == 64:
            conv[name] = f"i64 %{name}"
        else:
            lines.append(f"  %{name}i = trunc i64 %{name} to i32")
            conv[name] = f"i32 %{name}i"
    args += [conv["m"], conv["w"], conv["k"], f"{real} %al", "ptr %ap", conv["lda"],
             "ptr %bp", conv["ldb"], f"{real} %be", "ptr %cp", conv["ldc"]]
    lines += [f"  call void %f({', '.join(args)})", "  br label %done",
              "done:", "  ret void", "}"]
    return "\n".join(lines)


_slices: dict = {}


def _slice_key(real: str, bits: int) -> str:
    return jit.cache_key("blas-gemm-slice", "O1", _gemm_slice_ir(real, bits))


def _slice_fn(real: str, bits: int) -> int:
    addr = _slices.get((real, bits))
    if addr is None:
        text = _gemm_slice_ir(real, bits)
        addr = _slices[(real, bits)] = jit.load_function(
            _slice_key(real, bits),
            lambda: text.replace("ENTRY_NAME", jit.PLACEHOLDER), title=f"gemm slice {real}",
            optimize=1)
    return addr


_ways: dict = {}            # product signature -> TwoWays


def split_gemm(fn, args, threads: int) -> bool:
    """Run ``fn(*args)`` (numpy's CBLAS gemm, row-major arguments as blas.gemm_into builds
    them, called with OpenBLAS on one thread) split by columns over the spin pool when that
    has been faster than one call for this signature; False (nothing run) when the caller
    should make the call itself."""
    order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc = args
    if threads < 2 or m * n * k < MIN_WORK or n < 2 * UNIT or not usable(1):
        return False
    types = getattr(fn, "argtypes", None)
    if not types:                   # not a ctypes function: nothing to call natively
        return False
    real = "float" if types[6] is ctypes.c_float else "double"
    bits = 64 if types[3] is ctypes.c_int64 else 32
    key = (real, ta, tb, m, n, k)
    ways = _ways.get(key)
    if ways is None:
        if len(_ways) > 256:
            _ways.clear()
        ways = _ways[key] = TwoWays()
        prefetch(f"gemm-{real}-{bits}", lambda: _slice_fn(real, bits),
                 keys=(_slice_key(real, bits),))
    split = ways.split() and ready() and (real, bits) in _slices
    pool = get_pool(threads) if split else None
    start = perf_counter()
    ran = False
    if pool is not None:
        item = 4 if real == "float" else 8
        # B's columns are adjacent elements (no transpose), else rows ldb apart
        bstep = item if tb == 111 else ldb * item
        slices = min(SLICES_PER_THREAD * threads, n // UNIT)
        d = np.array([ctypes.cast(fn, ctypes.c_void_p).value, slices, order, ta, tb, m, n, k,
                      np.float64(alpha).view(np.int64), a, lda, b, ldb,
                      np.float64(beta).view(np.int64), c, ldc, bstep, item], np.int64)
        ran = pool.run(_slice_fn(real, bits), d.ctypes.data, slices)
    if not ran:
        fn(*args)
    ways.record(ran, perf_counter() - start)
    return True
