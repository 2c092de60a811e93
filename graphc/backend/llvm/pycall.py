"""A compiled kernel entry point as a CPython builtin: small calls skip ctypes.

A ctypes call converts every argument and releases and retakes the GIL: ~1-2.5 us, more than
a fused kernel on a few dozen elements takes to run, and the Python code that checks the
arrays' signature before it costs as much again. For a Plan that is one plain call
(``fn(0, n0, 0, meta, *operands)``, no threads) this module makes a builtin function

    call(*operands) -> operands[-1] if they have the plan's signature (it ran the kernel),
                       else another object (it ran nothing)

It is one generated trampoline with CPython's METH_FASTCALL signature

    PyObject *trampoline(PyObject *self, PyObject *const *args, Py_ssize_t nargs)

made into a builtin by ``PyCFunction_NewEx`` around ``self``, an int64 ndarray holding the
kernel's address, n0, the signature the plan was made for (per operand: type, dtype, ndim,
required flags, shape, strides) and the loop table (meta). The trampoline compares each
operand's PyArrayObject fields with the signature (at the offsets of numpy's struct, the same
since numpy 1.7; checked at import), so outputs must also be writeable, and runs the kernel only
on an exact match: a caller can try it first and fall back to the general path. One trampoline
serves every kernel of up to MAX_OPERANDS operands; it is compiled and cached like a kernel.

The GIL stays held while the kernel runs, so callers use this only for small loops; large ones
keep the ctypes path, which lets other Python threads run. A wrong argument count returns NULL
without an exception (CPython raises SystemError). GRAPHC_NATIVE_CALL=0 in the environment turns
the builtins off (every plan then runs through ctypes), e.g. to compare the two paths.
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading

import numpy as np

from . import jit

METH_FASTCALL = 0x0080
MAX_OPERANDS = 16          # more operands (rare) run through ctypes; each adds a call case
# PyArrayObject fields (numpy/ndarraytypes.h, PyArrayObject_fields) on 64-bit CPython
OB_TYPE, DATA, NDIM, DIMS, STRIDES, DESCR, FLAGS = 8, 16, 24, 32, 40, 56, 64
WRITEABLE = 0x0400          # NPY_ARRAY_WRITEABLE
HEADER = 4                  # table: fn, n0, number of operands, index of meta; then operands


class _MethodDef(ctypes.Structure):
    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p),
                ("ml_flags", ctypes.c_int), ("ml_doc", ctypes.c_char_p)]


_lock = threading.Lock()
_method = None              # the _MethodDef (kept forever: every builtin points at it)
_prefetching = False        # prefetch() started its thread


def _reset_in_child():
    """After fork the prefetch thread is gone: the child gets a free lock and loads the
    trampoline itself when it needs it."""
    global _lock, _prefetching
    _lock = threading.Lock()
    _prefetching = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
_new_builtin = None


def _layout_ok() -> bool:
    """CPython with the plain object header (the reference count is the first word: the
    trampoline increments it), and ndarray fields where the trampoline reads them."""
    if sys.implementation.name != "cpython" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    try:
        def word(addr, off):
            return ctypes.c_int64.from_address(addr + off).value

        def int32(addr, off):
            return ctypes.c_int32.from_address(addr + off).value
        ro = np.arange(12.0).reshape(3, 4)[1:, ::2]
        ro.flags.writeable = False
        for a in (np.zeros(3, np.float32), ro, np.empty(())):
            p = id(a)
            if word(p, OB_TYPE) != id(np.ndarray) or word(p, DATA) != a.ctypes.data or \
                    int32(p, NDIM) != a.ndim or word(p, DESCR) != id(a.dtype) or \
                    int32(p, FLAGS) != a.flags.num or \
                    bool(int32(p, FLAGS) & WRITEABLE) != a.flags.writeable:
                return False
            dims, strides = word(p, DIMS), word(p, STRIDES)
            if a.ndim and ([word(dims, 8 * d) for d in range(a.ndim)] != list(a.shape) or
                           [word(strides, 8 * d) for d in range(a.ndim)] != list(a.strides)):
                return False
        return ctypes.c_ssize_t.from_address(id(a)).value == sys.getrefcount(a) - 1
    except Exception:           # pragma: no cover - exotic interpreters
        return False


AVAILABLE = os.environ.get("GRAPHC_NATIVE_CALL", "1") != "0" and _layout_ok()


def _trampoline_ir() -> str:
    """IR of the trampoline. ``self``'s data: [fn, n0, n_operands, meta index, then per
    operand: type, dtype, ndim, required flags, shape..., strides..., then meta]."""
    def at(name, base, index, typ="i64"):          # name = base[index] (i64 slots)
        return [f"  %{name}.p = getelementptr inbounds i64, ptr {base}, i64 {index}",
                f"  %{name} = load {typ}, ptr %{name}.p"]

    def field(name, obj, off, typ="i64"):          # name = *(typ *)((char *)obj + off)
        return [f"  %{name}.p = getelementptr inbounds i8, ptr {obj}, i64 {off}",
                f"  %{name} = load {typ}, ptr %{name}.p"]

    # optnone: the optimizer would take ~3x longer on this function than the machine-code
    # generator and gain a few instructions per call; it is not run at all (see _method_def)
    ir = [f"define ptr @{jit.PLACEHOLDER}(ptr %self, ptr %args, i64 %nargs) #0 {{",
          "entry:",
          *field("tab", "%self", DATA, "ptr"),
          *at("nops", "%tab", 2),
          "  %nok = icmp eq i64 %nargs, %nops",
          "  br i1 %nok, label %op.head, label %bad",
          "bad:",
          "  ret ptr null",
          "mismatch:",                              # return self, a new reference
          "  %src = load i64, ptr %self",
          "  %src1 = add i64 %src, 1",
          "  store i64 %src1, ptr %self",
          "  ret ptr %self",
          # for k in range(nargs): compare operand k with its slots from cur on
          "op.head:",
          "  %k = phi i64 [0, %entry], [%k1, %op.next]",
          f"  %cur = phi i64 [{HEADER}, %entry], [%cur1, %op.next]",
          "  %more = icmp slt i64 %k, %nargs",
          "  br i1 %more, label %op.type, label %run",
          "op.type:",
          "  %obj.p = getelementptr inbounds ptr, ptr %args, i64 %k",
          "  %obj = load ptr, ptr %obj.p",
          *field("ty", "%obj", OB_TYPE),
          *at("ty.x", "%tab", "%cur"),
          "  %ty.ok = icmp eq i64 %ty, %ty.x",
          "  br i1 %ty.ok, label %op.fields, label %mismatch",
          "op.fields:",                             # an ndarray: its fields can be read
          *field("de", "%obj", DESCR),
          "  %c1 = add i64 %cur, 1",
          *at("de.x", "%tab", "%c1"),
          *field("nd.32", "%obj", NDIM, "i32"),
          "  %nd = sext i32 %nd.32 to i64",
          "  %c2 = add i64 %cur, 2",
          *at("nd.x", "%tab", "%c2"),
          *field("fl.32", "%obj", FLAGS, "i32"),
          "  %fl = sext i32 %fl.32 to i64",
          "  %c3 = add i64 %cur, 3",
          *at("fl.x", "%tab", "%c3"),
          "  %fl.m = and i64 %fl, %fl.x",
          "  %de.ok = icmp eq i64 %de, %de.x",
          "  %nd.ok = icmp eq i64 %nd, %nd.x",
          "  %fl.ok = icmp eq i64 %fl.m, %fl.x",
          "  %h1 = and i1 %de.ok, %nd.ok",
          "  %h2 = and i1 %h1, %fl.ok",
          *field("dims", "%obj", DIMS, "ptr"),
          *field("strides", "%obj", STRIDES, "ptr"),
          "  %sh0 = add i64 %cur, 4",
          "  %st0 = add i64 %sh0, %nd",
          "  br i1 %h2, label %dim.head, label %mismatch",
          # for j in range(ndim): shape[j] and strides[j] as recorded
          "dim.head:",
          "  %j = phi i64 [0, %op.fields], [%j1, %dim.body]",
          "  %dmore = icmp slt i64 %j, %nd",
          "  br i1 %dmore, label %dim.body, label %op.next",
          "dim.body:",
          "  %sh.p = getelementptr inbounds i64, ptr %dims, i64 %j",
          "  %sh = load i64, ptr %sh.p",
          "  %shi = add i64 %sh0, %j",
          *at("sh.x", "%tab", "%shi"),
          "  %st.p = getelementptr inbounds i64, ptr %strides, i64 %j",
          "  %st = load i64, ptr %st.p",
          "  %sti = add i64 %st0, %j",
          *at("st.x", "%tab", "%sti"),
          "  %sh.ok = icmp eq i64 %sh, %sh.x",
          "  %st.ok = icmp eq i64 %st, %st.x",
          "  %d.ok = and i1 %sh.ok, %st.ok",
          "  %j1 = add i64 %j, 1",
          "  br i1 %d.ok, label %dim.head, label %mismatch",
          "op.next:",
          "  %k1 = add i64 %k, 1",
          "  %cur1 = add i64 %st0, %nd",
          "  br label %op.head",
          # every operand matches: run the kernel, return the last operand (a new reference)
          "run:",
          *at("fn", "%tab", 0, "ptr"),
          *at("n0", "%tab", 1),
          *at("mi", "%tab", 3),
          "  %meta.p = getelementptr inbounds i64, ptr %tab, i64 %mi",
          "  %meta = ptrtoint ptr %meta.p to i64"]
    for k in range(MAX_OPERANDS):
        ir += [f"  %a{k}.p = getelementptr inbounds ptr, ptr %args, i64 {k}"]
    cases = " ".join(f"i64 {n}, label %call{n}" for n in range(1, MAX_OPERANDS + 1))
    ir += [f"  switch i64 %nargs, label %bad [{cases}]"]
    for n in range(1, MAX_OPERANDS + 1):
        ir += [f"call{n}:"]
        ops = []
        for k in range(n):
            ir += [f"  %a{k}.{n} = load i64, ptr %a{k}.p"]
            ops.append(f", i64 %a{k}.{n}")
        ir += [f"  call void %fn(i64 0, i64 %n0, i64 0, i64 %meta{''.join(ops)})",
               "  br label %done"]
    ir += ["done:",
           "  %last.i = sub i64 %nargs, 1",
           "  %last.p = getelementptr inbounds ptr, ptr %args, i64 %last.i",
           "  %last = load ptr, ptr %last.p",
           "  %rc = load i64, ptr %last",
           "  %rc1 = add i64 %rc, 1",
           "  store i64 %rc1, ptr %last",
           "  ret ptr %last",
           "}",
           "attributes #0 = { noinline optnone }"]
    return "\n".join(ir) + "\n"


def _method_def() -> _MethodDef:
    global _method
    with _lock:
        if _method is None:
            text = _trampoline_ir()
            # optnone: the optimizer would skip it anyway, so it is not run (its setup costs
            # ~1-3 ms). The -O0 code generator would emit it ~3x faster (~2 vs ~7 ms) but
            # adds ~45 ns to every call (fast register allocation: 163 -> 208 ns, measured)
            key = jit.cache_key("pycall-trampoline", jit.NOOPT_FLAGS, text)
            addr = jit.load_function(key, lambda: text, title="pycall trampoline",
                                     optimize=False)
            _method = _MethodDef(b"graphc_kernel", addr, METH_FASTCALL, None)
        return _method


def _load_quietly():
    try:
        _method_def()
    except Exception:       # the caller's own _method_def() retries and raises
        pass


def prefetch() -> None:
    """Start loading (on a cold cache: compiling) the trampoline on a background thread.
    Kernel plans call this before compiling a kernel whose plan will get a builtin, and scan
    when it links a loop's step: LLVM releases the GIL, so the trampoline's ~7 ms of code
    generation overlap the IR building in Python; calls made before it is loaded run through
    ctypes (``loading``)."""
    global _prefetching
    if not AVAILABLE or _method is not None or _prefetching:
        return
    _prefetching = True
    threading.Thread(target=_load_quietly, name="graphc-pycall", daemon=True).start()


def loading() -> bool:
    """Is prefetch()'s thread still loading (on a cold cache: compiling) the trampoline?"""
    return _prefetching and _method is None


