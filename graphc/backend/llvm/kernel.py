"""Kernel: a compiled KernelSpec that runs on numpy arrays, with threads.

A call goes:  signature of the arrays (type, dtype, shape, strides) --dict--> Plan
--> one ctypes call per thread chunk. The Plan (built once per signature) holds the broadcast,
permuted and collapsed loop shape, the strides table passed to the kernel, the compiled Variant
and the thread chunks; the per-call path is a dict lookup and the ctypes call(s). A small
single-thread plan also gets a builtin (pycall.py) that checks the signature and runs the
kernel without ctypes; callers that keep a plan between calls (the LLVM linker) call it directly.

Loop layout (see codegen.py): dimensions of size 1 are dropped, reduced dimensions move after
the kept ones, and neighbouring dimensions that are contiguous for every operand are merged, so
an elementwise op on contiguous arrays is one flat loop whatever its ndim, and a row reduction of
a C-contiguous matrix is a (kept, reduced) pair with unit inner strides.

Threads: when the loop has at least ``parallel_min()`` elements and the kernel is compute-bound
(see _OP_COST), the split loop is cut into ``num_threads()`` slices run from a thread pool (the
ctypes call releases the GIL). A reduction over every dimension gives each thread its own slot
of a partial-results array, combined in numpy afterwards.
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..kernel_spec import KernelSpec
from . import ahead, jit, pycall, spinpool
from .codegen import (DATA_OFFSET, Variant, accumulator_dtype, build_ir, check_renders,
                      reduce_identity, vector_epilogue)
from .scalar import DTYPES

_NP_DTYPES = {name: np.dtype(name) for name in DTYPES}
_REDUCE_UFUNC = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum,
                 "and": np.bitwise_and, "or": np.bitwise_or}


def _check_pyobject_layout() -> bool:
    """True when the data pointer of an ndarray object sits at DATA_OFFSET (see codegen)."""
    try:
        for a in (np.zeros(3), np.arange(12.0).reshape(3, 4)[1:, ::2], np.empty(0)):
            if ctypes.c_void_p.from_address(id(a) + DATA_OFFSET).value != a.ctypes.data:
                return False
        return True
    except Exception:          # pragma: no cover - exotic interpreters
        return False


PYOBJ = _check_pyobject_layout()
_word = ctypes.c_void_p.from_address


def data_pointer(x) -> int:
    """x's data pointer, read from the ndarray object where its layout is known (PYOBJ):
    x.ctypes.data takes ~1-3 us, and a scan step's packed product needs three to five."""
    return _word(id(x) + DATA_OFFSET).value if PYOBJ else x.ctypes.data

# --------------------------------------------------------------------------- thread settings
_num_threads = None
_pool = None
_pool_lock = threading.Lock()


def num_threads() -> int:
    """Threads per large kernel call: set_num_threads(), else $GRAPHC_NUM_THREADS, else 1 when
    the graphc flag openmp is off, else the number of cpus this process may run on."""
    if _num_threads is not None:
        return _num_threads
    env = os.environ.get("GRAPHC_NUM_THREADS")
    if env:
        return max(1, int(env))
    if not jit.graphc_flag("openmp", True):
        return 1
    try:        # a process pinned to fewer cpus (taskset, cgroups) gets no more threads than that
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_num_threads(n) -> None:
    global _num_threads
    _num_threads = None if n is None else max(1, int(n))


def parallel_min() -> int:
    """Loops with fewer elements than this run on the calling thread ($GRAPHC_PARALLEL_MIN)."""
    return int(os.environ.get("GRAPHC_PARALLEL_MIN", 1 << 16))


# Rough cost of one element of each op, in "simple arithmetic op" units. Threads are used by
# default only for compute-bound kernels: on the 2-core development machines a memory-bound
# loop (x + y, a plain sum) runs no faster on two threads (measured: 2.9 ms either way for
# 2^22 float32 adds), while a transcendental chain scales ~2x. An explicit nthreads argument
# skips this test.
_OP_COST = dict.fromkeys(["exp", "log", "log1p", "expm1", "tanh", "sin", "cos", "erf",
                          "sigmoid", "softplus", "pow"], 10)
_OP_COST.update(dict.fromkeys(["true_div", "int_div", "mod", "reciprocal", "sqrt"], 4))
COMPUTE_BOUND = 8        # cost units per element from which threads pay off by default
# cost units (elements x cost per element) from which a loop too small for the thread pool
# may still be split over the native spin pool: ~15-20 us of work, a few pool overheads
SPLIT_MIN_WORK = 1 << 17


