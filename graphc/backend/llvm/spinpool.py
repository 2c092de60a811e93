"""A native worker pool for short parallel regions (tens to hundreds of microseconds).

A scan step runs a few kernels of 20-300 us each. Splitting one over Python's thread pool
costs a futex wake-up of a sleeping thread per call (tens of us on a VM) plus a join that
waits for every worker, so a descheduled worker stalls the step: two threads made a 236 us
product slower (317 us, measured). libgomp spins between regions (125-140 us for the same
product) but its closing barrier still waits for every thread, and under load the step
crawled. Here:

- workers are native loops (LLVM IR below, started once on Python threads through ctypes,
  so they hold no GIL); after a region they spin for a while (SPIN pause instructions,
  ~0.1-0.5 ms), then sleep on a futex;
- a region is a function ``fn(data, slice)`` and a slice count; the caller publishes it
  with one atomic store and claims slices itself like any worker (a compare-and-swap on
  one word holding the region's generation and next slice), then waits only until every
  slice is FINISHED. A worker that does not get the CPU in time finds nothing left to claim:
  the caller then did all slices, at single-thread speed, instead of waiting for it;
- the caller wakes sleeping workers only when some sleep (one syscall).

State: int64 words, each group on its own cache line (see ``_SLOT``). ``ticket`` holds
``generation << 32 | next slice``; a claim succeeds only with the generation the claimer
saw, so a late worker can never take a slice of the next region. ``fn``/``data``/``slices``
are written before the ticket is published (release) and read after a successful claim
(acquire); the caller writes them again only after every slice of the previous region was
finished, i.e. after every claim of it succeeded and completed. Before writing them it
closes the finished generation (next slice := 2^32 - 1): a claimer that read the old ticket
and then the NEW slice count would otherwise see ``next < slices`` and win its
compare-and-swap against the still unchanged old ticket, running a slice of the new region
twice and counting it in its ``done`` (the caller could return while slices still run).
Reading the new count (acquire) makes that claimer's compare-and-swap see the closed ticket.

The pool exists per process: a forked child (which has no workers) starts its own.
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import os
import threading
from time import perf_counter

import numpy as np

from . import jit

# word index of each field (8 words = one 64-byte line per group)
_SLOT = {"ticket": 0, "done": 8, "fn": 16, "data": 17, "slices": 18, "wake": 24,
         "sleepers": 32, "quit": 40, "syscall": 41, "spin": 42, "yield": 43}
_WORDS = 48
SPIN = 20000                # pause instructions a worker spins through before sleeping
YIELD_EVERY = 64            # spinning threads give up the CPU every this many pauses
_SYS_FUTEX, _FUTEX_WAIT, _FUTEX_WAKE = 202, 128, 129        # x86-64, private futexes


def _gep(name, ty="i64"):
    return f"getelementptr inbounds i64, ptr %st, i64 {_SLOT[name]}"


_IR = f"""
declare void @llvm.x86.sse2.pause()

define internal void @claim_all(ptr %st, i64 %gen) {{
entry:
  br label %claim
claim:
  %t = load atomic i64, ptr %st acquire, align 8
  %tg = lshr i64 %t, 32
  %same = icmp eq i64 %tg, %gen
  br i1 %same, label %check, label %out
check:
  %s = and i64 %t, 4294967295
  %np = {_gep("slices")}
  %n = load atomic i64, ptr %np acquire, align 8
  %more = icmp slt i64 %s, %n
  br i1 %more, label %take, label %out
take:
  %t1 = add i64 %t, 1
  %cx = cmpxchg ptr %st, i64 %t, i64 %t1 acq_rel acquire
  %ok = extractvalue {{ i64, i1 }} %cx, 1
  br i1 %ok, label %run, label %claim
run:
  %fp = {_gep("fn")}
  %fi = load atomic i64, ptr %fp monotonic, align 8
  %f = inttoptr i64 %fi to ptr
  %dp = {_gep("data")}
  %d = load atomic i64, ptr %dp monotonic, align 8
  %dptr = inttoptr i64 %d to ptr
  call void %f(ptr %dptr, i64 %s)
  %donep = {_gep("done")}
  %x = atomicrmw add ptr %donep, i64 1 release
  br label %claim
out:
  ret void
}}

