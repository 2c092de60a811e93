"""The machine: what it is, and its physical limits measured in the same run.

CPU: copy and triad bandwidth from a tiny LLVM-compiled loop run on ``threads`` Python threads
(ctypes releases the GIL), falling back to numpy (one thread, two passes for triad) when llvmlite
is missing; sgemm peak from a numpy float32 2048^2 matmul. GPU: device copy bandwidth and cuBLAS
sgemm through CuPy. Run as ``python -m bench.limits`` so the thread settings match the workers'.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import threading
import time

import numpy as np

STREAM_N = 2 ** 25          # 128 MiB per float32 array: 4x the largest L3 seen here
GEMM_N = 2048

LOOPS_IR = """
define void @copy(ptr noalias %a, ptr noalias %b, i64 %n) {
entry:
  %empty = icmp sle i64 %n, 0
  br i1 %empty, label %exit, label %loop
loop:
  %i = phi i64 [0, %entry], [%next, %loop]
  %pb = getelementptr float, ptr %b, i64 %i
  %vb = load float, ptr %pb
  %pa = getelementptr float, ptr %a, i64 %i
  store float %vb, ptr %pa
  %next = add i64 %i, 1
  %done = icmp eq i64 %next, %n
  br i1 %done, label %exit, label %loop
exit:
  ret void
}
define void @triad(ptr noalias %a, ptr noalias %b, ptr noalias %c, float %s, i64 %n) {
entry:
  %empty = icmp sle i64 %n, 0
  br i1 %empty, label %exit, label %loop
loop:
  %i = phi i64 [0, %entry], [%next, %loop]
  %pb = getelementptr float, ptr %b, i64 %i
  %vb = load float, ptr %pb
  %pc = getelementptr float, ptr %c, i64 %i
  %vc = load float, ptr %pc
  %m = fmul float %vc, %s
  %r = fadd float %vb, %m
  %pa = getelementptr float, ptr %a, i64 %i
  store float %r, ptr %pa
  %next = add i64 %i, 1
  %done = icmp eq i64 %next, %n
  br i1 %done, label %exit, label %loop
exit:
  ret void
}
"""


def machine_info() -> dict:
    """CPU model, cores, memory, OS and Python: recorded in the JSON and printed."""
    model = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(int(line.split()[1]) for line in open("/proc/meminfo")
                   if line.startswith("MemTotal")) / 2 ** 20
    except (OSError, StopIteration):
        mem = None
    info = {"cpu": model, "cores": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "memory_gib": round(mem, 1) if mem else None, "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__}
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        if gpu.returncode == 0 and gpu.stdout.strip():
            info["gpu"] = gpu.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _llvm_loops():
    import llvmlite.binding as llvm
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                      features=llvm.get_host_cpu_features().flatten(), opt=3)
    mod = llvm.parse_assembly(LOOPS_IR)
    mod.triple, mod.data_layout = tm.triple, str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(3)
    pto.loop_vectorization = pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    copy = ctypes.CFUNCTYPE(None, p, p, i64)(engine.get_function_address("copy"))
    triad = ctypes.CFUNCTYPE(None, p, p, p, f32, i64)(engine.get_function_address("triad"))
    return engine, copy, triad


def _parallel(fn, arrays, extra, n, threads):
    """Run fn(chunks of arrays..., *extra, len) on ``threads`` threads; returns seconds."""
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    go = threading.Barrier(threads + 1)

    def work(lo, hi):
        ptrs = [a.ctypes.data + 4 * int(lo) for a in arrays]
        go.wait()
        fn(*ptrs, *extra, int(hi - lo))

    pool = [threading.Thread(target=work, args=(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
    for t in pool:
        t.start()
    t0 = time.perf_counter()
    go.wait()
    for t in pool:
        t.join()
    return time.perf_counter() - t0


def cpu_limits(threads: int, reps: int) -> dict:
    a, b, c = (np.ones(STREAM_N, np.float32) for _ in range(3))   # touched: no page faults later
    nbytes = a.nbytes
    out = {"stream_array_mib": nbytes / 2 ** 20}
    try:
        engine, copy, triad = _llvm_loops()
        t_copy = min(_parallel(copy, (a, b), (), STREAM_N, threads) for _ in range(reps + 1))
        t_triad = min(_parallel(triad, (a, b, c), (3.0,), STREAM_N, threads)
                      for _ in range(reps + 1))
        out["bandwidth_method"] = f"LLVM-compiled loop on {threads} threads (llvmlite)"
        del engine
    except Exception as exc:       # no llvmlite, or an API change: numpy, one thread
        def np_triad():
            np.multiply(c, 3.0, out=a)
            np.add(a, b, out=a)
        t_copy = min(_timed(lambda: np.copyto(a, b)) for _ in range(reps + 1))
        t_triad = min(_timed(np_triad) for _ in range(reps + 1))
        out["bandwidth_method"] = (f"numpy, one thread, triad in two passes "
                                   f"({exc.__class__.__name__})")
    out["copy_GBps"] = 2 * nbytes / t_copy / 1e9       # STREAM counting: read + write
    out["triad_GBps"] = 3 * nbytes / t_triad / 1e9
    x = np.random.default_rng(0).standard_normal((GEMM_N, GEMM_N)).astype(np.float32)
    t_gemm = min(_timed(lambda: x @ x) for _ in range(reps + 1))
    out["sgemm_GFLOPs"] = 2 * GEMM_N ** 3 / t_gemm / 1e9
    out["sgemm_method"] = f"numpy float32 matmul {GEMM_N}^2, best of {reps + 1}"
    return out


def gpu_limits(reps: int) -> dict:
    """Device copy bandwidth (1 GiB) and float32 GEMM peak (8192^2): CuPy, else PyTorch."""
    try:
        import cupy as cp
        a = cp.ones(2 ** 28, cp.float32)
        b, x = cp.empty_like(a), cp.random.standard_normal((8192, 8192), dtype=cp.float32)
        copy, gemm, lib = (lambda: cp.copyto(b, a)), (lambda: x @ x), "cupy (cuBLAS)"
        event, name = cp.cuda.Event, cp.cuda.runtime.getDeviceProperties(0)["name"].decode()

        def elapsed(start, end):
            return cp.cuda.get_elapsed_time(start, end) / 1e3
    except ImportError:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False
        a = torch.ones(2 ** 28, device="cuda")
        b, x = torch.empty_like(a), torch.randn(8192, 8192, device="cuda")
        copy, gemm, lib = (lambda: b.copy_(a)), (lambda: x @ x), "torch (cuBLAS, no TF32)"
        event, name = (lambda: torch.cuda.Event(enable_timing=True)), torch.cuda.get_device_name()

        def elapsed(start, end):
            return start.elapsed_time(end) / 1e3

    def timed(fn):
        fn()
        start, end = event(), event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return elapsed(start, end)
    t_copy = min(timed(copy) for _ in range(reps + 1))
    t_gemm = min(timed(gemm) for _ in range(reps + 1))
    return {"copy_GBps": 2 * 4 * 2 ** 28 / t_copy / 1e9,
            "sgemm_GFLOPs": 2 * 8192 ** 3 / t_gemm / 1e9,
            "bandwidth_method": f"{lib} device-to-device copy, 1 GiB",
            "sgemm_method": f"{lib} float32 matmul 8192^2", "device": name}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.limits")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if args.threads < len(cpus):
        os.sched_setaffinity(0, cpus[:args.threads])
    result = {"cpu": cpu_limits(args.threads, args.reps), "threads": args.threads}
    if args.device == "gpu":
        try:
            result["gpu"] = gpu_limits(args.reps)
        except Exception as exc:
            result["gpu"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
