"""A loop's steps run natively, each thread on its own rows of the batch, without a
synchronisation per step.

A recurrent step (an LSTM's: ``z = h @ Wh + x_t @ Wx + b``, then the gate math) runs a few
kernels of 20-300 us each. Run by the Python loop (loop.py) every kernel is one call from
Python, split over the spin pool or not: two synchronisations per step, the gate kernel
reading rows of ``z`` that the other core wrote, and ~20-30 us of Python per step. But
when every node of the step maps rows to rows (a matrix product with a loop-invariant
right operand, elementwise kernels, views), row r of every state at step t depends only on
row r of the states at step t - 1: the batch splits into independent loops. Here each
thread of the pool runs all remaining steps for its rows, calling the same kernels on
addresses it computes, and the threads meet once, at the end.

How: the Python loop runs the first RECORD steps. After each of them the inner function's
storage is read (the arrays every node took and made); steps 1-3 show, for every array a
kernel touches, how its address moves from step to step: fixed (weights, kept buffers), by
a fixed stride (sequence and state-buffer rows) or alternating between two buffers
(final-value states). From that, each row slice gets a program: per node, a function
address and its arguments as ``a + t * b + (t & 1) * c``; one native function (IR below)
interprets it for steps RECORD .. n-1. When anything does not fit (an op that mixes rows,
an address that moves otherwise, an output the loop would have to copy), ``build`` returns
None and the Python loop runs the remaining steps: nothing is ever run twice.

Later calls skip the recorded steps and the analysis: the program is kept as a Template,
and a call whose loop arrays have the template call's shapes, strides and dtypes runs every
step natively, each address moved with the array it lies in (the LSTM training step: ~4 ms
of ~38 less per call, two loops, development machine, in-process A/B).

    region(d, s): d = int64 [t0, t1, program of slice 0, program of slice 1, ...]
    program: [calls, then per call: function, argument count, then (a, b, c) per argument]

The kernels are the ones the Python loop calls (the same code and order of operations), so
results equal the loop's; the fused kernels are taken in their pointer-argument variant
(Kernel.raw_plan) over each slice's rows, the product (packgemm.pg_gemm) on its rows.
"""
from __future__ import annotations

import ctypes
import hashlib

import numpy as np

from graphc.backend.llvm.kernel import data_pointer
from graphc.configdefaults import config
from graphc.link import hugemem

RECORD = 4                  # steps the Python loop runs first; steps 1..3 are compared
# (step 0 allocates the per-step outputs' buffers: their rows are lent from step 1 on)
MIN_STEPS = RECORD + 4      # fewer steps: not worth the analysis (~0.3 ms)
MAX_ARGS = 24               # arguments of one call (a fused kernel: 4 + its operands)
ROWS_PER_SLICE = 4          # the product's register block: slices start on a multiple

_region = []                # the interpreter's address, once loaded
# loops that ran their later steps natively, loops that tried and ran them in Python, and
# loops that ran every step natively on the program of an earlier call (Template)
stats = {"native": 0, "python": 0, "reused": 0}
_REGION_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)