define internal void @yield(ptr %st) {{
entry:
  %yp = {_gep("yield")}
  %yi = load i64, ptr %yp, align 8
  %y = inttoptr i64 %yi to ptr
  %r = call i32 %y()
  ret void
}}

define internal i64 @futex(ptr %st, i64 %op, i64 %val) {{
entry:
  %sp = {_gep("syscall")}
  %si = load i64, ptr %sp, align 8
  %sc = inttoptr i64 %si to ptr
  %wp = {_gep("wake")}
  %wi = ptrtoint ptr %wp to i64
  %r = call i64 (i64, ...) %sc(i64 {_SYS_FUTEX}, i64 %wi, i64 %op, i64 %val, i64 0)
  ret i64 %r
}}

define internal void @pool_worker(ptr %st) {{
entry:
  %t0 = load atomic i64, ptr %st acquire, align 8
  %g0 = lshr i64 %t0, 32
  %spinp = {_gep("spin")}
  %spin = load i64, ptr %spinp, align 8
  %quitp = {_gep("quit")}
  %sleepp = {_gep("sleepers")}
  %wakep = {_gep("wake")}
  br label %wait
wait:
  %seen = phi i64 [ %g0, %entry ], [ %seen, %sleep_back ], [ %g, %got ], [ %seen, %recheck_fail ]
  br label %spinloop
spinloop:
  %i = phi i64 [ 0, %wait ], [ %i1, %spincheck ]
  %t = load atomic i64, ptr %st acquire, align 8
  %g = lshr i64 %t, 32
  %new = icmp ne i64 %g, %seen
  br i1 %new, label %got, label %spinq
spinq:
  %q = load atomic i64, ptr %quitp monotonic, align 8
  %stop = icmp ne i64 %q, 0
  br i1 %stop, label %exit, label %spinnext
spinnext:
  call void @llvm.x86.sse2.pause()
  %i1 = add i64 %i, 1
  %ym = and i64 %i1, {YIELD_EVERY - 1}
  %yz = icmp eq i64 %ym, 0
  br i1 %yz, label %doyield, label %spincheck
doyield:
  call void @yield(ptr %st)
  br label %spincheck
spincheck:
  %again = icmp slt i64 %i1, %spin
  br i1 %again, label %spinloop, label %sleep
sleep:
  %a = atomicrmw add ptr %sleepp, i64 1 seq_cst
  %w = load atomic i32, ptr %wakep seq_cst, align 8
  %t2 = load atomic i64, ptr %st seq_cst, align 8
  %g2 = lshr i64 %t2, 32
  %q2 = load atomic i64, ptr %quitp seq_cst, align 8
  %moved = icmp ne i64 %g2, %seen
  %quit2 = icmp ne i64 %q2, 0
  %skip = or i1 %moved, %quit2
  br i1 %skip, label %recheck_fail, label %dosleep
recheck_fail:
  %b = atomicrmw sub ptr %sleepp, i64 1 seq_cst
  br label %wait
dosleep:
  %w64 = zext i32 %w to i64
  %r = call i64 @futex(ptr %st, i64 {_FUTEX_WAIT}, i64 %w64)
  br label %sleep_back
sleep_back:
  %c = atomicrmw sub ptr %sleepp, i64 1 seq_cst
  br label %wait
got:
  call void @claim_all(ptr %st, i64 %g)
  br label %wait
exit:
  ret void
}}

