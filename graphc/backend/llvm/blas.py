"""BLAS for generated code and for the linker: function addresses and a row-major gemm.

scipy ships the Fortran BLAS it links against as PyCapsules in
``scipy.linalg.cython_blas.__pyx_capi__``; a capsule's name is the C signature, which
``PyCapsule_GetPointer`` must be given. All routines use the Fortran ABI: every argument by
pointer, column-major matrices, 32-bit ints (LP64).

Row-major C (m x n) is column-major C^T (n x m), so ``C = op(A) @ op(B)`` is computed as
``C^T = op(B)^T @ op(A)^T`` with the operands swapped; a row-major or column-major operand
is described by a transpose flag and a leading dimension, without copying. Only operands with
no unit stride (e.g. ``x[::2, ::3]``) are copied.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import os
import sys

import numpy as np

_get_name = ctypes.pythonapi.PyCapsule_GetName
_get_name.restype = ctypes.c_char_p
_get_name.argtypes = [ctypes.py_object]
_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

_addresses: dict = {}
_module = None


def _cython_blas():
    """scipy.linalg.cython_blas, without running scipy.linalg's __init__ when possible.

    That __init__ imports most of scipy.linalg (~150 ms, counted in every process's first
    compile); the extension module itself loads in ~2 ms and needs none of it. Cython keeps one
    module object per process, so a later ``import scipy.linalg`` gets this same module.
    """
    global _module
    if _module is None:
        _module = sys.modules.get("scipy.linalg.cython_blas") or _load_cython_blas()
    return _module


def _load_cython_blas():
    try:
        import scipy
        folder = os.path.join(scipy.__path__[0], "linalg")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "cython_blas" + suffix)
            if os.path.exists(path):
                spec = importlib.util.spec_from_file_location("scipy.linalg.cython_blas", path)
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                return mod
    except Exception:                      # any surprise: the ordinary import below
        pass
    from scipy.linalg import cython_blas
    return cython_blas


def blas_pointer(name: str) -> int:
    """Address of the BLAS routine ``name`` ('sgemm', 'dgemv', 'saxpy', ...)."""
    addr = _addresses.get(name)
    if addr is None:
        try:
            capsule = _cython_blas().__pyx_capi__[name]
        except KeyError:
            raise ValueError(f"no BLAS routine named {name!r} in scipy.linalg.cython_blas") \
                from None
        addr = _get_pointer(capsule, _get_name(capsule))
        if not addr:
            raise RuntimeError(f"cannot get the address of BLAS {name}")
        _addresses[name] = addr
    return addr


_GEMM_PROTO = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 13)
_gemm_fns: dict = {}


def _gemm_fn(dtype):
    name = {np.dtype(np.float32): "sgemm", np.dtype(np.float64): "dgemm"}.get(dtype)
    if name is None:
        raise TypeError(f"gemm supports float32 and float64, not {dtype}")
    fn = _gemm_fns.get(name)
    if fn is None:
        fn = _gemm_fns[name] = _GEMM_PROTO(blas_pointer(name))
    return fn


def _fortran_view(x):
    """Describe x^T for Fortran: (trans, ld, array) such that op_trans(the column-major matrix
    with leading dimension ld at array's data) == x^T.

    Row-major x is x^T in column-major order ('N'); column-major x needs 'T'. Anything else
    (no unit stride, negative or zero strides) is copied to row-major first."""
    r, c = x.shape
    item = x.itemsize
    s0, s1 = x.strides
    if c == 1 or s1 == item:               # row-major: memory is x^T column-major
        if r == 1 or s0 % item == 0 and s0 // item >= max(1, c):
            return b"N", max(1, c if r == 1 else s0 // item), x
    if r == 1 or s0 == item:               # column-major: memory is x column-major
        if c == 1 or s1 % item == 0 and s1 // item >= max(1, r):
            return b"T", max(1, r if c == 1 else s1 // item), x
    x = np.ascontiguousarray(x)
    return b"N", max(1, c), x


def gemm(transA: bool, transB: bool, alpha, A, B, beta, C) -> None:
    """C[...] = alpha * op(A) @ op(B) + beta * C for 2-D float32/float64 arrays.

    op(X) is X.T when transX is true. A and B may be any views (transposed, sliced); C must be
    row-major with unit column stride (C-contiguous rows), else the result goes through a copy.
    With beta == 0, C's previous contents are ignored (even nan).
    """
    dtype = C.dtype
    fn = _gemm_fn(dtype)
    if A.dtype != dtype or B.dtype != dtype:
        raise TypeError(f"gemm dtypes differ: {A.dtype}, {B.dtype}, {C.dtype}")
    P = A.T if transA else A               # m x k
    Q = B.T if transB else B               # k x n
    m, k = P.shape
    k2, n = Q.shape
    if k != k2 or C.shape != (m, n):
        raise ValueError(f"gemm shapes: op(A) {P.shape} @ op(B) {Q.shape} -> C {C.shape}")
    if m == 0 or n == 0:
        return
    item = C.itemsize
    direct = C.flags.writeable and (n == 1 or C.strides[1] == item) and \
        (m == 1 or C.strides[0] % item == 0 and C.strides[0] // item >= n)
    out = C if direct else np.ascontiguousarray(C)
    ldc = max(1, n if m == 1 else out.strides[0] // item)
    # Column-major view: C^T (n x m) = op(B)^T (n x k) @ op(A)^T (k x m).
    ta, lda, Qv = _fortran_view(Q)
    tb, ldb, Pv = _fortran_view(P)
    ctype = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    i = ctypes.c_int
    fn(ctypes.c_char_p(ta), ctypes.c_char_p(tb), ctypes.byref(i(n)), ctypes.byref(i(m)),
       ctypes.byref(i(k)), ctypes.byref(ctype(alpha)), Qv.ctypes.data, ctypes.byref(i(lda)),
       Pv.ctypes.data, ctypes.byref(i(ldb)), ctypes.byref(ctype(beta)), out.ctypes.data,
       ctypes.byref(i(ldc)))
    if out is not C:
        C[...] = out


# --------------------------------------------------------------------------- numpy's BLAS
# The linker's gemm steps call the BLAS numpy itself is linked against (one OpenBLAS thread
# pool in the process: a second pool on the same cores slowed both by 30-100x), through its
# CBLAS interface, so that ``C = alpha * A @ B + beta * C`` is one BLAS call where np.dot
# needs a product array and two more passes over it.  Names tried, in order: the symbol
# names of numpy's bundled scipy-openblas (64-bit ints), then the plain ones (whose int width
# numpy's build configuration gives).
_CBLAS_NAMES = (("scipy_cblas_{}64_", 64), ("cblas_{}64_", 64), ("cblas_{}", None))
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_numpy_cblas: dict = {}


_blas_paths: list = []                   # _numpy_blas_libs' answer, once found


def _numpy_blas_libs():
    """Paths of the loaded shared libraries that look like numpy's BLAS (found once: the gemm
    and thread-count lookups both ask). The libraries bundled in numpy's wheel are tried
    first, each asked of the dynamic loader without loading it (RTLD_NOLOAD); only when none
    of them is loaded is /proc/self/maps read (~1-2 ms in a process that has loaded its
    kernels' libraries)."""
    if _blas_paths:
        return list(_blas_paths)
    import numpy
    pkg = os.path.dirname(os.path.abspath(numpy.__file__))
    roots = (pkg + os.sep, pkg + ".libs" + os.sep)     # the wheel's bundled libraries
    paths = []
    noload = getattr(os, "RTLD_NOLOAD", 0)
    for root in roots if noload else ():
        try:
            names = sorted(os.listdir(root))
        except OSError:
            continue
        for name in names:
            if "blas" in name.lower() and ".so" in name:
                try:
                    ctypes.CDLL(root + name, mode=noload | os.RTLD_LAZY)
                except OSError:             # not loaded in this process
                    continue
                paths.append(root + name)
    if not paths:
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    path = line.split()[-1] if line.count("/") else ""
                    if path.startswith(roots) and "blas" in os.path.basename(path).lower() \
                            and path not in paths:
                        paths.append(path)
        except OSError:
            pass
    _blas_paths.extend(paths)
    return paths


def _numpy_int_bits():
    """32 or 64: the integer width of numpy's BLAS (from numpy's build configuration)."""
    try:
        import numpy
        cfg = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return 64 if "64" in str(cfg.get("name", "")) + str(cfg.get("openblas configuration",
                                                                   "")) else 32
    except Exception:
        return None


def numpy_cblas_gemm(dtype):
    """numpy's cblas_sgemm/dgemm as a ctypes function, with its integer type; None when
    numpy's BLAS cannot be found (then callers use np.dot)."""
    key = np.dtype(dtype).name
    if key in _numpy_cblas:
        return _numpy_cblas[key]
    found = None
    name = {"float32": "sgemm", "float64": "dgemm"}.get(key)
    if name is not None:
        for path in _numpy_blas_libs():
            try:
                lib = ctypes.CDLL(path)     # already loaded by numpy: the same library
            except OSError:
                continue
            for pattern, bits in _CBLAS_NAMES:
                fn = getattr(lib, pattern.format(name), None)
                bits = bits or _numpy_int_bits()
                if fn is None or bits is None:
                    continue
                i = ctypes.c_int64 if bits == 64 else ctypes.c_int32
                real = ctypes.c_float if key == "float32" else ctypes.c_double
                p = ctypes.c_void_p
                fn.restype = None
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i, i, i, real, p, i,
                               p, i, real, p, i]
                found = fn
                break
            if found is not None:
                break
    _numpy_cblas[key] = found
    return found