def _interpreter_ir() -> str:
    """IR of the interpreter (entry point ENTRY_NAME): see the module docstring."""
    ln = ["define void @ENTRY_NAME(ptr %d, i64 %s) {",
          "entry:",
          f"  %args = alloca [{MAX_ARGS} x i64], align 8",
          "  %t0 = load i64, ptr %d, align 8",
          "  %t1p = getelementptr inbounds i64, ptr %d, i64 1",
          "  %t1 = load i64, ptr %t1p, align 8",
          "  %pi = add i64 %s, 2",
          "  %pp = getelementptr inbounds i64, ptr %d, i64 %pi",
          "  %progi = load i64, ptr %pp, align 8",
          "  %prog = inttoptr i64 %progi to ptr",
          "  %ncalls = load i64, ptr %prog, align 8",
          "  %any = icmp slt i64 %t0, %t1",
          "  br i1 %any, label %step, label %done",
          "step:",
          "  %t = phi i64 [ %t0, %entry ], [ %tn, %step_end ]",
          "  %odd = and i64 %t, 1",
          "  br label %call",
          "call:",
          "  %j = phi i64 [ 0, %step ], [ %jn, %called ]",
          "  %pos = phi i64 [ 1, %step ], [ %next, %called ]",
          "  %fp = getelementptr inbounds i64, ptr %prog, i64 %pos",
          "  %fi = load i64, ptr %fp, align 8",
          "  %f = inttoptr i64 %fi to ptr",
          "  %np = getelementptr inbounds i64, ptr %fp, i64 1",
          "  %nargs = load i64, ptr %np, align 8",
          "  %base = add i64 %pos, 2",
          "  br label %arg",
          "arg:",
          "  %i = phi i64 [ 0, %call ], [ %in, %arg ]",
          "  %i3 = mul i64 %i, 3",
          "  %w = add i64 %base, %i3",
          "  %ap = getelementptr inbounds i64, ptr %prog, i64 %w",
          "  %a = load i64, ptr %ap, align 8",
          "  %bp = getelementptr inbounds i64, ptr %ap, i64 1",
          "  %b = load i64, ptr %bp, align 8",
          "  %cp = getelementptr inbounds i64, ptr %ap, i64 2",
          "  %c = load i64, ptr %cp, align 8",
          "  %tb = mul i64 %t, %b",
          "  %oc = mul i64 %odd, %c",
          "  %v0 = add i64 %a, %tb",
          "  %v = add i64 %v0, %oc",
          f"  %slot = getelementptr inbounds [{MAX_ARGS} x i64], ptr %args, i64 0, i64 %i",
          "  store i64 %v, ptr %slot, align 8",
          "  %in = add i64 %i, 1",
          "  %more = icmp slt i64 %in, %nargs",
          "  br i1 %more, label %arg, label %dispatch",
          "dispatch:",
          "  %n3 = mul i64 %nargs, 3",
          "  %next = add i64 %base, %n3",
          "  switch i64 %nargs, label %called ["
          + " ".join(f"i64 {k}, label %c{k}" for k in range(1, MAX_ARGS + 1)) + "]"]
    for k in range(1, MAX_ARGS + 1):
        ln.append(f"c{k}:")
        vals = []
        for i in range(k):
            ln += [f"  %s{k}_{i} = getelementptr inbounds [{MAX_ARGS} x i64], ptr %args, "
                   f"i64 0, i64 {i}",
                   f"  %x{k}_{i} = load i64, ptr %s{k}_{i}, align 8"]
            vals.append(f"i64 %x{k}_{i}")
        ln += [f"  call void %f({', '.join(vals)})", "  br label %called"]
    ln += ["called:",
           "  %jn = add i64 %j, 1",
           "  %morecalls = icmp slt i64 %jn, %ncalls",
           "  br i1 %morecalls, label %call, label %step_end",
           "step_end:",
           "  %tn = add i64 %t, 1",
           "  %moresteps = icmp slt i64 %tn, %t1",
           "  br i1 %moresteps, label %step, label %done",
           "done:",
           "  ret void",
           "}"]
    return "\n".join(ln)


def _interpreter() -> int:
    if not _region:
        from graphc.backend.llvm import jit
        addr = jit.load_function(
            _interpreter_key(), lambda: _interpreter_ir().replace("ENTRY_NAME", jit.PLACEHOLDER),
            title="scan native steps", optimize=1)
        _region[:] = [addr]
    return _region[0]


def _interpreter_key() -> str:
    """Its cache key, from this module's source text, which generates the IR (read once per
    process; building the IR to hash it would cost ~1 ms in every warm process)."""
    if not _key:
        from graphc.backend.llvm import jit
        try:
            with open(__file__, "rb") as f:
                source = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            source = _interpreter_ir()
        _key.append(jit.cache_key("scan-native-steps", "O1", source))
    return _key[0]


_key: list = []


_loading = []


def _interpreter_ready() -> bool:
    """Whether the interpreter is loaded; loads it when the cache has it linked, else
    starts its compile on a background thread (a first call in a fresh cache runs its
    loops in Python rather than wait for it)."""
    if _region:
        return True
    from graphc.backend.llvm import jit
    if jit.linked(_interpreter_key()):
        _interpreter()
        return True
    if not _loading:
        _loading.append(True)
        jit.in_background(_interpreter, defer=True)
    return False


