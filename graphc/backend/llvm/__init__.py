"""Native CPU backend: fused elementwise/reduction kernels compiled to machine code with LLVM.

    kernel = compile_kernel(spec)          # KernelSpec -> Kernel (memoized per spec)
    kernel(inputs, outputs)                # numpy arrays in, preallocated arrays out
    blas_pointer("sgemm")                  # address of a BLAS routine, for generated code
    cache_info(), clear_cache(), set_compiledir(path)

Modules: jit (target machine, engine, object cache), codegen (loops), scalar (op semantics),
vmath (polynomial math), kernel (Kernel, plans, threads), blas (BLAS pointers and gemm),
softmax and col2im (hand-written kernels of the cross-entropy and convolution steps).
Set GRAPHC_DEBUG_LLVM=1 to print each kernel's IR and assembly to stderr.
"""
from __future__ import annotations

import threading

from ..kernel_spec import KernelSpec
from .blas import blas_pointer, gemm
from .jit import cache_info, clear_cache, compiledir, set_compiledir
from .kernel import Kernel, num_threads, set_num_threads

__all__ = ["compile_kernel", "Kernel", "blas_pointer", "gemm", "cache_info", "clear_cache",
           "compiledir", "set_compiledir", "num_threads", "set_num_threads"]

_memo: dict = {}
_memo_lock = threading.Lock()


def compile_kernel(spec: KernelSpec, debug=None) -> Kernel:
    """The Kernel for ``spec``; equal specs share one Kernel (and its compiled variants).

    Machine code is generated lazily, per loop variant, on the first call that needs it.
    ``debug=True`` (or GRAPHC_DEBUG_LLVM=1) prints the IR and assembly of each variant.
    """
    key = (spec, bool(debug))
    with _memo_lock:
        k = _memo.get(key)
        if k is None:
            k = _memo[key] = Kernel(spec, debug=debug)
        return k