define internal void @pool_run(ptr %st, i64 %fn, i64 %data, i64 %slices) {{
entry:
  %t = load atomic i64, ptr %st monotonic, align 8
  %closed = or i64 %t, 4294967295           ; no claim of the last generation can succeed
  store atomic i64 %closed, ptr %st seq_cst, align 8
  %fp = {_gep("fn")}
  store atomic i64 %fn, ptr %fp monotonic, align 8
  %dp = {_gep("data")}
  store atomic i64 %data, ptr %dp monotonic, align 8
  %np = {_gep("slices")}
  store atomic i64 %slices, ptr %np release, align 8
  %donep = {_gep("done")}
  store atomic i64 0, ptr %donep monotonic, align 8
  %g = lshr i64 %t, 32
  %g1 = add i64 %g, 1
  %gm = and i64 %g1, 4294967295
  %nt = shl i64 %gm, 32
  store atomic i64 %nt, ptr %st seq_cst, align 8
  %wakep = {_gep("wake")}
  %w = atomicrmw add ptr %wakep, i32 1 seq_cst
  %sleepp = {_gep("sleepers")}
  %sl = load atomic i64, ptr %sleepp seq_cst, align 8
  %any = icmp sgt i64 %sl, 0
  br i1 %any, label %wake, label %work
wake:
  %r = call i64 @futex(ptr %st, i64 {_FUTEX_WAKE}, i64 2147483647)
  br label %work
work:
  call void @claim_all(ptr %st, i64 %gm)
  br label %join
join:
  %j = phi i64 [ 0, %work ], [ %j1, %pause ], [ %j1, %yieldj ]
  %d = load atomic i64, ptr %donep acquire, align 8
  %fin = icmp sge i64 %d, %slices
  br i1 %fin, label %out, label %pause
pause:
  call void @llvm.x86.sse2.pause()
  %j1 = add i64 %j, 1
  %jm = and i64 %j1, {YIELD_EVERY - 1}
  %jz = icmp eq i64 %jm, 0
  br i1 %jz, label %yieldj, label %join
yieldj:                   ; a worker that holds a slice may need this CPU
  call void @yield(ptr %st)
  br label %join
out:
  ret void
}}

define internal void @pool_stop(ptr %st) {{
entry:
  %quitp = {_gep("quit")}
  store atomic i64 1, ptr %quitp seq_cst, align 8
  %wakep = {_gep("wake")}
  %w = atomicrmw add ptr %wakep, i32 1 seq_cst
  %r = call i64 @futex(ptr %st, i64 {_FUTEX_WAKE}, i64 2147483647)
  ret void
}}

; the one exported symbol: the address of function ``which`` (0 worker, 1 run, 2 stop)
define i64 @ENTRY_NAME(i64 %which) {{
entry:
  %w = ptrtoint ptr @pool_worker to i64
  %r = ptrtoint ptr @pool_run to i64
  %s = ptrtoint ptr @pool_stop to i64
  %is0 = icmp eq i64 %which, 0
  %is1 = icmp eq i64 %which, 1
  %a = select i1 %is1, i64 %r, i64 %s
  %b = select i1 %is0, i64 %w, i64 %a
  ret i64 %b
}}
"""
_WORKER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_RUN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
_STOP = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_ENTRY = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)


_entry = []


def _pool_key() -> str:
    return jit.cache_key("spinpool", "O1", _IR)


def _slice_key() -> str:
    return jit.cache_key("spinpool-kernel-slice", "O1", _kernel_slice_ir())


def _functions():
    """(worker, run, stop) ctypes functions of the compiled pool code."""
    if not _entry:
        key = _pool_key()
        # hand-written loops of atomics: -O1 (the optimizer has nothing to add; O3 took
        # ~37 ms of a cold first call)
        _entry.append(_ENTRY(jit.load_function(
            key, lambda: _IR.replace("ENTRY_NAME", jit.PLACEHOLDER), title="spin pool",
            optimize=1)))
    entry = _entry[0]
    return _WORKER(entry(0)), _RUN(entry(1)), _STOP(entry(2))


_requested: set = set()


def prefetch(name: str = "pool", loader=None, keys=()) -> None:
    """Load the pool's code, and ``loader`` (another region function, under ``name``, cached
    under ``keys``), once per name: at once when all of it is in the cache as linked
    libraries (a few ms, no LLVM), else on a background thread (a compile). Plans that may
    split call this when they are made; until the code is loaded (``ready``) they run on one
    thread, so no call waits for a compile it could do without."""
    if name in _requested or not _supported():
        return
    _requested.add(name)

    def load():
        try:
            _functions()
            kernel_slice()
            if loader is not None:
                loader()
        except Exception:           # a later synchronous load reports it
            pass
    if all(jit.linked(k) for k in (_pool_key(), _slice_key(), *keys)):
        load()
        return
    threading.Thread(target=load, name="graphc-spinpool", daemon=True).start()


def ready() -> bool:
    """Whether the pool's code and the kernel slice are loaded in this process."""
    return bool(_entry) and bool(_slice_addr)