# --------------------------------------------------------------------------- threads in loops
# Every product graphc runs through numpy's OpenBLAS runs on ONE OpenBLAS thread; graphc
# makes the parallelism itself (blas_split.py: column slices on its spin pool; packgemm.py
# for a scan step's products). OpenBLAS's workers busy-wait for ~0.1 s after a threaded call
# (development machine), so one threaded call leaves a spinning thread that takes a core from
# everything graphc runs next: the LSTM step took 77 ms with OpenBLAS's threads in its gemms
# against 50 ms with none (same process, idle machine; its per-step products ran at 514-831
# instead of 262-283 us on one thread), and OpenBLAS's fixed shares stall on a loaded machine
# (a 256x1024 @ 1024x1024 product: 75-80 ms on two threads vs 16 ms on one, load ~3.9).
# The count is process-wide: it is set to 1 around each call and restored after it (a
# product another Python thread starts meanwhile may run on one thread too).
SPLIT_MIN = 1 << 22                      # products from which blas_split may take over
step_loops = [0]                         # scan loops running (see in_step_loop)
SMALL_PRODUCT = 1 << 16                  # below: OpenBLAS runs it on one thread anyway
_threads_fns: dict = {}
# calls running with the count lowered to 1 (one_blas_thread), and the count to restore:
# a child forked meanwhile has no thread that restores it, and would keep one BLAS thread
lowered = [0, 1]