def _kinds():
    from graphc.tensor.basic import Join
    from graphc.tensor.fused import Fused
    from graphc.tensor.packed import PackedDot
    from graphc.tensor.subtensor import Subtensor
    return Fused, PackedDot, Subtensor, Join


def eligible(fn) -> bool:
    """Whether the inner function ``fn`` (utils.InnerFunction) could run natively: linked by
    the LLVM backend, every node an elementwise kernel without reduction, a packed product,
    a Subtensor or a Join (the last two only as views; checked on the arrays in build)."""
    ok = getattr(fn, "_native_ok", None)
    if ok is None:
        Fused, PackedDot, Subtensor, Join = _kinds()
        nodes = fn.fn.maker.fgraph.toposort()
        # (``destinations``: set by the LLVM linker only)
        ok = getattr(fn.run, "destinations", None) is not None and bool(nodes) and \
            all(isinstance(n.op, (Fused, PackedDot, Subtensor, Join)) and
                (not isinstance(n.op, Fused) or n.op.reduce is None) for n in nodes)
        fn._native_ok = ok
    return ok


def wanted(fn, n, as_while) -> bool:
    """Whether a loop of ``n`` steps of ``fn`` should try the native steps."""
    return not as_while and n >= MIN_STEPS and config.scan_native and eligible(fn)


class Recorder:
    """Wraps the inner function's ``run``: after each step, the arrays of every node."""

    def __init__(self, fn):
        storage = fn.fn.storage
        self.fgraph = fn.fn.maker.fgraph
        self.nodes = self.fgraph.toposort()
        self.cells = [([storage[v] for v in node.inputs], [storage[v] for v in node.outputs])
                      for node in self.nodes]
        self.out_cells = fn.out_cells
        self.inner = fn.run
        self.kernels = fn.__dict__.setdefault("_native_kernels", {})    # node index -> Kernel
        self.steps = []

    def __call__(self):
        self.inner()
        self.steps.append(([([c[0] for c in ins], [c[0] for c in outs])
                            for ins, outs in self.cells], [c[0] for c in self.out_cells]))


def _series(ptrs):
    """(a, b, c) with ptrs[i] == a + t*b + (t & 1)*c for t = 1, 2, 3; None if none fits.
    Three steps tell the patterns apart because build() admits only arrays whose addresses
    follow one by construction: views of the loop's sequences, state and per-step buffers
    (strided), the final-value holders (alternating), kept buffers and weights (fixed)."""
    p1, p2, p3 = ptrs
    if p1 == p2 == p3:
        return p1, 0, 0
    d = p2 - p1
    if p3 - p2 == d:
        return p1 - d, d, 0
    if p1 == p3:
        return p2, 0, p1 - p2
    return None


def _same_layout(arrays) -> bool:
    a0 = arrays[0]
    return all(isinstance(a, np.ndarray) and a.shape == a0.shape and a.strides == a0.strides
               and a.dtype == a0.dtype for a in arrays)


def _bounds(a):
    """[first byte, one past the last byte] that ndarray ``a`` can touch."""
    lo = hi = data_pointer(a)
    for n, st in zip(a.shape, a.strides):
        if n == 0:
            return lo, lo
        if st < 0:
            lo += (n - 1) * st
        else:
            hi += (n - 1) * st
    return lo, hi + a.itemsize


def _inside(part, whole) -> bool:
    """part's memory lies within whole's (both ndarrays)."""
    lo, hi = _bounds(whole)
    plo, phi = _bounds(part)
    return lo <= plo and phi <= hi


class Program:
    """The native steps of one loop call: per row slice, the words the interpreter reads."""

    def __init__(self, words, keep, template=None):
        self.words = [np.ascontiguousarray(w, dtype=np.int64) for w in words]
        self.keep = keep            # views, plans and meta arrays the words point into
        self.template = template    # the same program for later calls (Template), or None

    def run(self, t0, t1, threads) -> None:
        from graphc.backend.llvm import spinpool
        d = np.array([t0, t1] + [w.ctypes.data for w in self.words], np.int64)
        fn = _interpreter()
        slices = len(self.words)
        ran = False
        if slices > 1 and spinpool.usable(1) and spinpool.ready():
            pool = spinpool.get_pool(threads)
            if pool is not None:
                ran = pool.run(fn, d.ctypes.data, slices)
        if not ran:                 # one slice after the other on this thread
            call = _REGION_PROTO(fn)
            for s in range(slices):
                call(d.ctypes.data, s)

    def finish(self, finals, t0, t1) -> None:
        """The final-value holders after steps t0 .. t1-1: each step wrote its value into
        the holder's other buffer and the two were swapped (what the loop does)."""
        if (t1 - t0) % 2:
            for f in finals:
                f.cur, f.other = f.other, f.cur