def builtin_call(fn_addr: int, n0: int, meta: np.ndarray, inputs, outputs, dtypes):
    """A builtin ``call(*inputs, *outputs)`` that runs ``fn(0, n0, 0, meta, *arrays)`` with
    the GIL held and returns the last array when the arrays have the signature of ``inputs``
    and ``outputs`` (class, dtype, shape, strides; outputs writeable); else it runs nothing
    and returns another object (its state array: test the result with ``is``). ``dtypes``:
    the numpy dtype of each operand. None when not available here, or for operands this
    cannot check."""
    global _new_builtin
    operands = [*inputs, *outputs]
    if not AVAILABLE or not outputs or len(operands) > MAX_OPERANDS:
        return None
    table = [fn_addr, n0, len(operands), 0]
    for k, (a, dt) in enumerate(zip(operands, dtypes)):
        # only numpy's own dtype singletons (they live as long as numpy): an equal dtype
        # object (e.g. one with metadata) could be freed and its address reused
        if a.__class__ is not np.ndarray or a.dtype is not dt or dt is not np.dtype(dt.name):
            return None
        flags = WRITEABLE if k >= len(inputs) else 0
        table += [id(np.ndarray), id(dt), a.ndim, flags, *a.shape, *a.strides]
    table[3] = len(table)
    if _new_builtin is None:
        new = ctypes.pythonapi.PyCFunction_NewEx
        new.restype = ctypes.py_object
        new.argtypes = [ctypes.c_void_p, ctypes.py_object, ctypes.c_void_p]
        _new_builtin = new
    # the builtin keeps ``state`` alive, and with it the signature and the loop table
    state = np.array(table + [int(x) for x in meta], np.int64)
    return _new_builtin(ctypes.addressof(_method_def()), state, None)