def _work(worker, raw, addr):
    """A worker thread's body. It holds ``raw`` (the state words) until the native loop has
    returned: close() waits only a second for a worker, so a pool replaced by get_pool (or
    dropped at exit) must not free the words a late worker still reads."""
    worker(addr)


class SpinPool:
    """``workers`` native threads; ``run(fn, data, slices)`` runs ``fn(data, s)`` for every
    s in [0, slices) on them and on the calling thread, and returns when all are done."""

    def __init__(self, workers: int, spin: int = SPIN):
        self._worker, self._run, self._stop = _functions()
        raw = np.zeros(_WORDS + 8, np.int64)
        off = (-raw.ctypes.data % 64) // 8                 # groups on their own cache lines
        self._raw = raw
        self.state = raw[off:off + _WORDS]
        self.addr = self.state.ctypes.data
        libc = ctypes.CDLL(None)
        self.state[_SLOT["syscall"]] = ctypes.cast(libc.syscall, ctypes.c_void_p).value
        self.state[_SLOT["spin"]] = spin
        self.state[_SLOT["yield"]] = ctypes.cast(libc.sched_yield, ctypes.c_void_p).value
        self.threads = [threading.Thread(target=_work, args=(self._worker, raw, self.addr),
                                         daemon=True, name=f"graphc-spin-{i}")
                        for i in range(workers)]
        for t in self.threads:
            t.start()
        self.closed = False
        self._busy = threading.Lock()

    def run(self, fn: int, data: int, slices: int) -> bool:
        """Run the region; False (nothing run) while another thread is running one on this
        pool: the protocol has one caller at a time, so that caller runs its work alone."""
        if not self._busy.acquire(blocking=False):
            return False
        try:
            self._run(self.addr, fn, data, slices)
        finally:
            self._busy.release()
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._stop(self.addr)
            for t in self.threads:
                t.join(timeout=1.0)


class TwoWays:
    """Chooses between running a piece of work on one thread or split over the pool, by the
    recent times of each (exponential averages). Which is faster depends on what else runs
    on the machine more than on the work: on the idle 2-core development machine a split
    took ~60% of the one-thread time; with more runnable threads than cores a split waits for
    a worker sharing its caller's core and took up to 2-3x as long (load 2.5-3). Every
    EXPLORE-th call, times the slower way's cost ratio (at most 8), runs the other way, so a
    change of load is noticed within a few hundred calls at most.

    The first WARM calls of each way alternate (the split first) and each way starts from
    its best warm-up time: a first call pays for fresh buffers and cold caches, and a
    one-time slow sample would otherwise keep the other way for up to 8 * EXPLORE calls,
    longer than a whole benchmark of a large product (~13 calls)."""

    __slots__ = ("cost", "calls", "seen", "way", "since")
    EXPLORE = 32
    # calls after a change of the faster way at which the other is tried again: a change is
    # most often a stretch of noise (a few slow samples of the faster way) and then the
    # usual period left the slower way running for ~60 calls, the whole of a benchmark of
    # the LSTM step (its products: 36 -> 49 ms per call for the last 7 of 10 reps, measured)
    RECHECK = (2, 4, 8, 16)
    SMOOTH = 0.3            # weight of the newest time in the average
    SMOOTH_EXPLORED = 0.7   # the same for a sample of the way not in use
    WARM = 2                # samples of each way before the averages decide

    def __init__(self):
        self.cost = [0.0, 0.0]          # seconds per call: one thread, split
        self.calls = 0
        self.seen = [0, 0]              # samples of each way so far
        self.way = None                 # the faster way at the last call
        self.since = 0                  # calls since it last changed

    def split(self) -> bool:
        self.calls += 1
        seen = self.seen
        if seen[0] < self.WARM or seen[1] < self.WARM:
            # warm-up: the split first (callers split only when ready()), then alternate
            return seen[1] <= seen[0]
        cost = self.cost
        faster = cost[1] < cost[0]
        if faster != self.way:          # (the first choice after the warm-up is no change)
            self.way, self.since = faster, 0 if self.way is not None else max(self.RECHECK)
        self.since += 1
        if self.since in self.RECHECK:
            return not faster
        # the other way is tried less often the slower it was (at most 8x less often): a
        # scan step's product explores ~2 times per LSTM call of 100 products, not ~6
        every = int(self.EXPLORE * min(8.0, max(cost) / min(cost)))
        return not faster if self.calls % every == 0 else faster

    def record(self, split: bool, seconds: float) -> None:
        i = int(split)
        n = self.seen[i]
        self.seen[i] = n + 1
        c = self.cost[i]
        if n < self.WARM:
            self.cost[i] = seconds if not n else min(c, seconds)
        else:
            # one sample counts at most as twice the average: a worker descheduled for a time
            # slice once (milliseconds against a 130 us product) would otherwise tip the
            # average over the other way's, and the loop would run the slower way until
            # several explorations had brought it back (the LSTM step: 44 -> ~60 ms calls)
            # a sample of the way not in use (an exploration) is a fresh look at an old
            # estimate and counts for more: after a stretch of noise had tipped a product
            # onto the slower way, it stayed there for two or three explorations (~100
            # calls; the MLP step ran 35-38 ms instead of 25-27 for 20-25 calls in a row)
            explored = (i == 1) != (self.cost[1] < self.cost[0])
            weight = self.SMOOTH_EXPLORED if explored else self.SMOOTH
            self.cost[i] = c + weight * (min(seconds, 2.0 * c) - c)

    def force(self, split: bool) -> None:
        """Run the given way from now on, until the other is explored (tests)."""
        self.cost = [2.0, 1.0] if split else [1.0, 2.0]
        self.seen = [self.WARM, self.WARM]
        self.calls = 1
        self.way, self.since = split, max(self.RECHECK)