def build(rec: Recorder, states, nits, finals, threads, given=None, n=None):
    """The Program of the steps after the recorded ones, or None (see the module
    docstring). ``states``: per state, (buffer, lag, lent); ``nits``: the PerStep holders,
    with lent flags; ``finals``: the _Final holders, with lent flags. The loop's outputs
    must be the arrays it would keep (lent buffer rows), else the loop would copy them.
    ``given``: the loop's sequences and non-sequences, and ``n`` its length; given, the
    Program also carries a Template of itself for later calls (None where one does not
    fit)."""
    from graphc.backend.llvm import compile_kernel
    from graphc.backend.llvm.packgemm import _gemm_address
    Fused, PackedDot, Subtensor, Join = _kinds()
    if len(rec.steps) < RECORD:
        return None
    # (on a cold cache the interpreter and the kernels' pointer variants are compiled once
    # this call has returned; all of them are requested in this call)
    ready = _interpreter_ready()
    steps = rec.steps[1:RECORD]
    n_st, n_fin = len(states), len(finals)
    # the inner outputs: states first, then finals, then per-step outputs (op.split_outputs)
    outs_by_step = [s[1] for s in steps]
    for k, (buf, lag, lent) in enumerate(states):
        if not lent:
            return None
        for t, outs in zip(range(1, RECORD), outs_by_step):
            v = outs[k]
            if not isinstance(v, np.ndarray) or data_pointer(v) != data_pointer(buf[t + lag]):
                return None
    # a final-value state that the step does not write in place (its node could not take
    # the holder's spare buffer; the loop copies its array in, e.g. a new one per step):
    # when nothing else in the step reads that array, the node writes the spare buffer
    # itself (``redirect``: its series, and the holders at steps 1, 2, 3, where a Template
    # finds that these addresses lie)
    redirect = {}
    fgraph = rec.fgraph
    for i, (f, lent) in enumerate(finals):
        spare = (data_pointer(f.cur), data_pointer(f.other))
        vals = [outs[n_st + i] for outs in outs_by_step]
        if not all(isinstance(v, np.ndarray) for v in vals):
            return None
        if lent:
            if any(data_pointer(v) not in spare for v in vals):
                return None
            continue
        var = fgraph.outputs[n_st + i]
        if var.owner is None or vals[0].shape != f.cur.shape or \
                vals[0].strides != f.cur.strides or fgraph.outputs.count(var) != 1 or \
                any(c != "output" for c, _ in fgraph.clients.get(var, [])):
            return None
        # step t reads the value of step t - 1 and writes the other buffer: step RECORD
        # writes the holder's ``other``, the next one its ``cur``, and so on
        even, odd = (f.other, f.cur) if RECORD % 2 == 0 else (f.cur, f.other)
        a, c = data_pointer(even), data_pointer(odd) - data_pointer(even)
        redirect[(rec.nodes.index(var.owner), var.owner.outputs.index(var))] = \
            ((a, 0, c), [odd, even, odd])
    for j, (p, lent) in enumerate(nits):
        if not lent or p.buf is None:
            return None
        for t, outs in zip(range(1, RECORD), outs_by_step):
            v = outs[n_st + n_fin + j]
            if not isinstance(v, np.ndarray) or data_pointer(v) != data_pointer(p.buf[t]):
                return None
    # memory that outlives the loop, per recorded step: the rows of the state and per-step
    # buffers and the final-value holders. An array a node writes is either an inner output
    # (checked above) or at a fixed address (a kept buffer) or inside one of these (a part
    # of a Join written in place): never an array made for one step, whose memory a later
    # step could no longer own.
    outer = [[buf[t + lag] for buf, lag, _ in states] + [p.buf[t] for p, _ in nits] +
             [a for f, _ in finals for a in (f.cur, f.other)] for t in range(1, RECORD)]
    inner_outs = set(fgraph.outputs)

    def stable(arrays):
        if len({data_pointer(a) for a in arrays}) == 1:
            return True
        return all(any(_inside(a, o) for o in outs) for a, outs in zip(arrays, outer))

    # the batch: rows of the first state (every node's rows are checked against it)
    sample = outs_by_step[0]
    if not sample or not isinstance(sample[0], np.ndarray) or sample[0].ndim < 1:
        return None
    rows = sample[0].shape[0]
    n_slices = max(1, min(threads, rows // ROWS_PER_SLICE))
    bounds = [ROWS_PER_SLICE * round(rows * s / n_slices / ROWS_PER_SLICE)
              for s in range(n_slices)] + [rows]
    calls = [[] for _ in range(n_slices)]           # per slice: (fn, [(a, b, c), ...])
    not_ready = []
    keep = []
    written, broadcast_reads = [], []

    def series_of(arrays, offset=0, key=None):
        """(a, b, c, (the arrays of steps 1-3, written)): an argument that points into
        ``arrays`` (the 4th item is what a Template relocates it by)."""
        s, arrays = redirect.get(key) or (_series([data_pointer(a) for a in arrays]), arrays)
        if s is None:
            raise _NoFit
        return (s[0] + offset, s[1], s[2], (arrays, key is not None))

    try:
        for idx, node in enumerate(rec.nodes):
            ins = [[s[0][idx][0][k] for s in steps] for k in range(len(node.inputs))]
            outs = [[s[0][idx][1][k] for s in steps] for k in range(len(node.outputs))]
            if not all(_same_layout(a) for a in ins + outs):
                raise _NoFit
            first_in = [a[0] for a in ins]
            first_out = [a[0] for a in outs]
            op = node.op
            if not isinstance(op, Subtensor) and \
                    not all(v in inner_outs or stable(a) for v, a in zip(node.outputs, outs)):
                raise _NoFit                # a view is checked below; the others are written
            if isinstance(op, Subtensor):
                x, y = first_in[0], first_out[0]
                # a view keeping every row: its consumers read the rows it took them from
                if y.ndim < 1 or x.ndim < 1 or y.shape[0] != x.shape[0] or \
                        y.strides[0] != x.strides[0] or not _inside(y, x) or \
                        not all(_inside(yy, xx) for yy, xx in zip(outs[0], ins[0])):
                    raise _NoFit
                continue
            if isinstance(op, Join):
                # joined in place: every part was written into the joined array
                if not all(_inside(part, whole) for a in ins
                           for part, whole in zip(a, outs[0])):
                    raise _NoFit
                continue
            if isinstance(op, PackedDot):
                _packed_calls(op, ins, outs, first_in, first_out, rows, bounds, calls,
                              lambda a, off=0, out=False: series_of(
                                  a, off, (idx, 0) if out else None),
                              _gemm_address(), written, broadcast_reads)
                continue
            # Fused, no reduction
            kernel = rec.kernels.get(idx)
            if kernel is None:
                try:            # (the Python loop ran it on numpy: no kernel for it)
                    kernel = compile_kernel(op.to_kernel_spec())
                except Exception:
                    kernel = False
                rec.kernels[idx] = kernel
            if kernel is False:
                raise _NoFit
            shape = np.broadcast_shapes(*[a.shape for a in first_in]) if first_in else \
                first_out[0].shape
            if len(shape) < 1 or shape[0] != rows or \
                    any(o.shape != shape for o in first_out):
                raise _NoFit
            role = []                       # per input: True = its rows follow the batch
            for a in first_in:
                if a.ndim == len(shape) and a.shape[0] == rows and rows > 1:
                    role.append(True)
                elif a.ndim < len(shape) or a.shape[0] == 1:
                    role.append(False)
                    broadcast_reads.append(a)
                else:
                    raise _NoFit
            written.extend(first_out)
            for s in range(n_slices):
                r0, r1 = bounds[s], bounds[s + 1]
                if r1 <= r0:
                    continue
                vin = [a[r0:r1] if r else a for a, r in zip(first_in, role)]
                vout = [o[r0:r1] for o in first_out]
                plan = kernel.raw_plan(vin, vout, wait=False)
                if plan is None:            # compiled after this call: look at the rest
                    not_ready.append(node)
                    continue
                if plan.empty or plan.prefill is not None or plan.chunks is not None:
                    raise _NoFit
                keep.append(plan)
                args = [(0, 0, 0), (plan.n0, 0, 0), (0, 0, 0), (plan.meta_ptr, 0, 0)]
                for a, r in zip(ins, role):
                    args.append(series_of(a, r0 * a[0].strides[0] if r else 0))
                for ko, o in enumerate(outs):
                    args.append(series_of(o, r0 * o[0].strides[0], (idx, ko)))
                calls[s].append((ctypes.cast(plan.fn, ctypes.c_void_p).value, args))
    except _NoFit:
        return None
    if not ready or not_ready:
        return None
    # no slice may write what every slice reads whole (a broadcast operand)
    for w in written:
        if any(np.may_share_memory(w, r) for r in broadcast_reads):
            return None
    words, moved = [], []           # moved: per slice, (word of a, its arrays, written)
    for per_slice in calls:
        if any(len(args) > MAX_ARGS for _, args in per_slice):
            return None
        w, m = [len(per_slice)], []
        for fn, args in per_slice:
            w += [fn, len(args)]
            for arg in args:
                if len(arg) == 4:
                    m.append((len(w), *arg[3]))
                w += arg[:3]
        words.append(w)
        moved.append(m)
    template = None
    if given is not None:
        template = Template.make(words, moved, keep, [b for b, _, _ in states],
                                 [p for p, _ in nits], [f for f, _ in finals], given, n,
                                 threads)
    return Program(words, (keep, rec.steps), template)


class Template:
    """A loop's Program, kept for its later calls: they run every step natively, with no
    step in Python and no analysis.

    A later call's loop has new arrays: state and per-step buffers and final-value holders
    made for it, and the sequences and non-sequences its caller passed. When they have the
    shapes, strides and dtypes of the template call's (and the loop the same length and
    thread count), each address of the program moves with the array it lies in (its
    "root"): a + (new address - old address) of that root. The addresses of a final-value
    state alternate between its two holders: the even steps' holder moves ``a``, the odd
    steps' holder ``a + c``. Any other address lies in memory of the inner function (its
    kept buffers, constants, the kernels' plans), which does not move; the template keeps
    those arrays alive. Step 0 runs natively too: the per-step buffers, which the Python
    loop allocates when step 0 shows their shape, are allocated here first.

    Not made where an address lies in more than one root, or a node writes into a sequence
    or non-sequence.
    """

    def __init__(self, words, fix, bases, signature, nit_layout, n, threads, keep):
        self.words = [np.asarray(w, dtype=np.int64) for w in words]
        # per slice: (word index of a, of c, root of even steps, root of odd steps); root
        # len(bases) is "does not move"
        self.fix = fix
        self.bases = np.asarray(bases + [0], dtype=np.int64)
        self.signature = signature
        self.nit_layout = nit_layout            # per per-step output: (row shape, dtype)
        self.n, self.threads = n, threads
        self.keep = keep

    @staticmethod
    def _roots(bufs, finals, outer):
        """The arrays a later call's addresses may move with, but for the per-step buffers
        (allocated in step 0, appended last); None when one is not an ndarray."""
        roots = list(bufs)
        for f in finals:
            roots += [f.cur, f.other]
        roots += outer
        if not all(isinstance(r, np.ndarray) for r in roots):
            return None
        return roots

    @staticmethod
    def _signature(roots):
        return tuple((r.shape, r.strides, r.dtype) for r in roots)

    @classmethod
    def make(cls, words, moved, keep, bufs, nits, finals, outer, n, threads):
        roots = cls._roots(bufs, finals, outer)
        if roots is None or any(p.buf is None for p in nits):
            return None
        signature = cls._signature(roots)
        given = range(len(roots) - len(outer), len(roots))     # sequences, non-sequences
        roots += [p.buf for p in nits]
        bounds = [_bounds(r) for r in roots]
        kept = []
        fix = []
        for m in moved:
            per = []
            for pos, arrays, written in m:
                which = []
                for a in arrays:                # steps 1, 2, 3
                    lo, hi = _bounds(a)
                    inside = [i for i, (rlo, rhi) in enumerate(bounds)
                              if rlo <= lo and hi <= rhi]
                    if len(inside) > 1:
                        return None
                    which.append(inside[0] if inside else len(roots))
                odd, even = which[0], which[1]
                if which[2] != odd:
                    return None
                if written and (odd in given or even in given):
                    return None
                if odd == len(roots) or even == len(roots):
                    if odd != even:
                        return None
                    kept.append(arrays)
                per.append((pos, pos + 2, even, odd))
            fix.append(np.array(per, dtype=np.int64).reshape(-1, 4))
        return cls(words, fix, [data_pointer(r) for r in roots], signature,
                   [(p.buf.shape[1:], p.buf.dtype) for p in nits], n, threads, (keep, kept))

    def program(self, n, threads, bufs, nits, finals, outer):
        """The Program of steps 0 .. n-1 of this call, or None where the template does not
        fit it; allocates the per-step buffers when it does."""
        if n != self.n or threads != self.threads:
            return None
        roots = self._roots(bufs, finals, outer)
        if roots is None or self._signature(roots) != self.signature:
            return None
        for p, (shape, dtype) in zip(nits, self.nit_layout):
            p.buf = hugemem.empty((n,) + shape, dtype)
        roots += [p.buf for p in nits]
        moves = np.fromiter((data_pointer(r) for r in roots), np.int64, len(roots))
        moves = np.append(moves, 0) - self.bases
        words = []
        for w, fix in zip(self.words, self.fix):
            w = w.copy()
            even, odd = moves[fix[:, 2]], moves[fix[:, 3]]
            w[fix[:, 0]] += even
            w[fix[:, 1]] += odd - even
            words.append(w)
        return Program(words, self.keep)


class _NoFit(Exception):
    """The recorded steps do not fit the native steps."""


def _packed_calls(op, ins, outs, first_in, first_out, rows, bounds, calls, series_of,
                  gemm, written, broadcast_reads):
    """pg_gemm over each slice's rows (packgemm.py): C[rows] = A[rows] @ B + addends."""
    from graphc.backend.llvm.packgemm import row_major as packgemm_rows
    from graphc.tensor.packed import PANEL
    f32 = np.dtype(np.float32)
    a, w, wp, c = first_in[0], first_in[1], first_in[2], first_out[0]
    addends = first_in[3:]

    def row_major(x):               # what pg_gemm takes: float32 rows with unit stride
        return x.dtype == f32 and packgemm_rows(x)

    n = w.shape[0] if op.trans else w.shape[1]
    if not (row_major(a) and row_major(c) and wp.dtype == f32 and wp.flags.c_contiguous
            and a.shape[0] == rows and c.shape == (rows, n) and wp.shape[0] == -(-n // PANEL)
            and wp.shape[1] == a.shape[1] and all(row_major(e) for e in addends)
            and all(e.shape in ((rows, n), (1, n)) for e in addends)) or a.shape[1] == 0 \
            or n == 0:
        raise _NoFit
    k = a.shape[1]
    lda, ldc = a.strides[0] // 4, max(1, c.strides[0] // 4)
    written.append(c)
    for e in addends:
        if e.shape[0] == 1:
            broadcast_reads.append(e)
    for s in range(len(calls)):
        r0, r1 = bounds[s], bounds[s + 1]
        if r1 <= r0:
            continue
        args = [(0, 0, 0), (wp.shape[0], 0, 0), (r1 - r0, 0, 0), (k, 0, 0),
                series_of(ins[0], r0 * a.strides[0]), (lda, 0, 0), series_of(ins[2]),
                series_of(outs[0], r0 * c.strides[0], True), (ldc, 0, 0), (n, 0, 0)]
        for j in range(2):
            if j < len(addends):
                e = addends[j]
                ld = e.strides[0] // 4 if e.shape[0] > 1 else 0
                args += [series_of(ins[3 + j], r0 * e.strides[0] if ld else 0), (ld, 0, 0)]
            else:
                args += [(0, 0, 0), (0, 0, 0)]
        calls[s].append((gemm, args))