def _cost_per_element(spec) -> int:
    return sum(_OP_COST.get(op, 1) for op, _, _ in spec.eqns)


def _get_pool(n):
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="graphc-kernel")
        return _pool


# --------------------------------------------------------------------------- plans
def _collapse(shape, strides, groups):
    """Merge neighbouring loops when every operand steps through them as one.

    shape: list of extents; strides: per operand, list of byte strides (same order);
    groups: per loop, a label; loops with different labels (kept/reduced) never merge.
    """
    out_shape, out_strides, out_groups = [], [[] for _ in strides], []
    for d, n in enumerate(shape):
        if out_shape and out_groups[-1] == groups[d] and all(
                s[-1] == st[d] * n for s, st in zip(out_strides, strides)):
            out_shape[-1] *= n
            for s, st in zip(out_strides, strides):
                s[-1] = st[d]
            continue
        out_shape.append(n)
        out_groups.append(groups[d])
        for s, st in zip(out_strides, strides):
            s.append(st[d])
    return out_shape, out_strides, out_groups


class Plan:
    """Everything needed to run one kernel on arrays of one signature."""

    __slots__ = ("fn", "meta", "meta_ptr", "n0", "chunks", "partials", "empty", "fill",
                 "prefill", "combine", "kernel", "simple", "native", "split", "pending")

    def run(self, inputs, outputs):
        if self.empty:
            if self.fill is not None:
                outputs[0][...] = self.fill
            return
        if self.prefill is not None:                # 'accumulate' kernels start from identity
            outputs[0][...] = self.prefill
        if PYOBJ:
            args = [id(a) for a in inputs] + [id(o) for o in outputs]
        else:
            args = [a.ctypes.data for a in inputs] + [o.ctypes.data for o in outputs]
        if self.chunks is None:
            if self.split is not None:
                self.split.run(self.fn, self.n0, self.meta_ptr, args)
                return
            self.fn(0, self.n0, 0, self.meta_ptr, *args)
            return
        self._run_parallel(args, inputs, outputs)

    def _run_parallel(self, args, inputs, outputs):
        big = self.split
        if big is not None:                 # the native pool, dynamic slices
            partials = None
            if self.combine is not None:
                partials = np.empty(big.slices, self.partials)
                a = args[:-1] + [id(partials) if PYOBJ else partials.ctypes.data]
            else:
                a = args
            if big.run_split(a):
                if partials is not None:
                    outputs[0][...] = self.combine(partials)
                return
        partials = None
        if self.combine is not None:        # full reduction: one partial result per thread
            partials = np.empty(len(self.chunks), self.partials)
            args = args[:-1] + [id(partials) if PYOBJ else partials.ctypes.data]
        item = partials.itemsize if partials is not None else 0
        pool = _get_pool(len(self.chunks) - 1)
        futures = [pool.submit(self.fn, lo, hi, t * item, self.meta_ptr, *args)
                   for t, (lo, hi) in enumerate(self.chunks) if t > 0]
        lo, hi = self.chunks[0]
        self.fn(lo, hi, 0, self.meta_ptr, *args)
        for f in futures:
            f.result()
        if partials is not None:
            outputs[0][...] = self.combine(partials)