MAX_OPERANDS = 16          # as pycall.MAX_OPERANDS: more run on one thread


def _kernel_slice_ir() -> str:
    """``slice(d, s)`` for the pool: d = int64 [kernel, n0, slices, meta, operands, shift,
    op_0, ..., op_{K-1}] runs ``kernel(lo, hi, s * shift, meta, op_0, ...)`` over slice s of
    the kernel's split loop [0, n0) (the entry point ABI of codegen.py: a full reduction
    writes slice s's partial result ``s * shift`` bytes after the output pointer)."""
    lines = ["define void @ENTRY_NAME(ptr %d, i64 %s) {", "entry:"]
    for i, name in enumerate(("fi", "n0", "slices", "meta", "nops", "shift")):
        lines += [f"  %p{name} = getelementptr inbounds i64, ptr %d, i64 {i}",
                  f"  %{name} = load i64, ptr %p{name}, align 8"]
    lines += ["  %fn = inttoptr i64 %fi to ptr", "  %out = mul i64 %s, %shift",
              "  %a = mul i64 %s, %n0", "  %lo = sdiv i64 %a, %slices",
              "  %s1 = add i64 %s, 1", "  %b = mul i64 %s1, %n0", "  %hi = sdiv i64 %b, %slices"]
    for k in range(MAX_OPERANDS):
        lines += [f"  %pop{k} = getelementptr inbounds i64, ptr %d, i64 {_OPS + k}",
                  f"  %op{k} = load i64, ptr %pop{k}, align 8"]
    cases = " ".join(f"i64 {n}, label %call{n}" for n in range(1, MAX_OPERANDS + 1))
    lines.append(f"  switch i64 %nops, label %done [ {cases} ]")
    for n in range(1, MAX_OPERANDS + 1):
        ops = "".join(f", i64 %op{k}" for k in range(n))
        lines += [f"call{n}:", f"  call void %fn(i64 %lo, i64 %hi, i64 %out, i64 %meta{ops})",
                  "  br label %done"]
    lines += ["done:", "  ret void", "}"]
    return "\n".join(lines)


_OPS = 6                    # index of the first operand in a kernel slice's data
_slice_addr = []


def kernel_slice() -> int:
    """Address of the pool's region function for generated kernels (see _kernel_slice_ir)."""
    if not _slice_addr:
        text = _kernel_slice_ir()
        _slice_addr.append(jit.load_function(
            _slice_key(),
            lambda: text.replace("ENTRY_NAME", jit.PLACEHOLDER), title="kernel slice",
            optimize=1))
    return _slice_addr[0]