def _restore_in_child():
    if lowered[0] and _threads_fns.get("fns"):
        _threads_fns["fns"][1](lowered[1])
    lowered[0] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restore_in_child)


def _numpy_blas_threads():
    """(get, set) of numpy's OpenBLAS thread count, or None when not found."""
    if "fns" in _threads_fns:
        return _threads_fns["fns"]
    found = None
    for path in _numpy_blas_libs():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in (("scipy_openblas_get_num_threads64_",
                                    "scipy_openblas_set_num_threads64_"),
                                   ("openblas_get_num_threads64_",
                                    "openblas_set_num_threads64_"),
                                   ("openblas_get_num_threads", "openblas_set_num_threads")):
            get, put = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and put is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                put.restype, put.argtypes = None, [ctypes.c_int]
                found = (get, put)
                break
        if found is not None:
            break
    _threads_fns["fns"] = found
    return found


class one_blas_thread:
    """Context: numpy's OpenBLAS on one thread (see above), its count restored after, also
    in a child forked meanwhile (``lowered``)."""

    __slots__ = ("before",)

    def __enter__(self):
        threads = _numpy_blas_threads()
        self.before = before = threads[0]() if threads is not None else 1
        if before > 1:
            lowered[0] += 1
            lowered[1] = before
            threads[1](1)

    def __exit__(self, *exc):
        if self.before > 1:
            _threads_fns["fns"][1](self.before)
            lowered[0] -= 1


class in_step_loop:
    """Context of a scan's step loop (the linker sends every product in it to gemm_into)."""

    def __enter__(self):
        step_loops[0] += 1

    def __exit__(self, *exc):
        step_loops[0] -= 1


def _row_major_view(x):
    """(transpose flag, leading dimension) for CBLAS row-major: x itself when its rows are
    contiguous, x.T of a row-major array when its columns are; None otherwise."""
    r, c = x.shape
    item = x.itemsize
    s0, s1 = x.strides
    if (c == 1 or s1 == item) and s0 % item == 0 and s0 // item >= max(1, c):
        return _NO_TRANS, max(1, s0 // item)
    if (r == 1 or s0 == item) and s1 % item == 0 and s1 // item >= max(1, r):
        return _TRANS, max(1, s1 // item)
    return None


def gemm_into(a, b, alpha, beta, c) -> bool:
    """c[...] = alpha * a @ b + beta * c with numpy's BLAS, in one call; a, b, c 2-D arrays of
    one float dtype with matching shapes, c with contiguous rows.  With beta == 0, c's
    contents are ignored.  Returns False (nothing done) when numpy's CBLAS is unavailable
    or an operand has a layout BLAS cannot take (the caller then uses np.dot)."""
    fn = numpy_cblas_gemm(c.dtype)
    if fn is None or not c.flags.writeable or a.dtype != c.dtype or b.dtype != c.dtype:
        return False
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0 or k == 0:
        return False
    va, vb = _row_major_view(a), _row_major_view(b)
    item = c.itemsize
    if va is None or vb is None or not (n == 1 or c.strides[1] == item) or \
            c.strides[0] % item or c.strides[0] // item < n and m > 1:
        return False
    ldc = max(1, n if m == 1 else c.strides[0] // item)
    args = (_ROW_MAJOR, va[0], vb[0], m, n, k, alpha, a.ctypes.data, va[1], b.ctypes.data,
            vb[1], beta, c.ctypes.data, ldc)
    with one_blas_thread():
        if m * n * k >= SPLIT_MIN:
            from .blas_split import split_gemm
            from .kernel import num_threads
            if split_gemm(fn, args, num_threads()):
                return True
        fn(*args)
    return True