class Kernel:
    """A compiled KernelSpec. Call it as ``kernel(inputs, outputs)``."""

    def __init__(self, spec: KernelSpec, debug=None):
        spec.check()
        self.spec = spec
        self.debug = debug
        self.in_np = [_NP_DTYPES[d] for d in spec.in_dtypes]
        self.out_np = [_NP_DTYPES[d] for d in spec.out_dtypes]
        self._variants = {}            # Variant -> ctypes function
        self._later = set()            # variants being compiled in the background
        self._plans = {}               # call signature -> Plan
        self._lock = threading.Lock()
        self.cost = _cost_per_element(spec)
        self._spec_text = repr(spec)
        # Machine code is made per loop variant on first use, but an op/dtype pair the backend
        # cannot render should fail here, at compile time, unless an earlier process checked
        # this spec with the same codegen (the marker).
        renders = jit.cache_key(self._spec_text, "renders")
        if not jit.is_marked(renders):
            check_renders(spec)
            jit.mark(renders)
        # the variants earlier processes used load on a background thread meanwhile
        self._uses = jit.cache_key(self._spec_text, "uses")
        ahead.load_ahead(self._uses)

    def _build_ir(self, variant):
        jit.stats["ir_built"] += 1
        return build_ir(self.spec, variant)

    def __repr__(self):
        ops = " ".join(op for op, _, _ in self.spec.eqns)
        red = f" reduce={self.spec.reduce}" if self.spec.reduce else ""
        return (f"<Kernel {list(self.spec.in_dtypes)} -> {list(self.spec.out_dtypes)}: "
                f"{ops}{red}; {len(self._variants)} variants compiled>")

    # ----------------------------------------------------------------- public
    def out_shape(self, in_shapes):
        """Shape of every output for inputs of these shapes (reduced shape if spec.reduce)."""
        shape = tuple(np.broadcast_shapes(*in_shapes)) if in_shapes else ()
        if self.spec.reduce is None:
            return shape
        axes = self._axes(len(shape))
        return tuple(n for d, n in enumerate(shape) if d not in axes)

    def __call__(self, inputs, outputs, nthreads=None):
        """Run on ``inputs`` (broadcast against each other) writing into ``outputs``.

        ``nthreads`` overrides num_threads() for this call. The hot path is kept short on
        purpose: a signature tuple, a dict lookup, one call of the plan's builtin (small
        loops, see pycall.py) or one ctypes call.
        """
        try:
            key = (*[(a.__class__, a.dtype, a.shape, a.strides) for a in inputs],
                   *[(o.__class__, o.dtype, o.shape, o.strides) for o in outputs], nthreads)
        except AttributeError:
            if all(isinstance(a, np.ndarray) for a in inputs):
                raise TypeError("kernel outputs must be numpy arrays") from None
            # Python or numpy scalars as inputs: the slow path, once.
            inputs = [np.asarray(a, dtype=t) for a, t in zip(inputs, self.in_np)]
            return self(inputs, outputs, nthreads)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._make_plan(key, inputs, outputs, nthreads)
        if plan.simple:
            native = plan.native
            if native is None or native(*inputs, *outputs) is not outputs[-1]:
                plan.fn(0, plan.n0, 0, plan.meta_ptr, *map(id, inputs), *map(id, outputs))
                if plan.pending is not None and not pycall.loading():
                    plan.native = pycall.builtin_call(*plan.pending)
                    plan.pending = None
        else:
            plan.run(inputs, outputs)

    def raw_plan(self, inputs, outputs, wait=True):
        """The one-thread plan for arrays of this signature whose kernel takes data pointers
        (the array objects' addresses are what PYOBJ plans take): for native callers that
        compute the addresses themselves (graphc/scan_module/native.py). Call it as
        ``plan.fn(0, plan.n0, 0, plan.meta_ptr, *pointers)``; a map kernel only.
        ``wait=False``: None when the kernel would have to be compiled first, which then
        starts on a background thread (the caller has another way to run meanwhile)."""
        key = ("raw", *[(a.__class__, a.dtype, a.shape, a.strides) for a in inputs],
               *[(o.__class__, o.dtype, o.shape, o.strides) for o in outputs])
        plan = self._plans.get(key)
        if plan is None:
            plan = self._make_plan(key, inputs, outputs, 1, pyobj=False, wait=wait)
        return plan

    def _available(self, variant: Variant) -> bool:
        """Compiled in this process, or linked in the persistent cache (no LLVM needed)."""
        return variant in self._variants or \
            jit.linked(jit.cache_key(self._spec_text, repr(variant)))

    def _compile_later(self, variant: Variant) -> None:
        with self._lock:
            if variant in self._later:
                return
            self._later.add(variant)

        jit.in_background(lambda: self.compile_variant(variant), defer=True)

    def compile_variant(self, variant: Variant):
        """The ctypes entry point of ``variant`` (compiled, or loaded from a cache)."""
        fn = self._variants.get(variant)
        if fn is None:
            with self._lock:
                fn = self._variants.get(variant)
                if fn is None:
                    key = jit.cache_key(self._spec_text, repr(variant))
                    addr = jit.load_function(key, lambda: self._build_ir(variant), self.debug,
                                             title=repr(variant),
                                             epilogue=vector_epilogue(self.spec, variant))
                    ahead.remember(self._uses, key)
                    # c_void_p converts Python ints ~3x faster than c_int64 (1.3 vs 4 us for
                    # a 7-argument call, measured); the ABI is the same on x86-64.
                    proto = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * (4 + len(variant.inner)))
                    fn = proto(addr)
                    self._variants[variant] = fn
        return fn

    # ----------------------------------------------------------------- planning
    def _axes(self, ndim):
        axes = set()
        for a in self.spec.reduce[1]:
            if not -ndim <= a < ndim:
                raise ValueError(f"reduce axis {a} out of range for ndim {ndim}")
            axes.add(a % ndim)
        return axes

    @staticmethod
    def _loop_order(shape, axes, in_strides):
        """Choose the kernel mode and the loop order (dimensions, outermost first).

        The "main" input is the one that moves along the most dimensions; its smallest stride
        marks the dimension that should be innermost. If that dimension is reduced, reduce in
        registers ('reduce': kept loops outside, reduced loops inside ordered by that input's
        strides); if it is kept, accumulate into the output in memory order ('accumulate').
        Reduced dimensions with larger strides than every kept one go before the kept loops
        ('reduce' with outer loops): a conv bias gradient, the sum of (n, c, h, w) over n, h
        and w, walks memory in order instead of one c at a time through every n (128 x 50
        x 8 x 8 float32: numpy took 0.33 ms, einsum's memory-order walk 0.1 ms).
        """
        live = [d for d in range(len(shape)) if shape[d] != 1]
        if not axes or not any(d in axes for d in live):
            return "map", live
        main = max(in_strides, key=lambda s: sum(1 for d in live if s[d] != 0), default=None)

        def by_stride(dims):                        # largest stride first; C order on ties
            if main is None:
                return dims
            return sorted(dims, key=lambda d: -abs(main[d]) if main[d] else 0)
        moving = [d for d in live if main is not None and main[d] != 0]
        innermost = min(moving, key=lambda d: abs(main[d])) if moving else live[-1]
        if innermost in axes:
            kept = [d for d in live if d not in axes]
            reduced = by_stride([d for d in live if d in axes])
            if main is not None and kept:
                top = max(abs(main[d]) for d in kept)
                outer = [d for d in reduced if abs(main[d]) > top]
                if outer:
                    return "reduce", outer + kept + [d for d in reduced if d not in outer]
            return "reduce", kept + reduced
        return "accumulate", by_stride(live)

    def _make_plan(self, key, inputs, outputs, nthreads, pyobj=None, wait=True):
        spec = self.spec
        if len(inputs) != len(spec.in_dtypes) or len(outputs) != len(spec.outputs):
            raise ValueError(f"kernel takes {len(spec.in_dtypes)} inputs and "
                             f"{len(spec.outputs)} outputs, got {len(inputs)} and {len(outputs)}")
        for a, t in zip(inputs, self.in_np):
            if not isinstance(a, np.ndarray) or a.dtype != t:
                raise TypeError(f"kernel input must be an ndarray of {t}, got "
                                f"{type(a).__name__} {getattr(a, 'dtype', '')}")
        if inputs:
            shape = tuple(np.broadcast_shapes(*[a.shape for a in inputs]))
        else:
            shape = outputs[0].shape if spec.reduce is None else ()
        nd = len(shape)
        axes = self._axes(nd) if spec.reduce is not None else set()
        want = self.out_shape([a.shape for a in inputs]) if inputs else shape
        for o, t in zip(outputs, self.out_np):
            if not isinstance(o, np.ndarray) or o.dtype != t or o.shape != want \
                    or not o.flags.writeable:
                raise ValueError(f"kernel output must be a writeable ndarray of {t} and shape "
                                 f"{want}, got {type(o).__name__} "
                                 f"{getattr(o, 'dtype', '')} {getattr(o, 'shape', '')}")

        # Byte strides of every operand over the broadcast shape (0 where broadcast).
        strides = []
        for a in inputs:
            pad = nd - a.ndim
            strides.append([0 if d < pad or a.shape[d - pad] == 1 else a.strides[d - pad]
                            for d in range(nd)])
        for o in outputs:
            if spec.reduce is None:
                strides.append([0 if shape[d] == 1 else o.strides[d] for d in range(nd)])
            else:
                kept = iter(o.strides)
                strides.append([0 if d in axes else next(kept) for d in range(nd)])
        mode, order = self._loop_order(shape, axes, strides[:len(inputs)])
        plan = Plan()
        plan.kernel = self
        plan.chunks = plan.combine = plan.fill = plan.prefill = plan.split = None
        plan.simple = False
        plan.native = plan.pending = None
        plan.empty = any(n == 0 for n in shape)
        if plan.empty:
            if spec.reduce is not None and outputs[0].size:   # numpy: sum([]) == 0.0
                kind = spec.reduce[0]
                out_dt = DTYPES[spec.out_dtypes[0]]
                plan.fill = 0 if kind == "add" else reduce_identity(kind, out_dt)
            self._plans[key] = plan
            return plan
        lshape, lstrides, groups = _collapse(
            [shape[d] for d in order], [[s[d] for d in order] for s in strides],
            [d in axes for d in order])
        if not lshape:                              # every dimension has extent 1
            lshape, lstrides, groups = [1], [[0] for _ in strides], [False]
        ndim = len(lshape)
        items = [t.itemsize for t in self.in_np + self.out_np]
        inner = []
        for k, s in enumerate(lstrides):
            if mode == "reduce" and k >= len(inputs):
                inner.append("0")                   # the output does not move in reduced loops
            else:
                inner.append("0" if s[-1] == 0 else "1" if s[-1] == items[k] else "s")
        # 'reduce' with reduced loops before the kept ones: threads split the first kept loop
        outer = groups.index(False) if mode == "reduce" and groups[0] and False in groups \
            else 0
        split = groups.index(False) if mode == "accumulate" else outer
        pyobj = PYOBJ if pyobj is None else pyobj
        variant = Variant(mode, ndim, groups.count(False) if mode == "reduce" else 0,
                          tuple(inner), pyobj, split, outer)
        total = int(np.prod(lshape))
        if pyobj and mode != "accumulate" and total < parallel_min():
            # this plan will want a builtin: load it meanwhile. On a cold cache, before the
            # kernel's compile, although the kernel then waits for it (llvmlite runs one LLVM
            # call at a time; ~15 ms of a cold first call): compiled after it, on a thread
            # that a busy caller's GIL lets run only every switch interval, it took ~0.3 s,
            # and the calls meanwhile ran through ctypes (2.5 -> 11.5 us per dispatch call)
            pycall.prefetch()
        if not wait and not self._available(variant):
            self._compile_later(variant)
            return None
        plan.fn = self.compile_variant(variant)
        plan.meta = np.array(lshape + [x for s in lstrides for x in s], dtype=np.int64)
        plan.meta_ptr = plan.meta.ctypes.data
        plan.n0 = lshape[split]
        if mode == "accumulate" or outer:
            plan.prefill = reduce_identity(spec.reduce[0], DTYPES[spec.out_dtypes[0]])

        if nthreads is not None:
            threads = nthreads
        else:
            threads = num_threads() if self.cost >= COMPUTE_BOUND else 1
        if threads > 1 and total >= parallel_min() and plan.n0 > 1:
            k = min(threads, plan.n0)
            cuts = [plan.n0 * t // k for t in range(k + 1)]
            plan.chunks = [(cuts[t], cuts[t + 1]) for t in range(k)]
            if mode == "reduce" and groups[split]:  # split loop is reduced: partial results
                kind = spec.reduce[0]
                out_dt = DTYPES[spec.out_dtypes[0]]
                acc = accumulator_dtype(kind, out_dt)
                plan.partials = self.out_np[0]
                ufunc = _REDUCE_UFUNC[kind]
                if out_dt.kind == "b":
                    ufunc = np.logical_or if kind in ("add", "max", "or") else np.logical_and
                acc_np = _NP_DTYPES[acc.name]
                plan.combine = lambda p, u=ufunc, a=acc_np, o=self.out_np[0]: \
                    u.reduce(p.astype(a)).astype(o)
            if spinpool.usable(len(strides)):
                # run on the native pool, in more slices than threads (see KernelSplit)
                shift = np.dtype(plan.partials).itemsize if plan.combine is not None else 0
                plan.split = spinpool.KernelSplit(
                    ctypes.cast(plan.fn, ctypes.c_void_p).value, plan.n0, plan.meta_ptr,
                    len(strides), k, slices=4 * k, shift=shift, eager=False)
        elif threads > 1 and mode == "map" and plan.n0 > 1 and \
                total * self.cost >= SPLIT_MIN_WORK and spinpool.usable(len(strides)):
            # below the thread-pool size but heavy (a scan step's gate math): the native
            # pool, one thread or split, whichever has been faster (spinpool.KernelSplit)
            plan.split = spinpool.KernelSplit(ctypes.cast(plan.fn, ctypes.c_void_p).value,
                                              plan.n0, plan.meta_ptr, len(strides), threads)
        plan.simple = pyobj and plan.chunks is None and plan.prefill is None and \
            plan.split is None
        if plan.simple and total < parallel_min():
            # small loops skip ctypes: a builtin that checks the signature and runs the
            # kernel with the GIL held (see pycall.py); large ones release the GIL
            args = (ctypes.cast(plan.fn, ctypes.c_void_p).value, plan.n0, plan.meta,
                    list(inputs), list(outputs), self.in_np + self.out_np)
            if pycall.loading():
                # the builtin's code is still being compiled (a cold cache): run through
                # ctypes until it is there rather than wait for it in a first call
                plan.pending = args
            else:
                plan.native = pycall.builtin_call(*args)
        if len(self._plans) > 512:                  # signatures churn: start over
            self._plans.clear()
        self._plans[key] = plan
        return plan