class KernelSplit:
    """A plan's kernel over its split loop on the pool.

    ``run``: small heavy loops, on one thread or split, whichever has been faster
    (TwoWays). ``run_split``: loops big enough for the kernel threads, always split, into
    ``slices`` pieces claimed dynamically, so a worker that does not get a core leaves its
    share to the others instead of holding up the call (Python's pool gives each thread one
    fixed chunk and waits for all). ``shift``: bytes between the partial results of slices
    (full reductions), else 0."""

    __slots__ = ("head", "ways", "threads", "slices", "pad", "calls")

    def __init__(self, fn_addr: int, n0: int, meta_ptr: int, n_operands: int, threads: int,
                 slices: int = 0, shift: int = 0, eager: bool = True):
        self.threads = threads
        # by default two slices per thread: a late worker leaves whole slices to others
        self.slices = min(n0, slices or 2 * threads)
        self.head = [fn_addr, n0, self.slices, meta_ptr, n_operands, shift]
        # kernel_slice loads all MAX_OPERANDS operand words before it switches on their
        # count: the block is that long, so no load reads past its end
        self.pad = [0] * (MAX_OPERANDS - n_operands)
        self.ways = TwoWays()
        self.calls = 0
        if eager:           # a scan step's kernel: split from the first loop on
            prefetch()

    def run(self, fn, n0, meta_ptr, args) -> None:
        split = self.ways.split()
        pool = get_pool(self.threads) if split and ready() else None
        start = perf_counter()
        ran = False
        if pool is not None:
            # a fresh block per call: a plan may be shared by functions on other threads
            d = np.array(self.head + args + self.pad, np.int64)
            ran = pool.run(kernel_slice(), d.ctypes.data, self.slices)
        if not ran:
            fn(0, n0, 0, meta_ptr, *args)
        self.ways.record(ran, perf_counter() - start)

    def run_split(self, args) -> bool:
        """All slices on the pool; False (nothing run) when the pool is unavailable or busy
        with another thread's call, or its code is still being loaded (prefetch)."""
        if not ready():
            # a large kernel's first call runs on Python's pool: loading the pool's code
            # then would compete with it (and on a cold cache with its compile)
            self.calls += 1
            if self.calls > 1:
                prefetch()
            return False
        pool = get_pool(self.threads)
        if pool is None:
            return False
        d = np.array(self.head + args + self.pad, np.int64)
        return pool.run(kernel_slice(), d.ctypes.data, self.slices)


_pool = {"pid": None, "pool": None}
_pool_lock = threading.Lock()


def _reset_in_child():
    """A child forked while another thread held _pool_lock would wait on it forever, and one
    forked while prefetch's thread was loading code would never load it (the thread is gone):
    the child starts with a free lock and prefetches again when asked."""
    global _pool_lock
    _pool_lock = threading.Lock()
    _requested.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


def get_pool(threads: int):
    """This process's pool with ``threads - 1`` workers (the caller is the last thread), or
    None when ``threads`` <= 1 or the platform is not x86-64 Linux (futex and pause above)."""
    if threads <= 1 or not _supported():
        return None
    pid = os.getpid()
    with _pool_lock:
        pool = _pool["pool"]
        if _pool["pid"] != pid or pool is None or len(pool.threads) < threads - 1:
            if pool is not None and _pool["pid"] == pid:
                pool.close()
            pool = _pool["pool"] = SpinPool(threads - 1)
            _pool["pid"] = pid
        return pool


def usable(n_operands: int) -> bool:
    """Whether a kernel with this many operands can run on the pool here."""
    return n_operands <= MAX_OPERANDS and _supported()


@functools.lru_cache(maxsize=None)
def _supported() -> bool:
    """x86-64 Linux (the futex call and pause instruction above), unless turned off with
    $GRAPHC_SPIN_POOL=0 (no spinning threads: every such loop runs on its caller)."""
    import platform
    if os.environ.get("GRAPHC_SPIN_POOL", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


@atexit.register
def _close_at_exit():
    pool = _pool["pool"]
    if pool is not None and _pool["pid"] == os.getpid():
        pool.close()
