"""Benchmark the LLVM kernels against numpy: ``python -m graphc.backend.llvm.selfbench``.

Reports medians (the machines are shared; the fastest run is shown too) of:
- the fused elementwise kernel tanh(a*x + b) * sigmoid(x) + exp(-x*x) on 2^22 float32
  (a, b 0-d arrays), on 1 thread and on all threads, vs the same expression in numpy;
- a row-softmax style pair of reductions on a 4096 x 1024 float32 matrix:
  m = max(x, axis=1) then s = sum(exp(x - m[:, None]), axis=1);
- a float32 sum of 2^22 values (accuracy vs float64 too);
- the Python overhead of one Kernel call on 16 floats.
Options: --reps N (default 15), --threads N (default: all cpus).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ..kernel_spec import KernelSpec
from . import compile_kernel, num_threads


class _Timing(float):
    """A median in ms that also remembers the fastest run (shown as 'min')."""

    def __new__(cls, times):
        self = super().__new__(cls, float(np.median(times)) * 1e3)
        self.best = min(times) * 1e3
        return self

    def __format__(self, spec):
        return f"{float(self):{spec}} ms (min {self.best:.2f})"


def _median_ms(fn, reps):
    fn()                                                    # warm up (compile, page in)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return _Timing(times)


def fused_spec() -> KernelSpec:
    """tanh(a*x + b) * sigmoid(x) + exp(-x*x); inputs (a, x, b)."""
    f = "float32"
    return KernelSpec((f, f, f), (
        ("mul", (("in", 0), ("in", 1)), f),          # 0: a*x
        ("add", (("eq", 0), ("in", 2)), f),          # 1: a*x + b
        ("tanh", (("eq", 1),), f),                   # 2
        ("sigmoid", (("in", 1),), f),                # 3
        ("mul", (("eq", 2), ("eq", 3)), f),          # 4
        ("mul", (("in", 1), ("in", 1)), f),          # 5: x*x
        ("neg", (("eq", 5),), f),                    # 6
        ("exp", (("eq", 6),), f),                    # 7
        ("add", (("eq", 4), ("eq", 7)), f),          # 8
    ), (("eq", 8),))


def bench_fused(reps, threads):
    rng = np.random.default_rng(0)
    x = rng.normal(size=1 << 22).astype(np.float32)
    a, b = np.array(0.7, np.float32), np.array(0.1, np.float32)
    out = np.empty_like(x)
    k = compile_kernel(fused_spec())

    def numpy_version():
        return np.tanh(a * x + b) * (1 / (1 + np.exp(-x))) + np.exp(-x * x)
    t_np = _median_ms(numpy_version, max(3, reps // 3))
    t1 = _median_ms(lambda: k([a, x, b], [out], nthreads=1), reps)
    tn = _median_ms(lambda: k([a, x, b], [out], nthreads=threads), reps)
    # compute cost alone: one thread on 2^15 elements (128 KiB each way, in L2), best of reps
    xs, outs = x[:1 << 15], out[:1 << 15]
    t_l2 = _median_ms(lambda: k([a, xs, b], [outs], nthreads=1), reps * 10).best
    err = np.max(np.abs(out - numpy_version()))
    print("fused tanh(a*x+b)*sigmoid(x)+exp(-x*x), 2^22 float32:")
    print(f"  numpy          {t_np:8.2f}")
    print(f"  llvm 1 thread  {t1:8.2f} ({t_np / t1:.1f}x numpy)")
    print(f"  llvm {threads} threads {tn:8.2f} ({t_np / tn:.1f}x numpy, "
          f"{t1 / tn:.2f}x 1 thread)   max abs diff {err:.1e}")
    print(f"  per element and thread: {t1.best * 1e6 / x.size:.2f} ns (2^22), "
          f"{t_l2 * 1e6 / xs.size:.2f} ns (2^15, in cache)")


def bench_softmax_rows(reps, threads):
    f = "float32"
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4096, 1024)).astype(np.float32)
    kmax = compile_kernel(KernelSpec((f,), (("identity", (("in", 0),), f),), (("eq", 0),),
                                     reduce=("max", (1,))))
    ksum = compile_kernel(KernelSpec((f, f), (("sub", (("in", 0), ("in", 1)), f),
                                              ("exp", (("eq", 0),), f)),
                                     (("eq", 1),), reduce=("add", (1,))))
    m = np.empty(4096, np.float32)
    s = np.empty(4096, np.float32)

    def llvm_version(nt):
        kmax([x], [m], nthreads=nt)
        ksum([x, m[:, None]], [s], nthreads=nt)

    def numpy_version():
        mm = x.max(axis=1, keepdims=True)
        return np.exp(x - mm).sum(axis=1)
    t_np = _median_ms(numpy_version, max(3, reps // 3))
    t1 = _median_ms(lambda: llvm_version(1), reps)
    tn = _median_ms(lambda: llvm_version(threads), reps)
    ref = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True)).sum(axis=1)
    err = np.max(np.abs(s - ref) / ref)
    print("row softmax reductions max + sum(exp(x - max)), 4096 x 1024 float32:")
    print(f"  numpy          {t_np:8.2f}")
    print(f"  llvm 1 thread  {t1:8.2f} ({t_np / t1:.1f}x numpy)")
    print(f"  llvm {threads} threads {tn:8.2f} ({t_np / tn:.1f}x numpy)"
          f"   max rel err {err:.1e}")


def bench_sum(reps):
    f = "float32"
    x = np.random.default_rng(2).random(1 << 22).astype(np.float32)
    k = compile_kernel(KernelSpec((f,), (("identity", (("in", 0),), f),), (("eq", 0),),
                                  reduce=("add", (0,))))
    out = np.empty((), np.float32)
    t_np = _median_ms(lambda: x.sum(), reps)
    t1 = _median_ms(lambda: k([x], [out]), reps)
    exact = x.astype(np.float64).sum()
    print("sum of 2^22 float32 (memory-bound: 1 thread by default):")
    print(f"  numpy          {t_np:8.2f}   rel err {abs(float(x.sum()) - exact) / exact:.1e}")
    print(f"  llvm           {t1:8.2f}   rel err {abs(float(out) - exact) / exact:.1e}")


def bench_overhead():
    f = "float32"
    k = compile_kernel(KernelSpec((f, f), (("add", (("in", 0), ("in", 1)), f),), (("eq", 0),)))
    x = np.ones(16, np.float32)
    out = np.empty_like(x)
    k([x, x], [out])
    best = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(5000):
            k([x, x], [out])
        best = min(best, (time.perf_counter() - t) / 5000)
    t = time.perf_counter()
    for _ in range(5000):
        np.add(x, x, out=out)
    t_np = (time.perf_counter() - t) / 5000
    print(f"call overhead, x + y on 16 floats: llvm {best * 1e6:.2f} us "
          f"(numpy ufunc {t_np * 1e6:.2f} us)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    threads = args.threads or num_threads()
    print(f"graphc LLVM selfbench: {os.cpu_count()} cpus, {threads} threads, medians of "
          f"{args.reps} runs")
    bench_fused(args.reps, threads)
    bench_softmax_rows(args.reps, threads)
    bench_sum(args.reps)
    bench_overhead()


if __name__ == "__main__":
    main()
