"""The LLVM backend's runtime around the kernels: the persistent compile cache (objects,
linked .so files, corruption, concurrency, invalidation), the debug dump, the call overhead,
BLAS pointers and fork safety. The kernels themselves are tested in test_llvm_kernels.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from graphc.backend import llvm as gl
from graphc.backend.kernel_spec import KernelSpec
from graphc.backend.llvm import jit, pycall

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_llvm_kernels import AXPY, REPO  # noqa: E402


pytestmark = pytest.mark.usefixtures("hermetic_compiledir")   # see conftest.py


# ------------------------------------------------------------------------ cache, debug, overhead
def test_memo_and_cache_info():
    assert gl.compile_kernel(AXPY) is gl.compile_kernel(AXPY)
    x, y = np.arange(5.0), np.ones(5)       # variants compile at their first call
    gl.compile_kernel(AXPY)([x, y, np.array(1.0)], [np.empty(5), np.empty(5)])
    info = gl.cache_info()
    assert info["dir"] == jit.compiledir() and info["entries"] > 0 and info["bytes"] > 0


_CHILD = """
import json, sys, numpy as np
from graphc.backend.kernel_spec import KernelSpec
from graphc.backend import llvm as gl
from graphc.backend.kernel_spec import KernelSpec
spec = KernelSpec(("float32",), (("tanh", (("in", 0),), "float32"),
                  ("mul", (("eq", 0), ("const", 1.25, "float32")), "float32")), (("eq", 1),))
x = np.linspace(-3, 3, 101, dtype=np.float32)
out = np.empty_like(x)
gl.compile_kernel(spec)([x], [out])
ok = bool(np.allclose(out, np.tanh(x) * 1.25, rtol=1e-5))
print(json.dumps({"ok": ok, "llvm_imported": "llvmlite.binding" in sys.modules,
                  **gl.cache_info()}))
"""


def _child(cachedir, no_linker=False):
    # GRAPHC_NATIVE_CALL=0: no call trampoline (pycall.py), so the kernel is the only entry
    env = dict(os.environ, GRAPHC_COMPILEDIR=str(cachedir), GRAPHC_NATIVE_CALL="0",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if no_linker:                               # no `ld` on PATH: the object-only cache
        env["PATH"] = ""
    return subprocess.Popen([sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(proc):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _entry_is_valid(cachedir):
    (entry,) = [p for p in cachedir.iterdir() if p.suffix == ".o"]
    old = jit._compiledir_override
    try:
        gl.set_compiledir(cachedir)
        return jit._read_entry(entry.stem) is not None
    finally:
        gl.set_compiledir(old)

def _so_is_valid(cachedir):
    (lib,) = [p for p in cachedir.iterdir() if p.suffix == ".so"]
    return jit._unpack(jit._SO_MAGIC, lib.read_bytes(), trailer=True) is not None



def test_persistent_cache_across_processes(tmp_path):
    first = _result(_child(tmp_path))
    assert first["ok"] and first["compiled"] == 1 and first["entries"] == 1
    if jit._linker() is not None:                   # linked by exit, for the next process
        assert _so_is_valid(tmp_path)
    assert first["ir_built"] == 1                   # the one variant it runs
    second = _result(_child(tmp_path))
    assert second["ok"] and second["compiled"] == 0 and second["disk_hits"] == 1
    assert second["ir_built"] == 0                  # a warm hit never runs the IR builder
    if jit._linker() is not None:                   # ... nor imports LLVM
        assert second["so_hits"] == 1 and not second["llvm_imported"]
    # Truncated entries are detected, rebuilt and rewritten whole.
    (entry,) = [p for p in tmp_path.iterdir() if p.suffix == ".o"]
    for p in tmp_path.iterdir():
        if p.suffix in (".o", ".so"):
            p.write_bytes(p.read_bytes()[:100])
    assert not _entry_is_valid(tmp_path)
    third = _result(_child(tmp_path))
    assert third["ok"] and third["rebuilt_corrupt"] >= 1 and third["compiled"] == 1
    assert _entry_is_valid(tmp_path)
    if jit._linker() is not None:
        assert _so_is_valid(tmp_path)
    # Two processes racing on one key both succeed and leave one valid entry, no temporaries.
    for p in tmp_path.iterdir():
        if p.suffix in (".o", ".so"):
            p.unlink()
    racers = [_child(tmp_path), _child(tmp_path)]
    assert all(_result(p)["ok"] for p in racers)
    assert _entry_is_valid(tmp_path)
    if jit._linker() is not None:
        assert _so_is_valid(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".part" or p.name.startswith(".tmp")]


@pytest.mark.skipif(jit._linker() is None, reason="no system linker")
def test_shared_object_fallbacks(tmp_path):
    """A damaged linked library is never loaded: the object entry is used (through LLVM) and
    the library relinked. Without a linker the object-only cache works as before."""
    first = _result(_child(tmp_path))
    assert first["ok"] and _so_is_valid(tmp_path)
    (lib,) = [p for p in tmp_path.iterdir() if p.suffix == ".so"]
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF                    # flip one byte inside the ELF file
    lib.write_bytes(bytes(data))
    second = _result(_child(tmp_path))
    assert second["ok"] and second["rebuilt_corrupt"] == 1 and second["so_hits"] == 0
    assert second["compiled"] == 0 and second["disk_hits"] == 1 and second["llvm_imported"]
    assert _so_is_valid(tmp_path)                   # relinked from the object entry
    assert _result(_child(tmp_path))["so_hits"] == 1
    # the CPU name/features remembered for keys: a damaged record is asked of LLVM again
    (host,) = tmp_path.glob("host-*.json")
    good = host.read_text()
    host.write_text(good[:10])
    again = _result(_child(tmp_path))
    assert again["ok"] and again["so_hits"] == 1 and again["llvm_imported"]
    assert host.read_text() == good

    other = tmp_path / "nold"
    plain = [_result(_child(other, no_linker=True)) for _ in range(2)]
    assert all(r["ok"] for r in plain) and not list(other.glob("*.so"))
    assert plain[0]["compiled"] == 1 and plain[1]["compiled"] == 0
    assert plain[1]["disk_hits"] == 1 and plain[1]["so_hits"] == 0
    assert not [p for p in other.iterdir() if p.suffix == ".part" or p.name.startswith(".tmp")]


def test_codegen_change_invalidates(tmp_path, monkeypatch):
    """Keys hash the codegen sources: an edited codegen (simulated by another source hash)
    misses the cache, builds IR and compiles, instead of loading stale machine code."""
    import hashlib
    import importlib
    from graphc.backend.llvm import codegen
    here = os.path.dirname(jit.__file__)
    h = hashlib.sha256()
    for name in jit.CODEGEN_SOURCES:
        with open(os.path.join(here, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    assert jit.codegen_version() == h.hexdigest()
    # every module of this package that codegen.py builds on, directly or not, is hashed
    pkg, seen, todo = "graphc.backend.llvm.", set(), [codegen]
    while todo:
        mod = todo.pop()
        assert os.path.basename(mod.__file__) in jit.CODEGEN_SOURCES, mod.__name__
        for v in vars(mod).values():
            name = v.__name__ if hasattr(v, "__file__") else getattr(v, "__module__", "")
            if isinstance(name, str) and name.startswith(pkg) and name not in seen:
                seen.add(name)
                todo.append(importlib.import_module(name))
    assert {pkg + "scalar", pkg + "vmath"} <= seen

    monkeypatch.setattr(jit, "_compiledir_override", str(tmp_path))
    from graphc.backend.llvm import kernel as kernel_module
    monkeypatch.setattr(pycall, "AVAILABLE", False)     # count the kernel's compiles only
    checks, check = [], kernel_module.check_renders
    monkeypatch.setattr(kernel_module, "check_renders", lambda s: checks.append(s) or check(s))
    spec = KernelSpec(("float64",), (("mul", (("in", 0), ("const", 3.5, "float64")), "float64"),),
                      (("eq", 0),))
    x, out = np.arange(4.0), np.empty(4)

    def fresh_run():                        # a new Kernel, as in a new process
        before = dict(jit.stats)
        gl.Kernel(spec)([x], [out])
        assert out.tolist() == (x * 3.5).tolist()
        return {k: jit.stats[k] - before[k] for k in ("compiled", "disk_hits", "ir_built")}
    assert fresh_run() == {"compiled": 1, "disk_hits": 0, "ir_built": 1}
    # same codegen: the loaded code is reused, no IR is built and the render check is
    # remembered (disk hits across processes: test_persistent_cache_across_processes)
    assert fresh_run() == {"compiled": 0, "disk_hits": 0, "ir_built": 0}
    assert len(checks) == 1
    monkeypatch.setattr(jit, "_codegen_version", "0" * 64)
    assert fresh_run() == {"compiled": 1, "disk_hits": 0, "ir_built": 1}
    assert len(checks) == 2


def test_clear_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(jit, "_compiledir_override", None)
    monkeypatch.setenv("GRAPHC_COMPILEDIR", str(tmp_path / "c"))
    monkeypatch.setattr(pycall, "AVAILABLE", False)     # no call trampoline entry (pycall.py)
    monkeypatch.setattr(jit, "_pending", [])            # link this test's object only
    assert gl.cache_info()["dir"] == str(tmp_path / "c")
    spec = KernelSpec(("int32",), (("add", (("in", 0), ("const", 12345, "int32")), "int32"),),
                      (("eq", 0),))
    out = np.empty(3, np.int32)
    gl.compile_kernel(spec)([np.arange(3, dtype=np.int32)], [out])
    assert out.tolist() == [12345, 12346, 12347]
    assert gl.cache_info()["entries"] == 1
    if jit._linker() is not None:
        jit.link_pending()
        assert gl.cache_info()["shared"] == 1
    gl.clear_cache()
    info = gl.cache_info()
    assert info["entries"] == 0 and info["shared"] == 0
    assert os.listdir(tmp_path / "c") == []


def test_debug_prints_ir_and_assembly(capfd):
    spec = KernelSpec(("float32",), (("sqr", (("in", 0),), "float32"),), (("eq", 0),))
    k = gl.compile_kernel(spec, debug=True)
    out = np.empty(4, np.float32)
    k([np.arange(4, dtype=np.float32)], [out])
    err = capfd.readouterr().err
    assert "define void" in err and "graphc assembly" in err and "vmulps" in err
    assert out.tolist() == [0, 1, 4, 9]


_PREFETCH_CHILD = """
import json, threading, numpy as np
from graphc.backend.kernel_spec import KernelSpec
from graphc.backend import llvm as gl
from graphc.backend.kernel_spec import KernelSpec
from graphc.backend.llvm import jit, pycall
started, compiled = [], []
real_thread, real_load = threading.Thread, jit.load_function
def thread(*args, **kw):
    started.append(kw.get("name"))
    return real_thread(*args, **kw)
def load(key, make_ir, *args, **kw):
    compiled.append([key, kw.get("optimize", True)])
    return real_load(key, make_ir, *args, **kw)
pycall.threading.Thread, jit.load_function = thread, load
spec = KernelSpec(("float64",), (("mul", (("in", 0), ("const", 2.5, "float64")), "float64"),),
                  (("eq", 0),))
x, out = np.arange(5.0), np.empty(5)
k = gl.Kernel(spec)
k([x], [out])
(plan,) = k._plans.values()
k([np.arange(7.0)], [np.empty(7)])          # another small plan: no second thread
pycall._method_def()                        # the trampoline loaded: the next call makes
k([x], [out])                               # the plan's builtin (calls meanwhile: ctypes)
print(json.dumps({"ok": out.tolist() == (x * 2.5).tolist(), "started": started,
                  "native": plan.native is not None and plan.native(x, out) is out,
                  "compiled": compiled, "available": pycall.AVAILABLE and gl.kernel.PYOBJ,
                  "key": jit.cache_key("pycall-trampoline", jit.NOOPT_FLAGS,
                                       pycall._trampoline_ir())}))
"""


def test_trampoline_is_prefetched_and_unoptimized(tmp_path):
    """The first small plan of a process starts loading the call trampoline (pycall.py) on a
    thread before its kernel compiles, and runs through ctypes until it is loaded; the
    trampoline is compiled without the optimizer, under a key that says so. (A fresh
    process: the trampoline is made once per process.)"""
    env = dict(os.environ, GRAPHC_COMPILEDIR=str(tmp_path),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _PREFETCH_CHILD], env=env, text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["ok"]
    if not r["available"]:
        pytest.skip("no native call on this interpreter")
    assert r["started"] == ["graphc-pycall"] and r["native"]
    assert [r["key"], False] in r["compiled"]
    assert sum(1 for key, optimize in r["compiled"] if not optimize) == 1


_WARM_UP_CHILD = """
import json, os, threading
import graphc
from graphc.backend.llvm import jit
names = [t.name for t in threading.enumerate()]
for t in threading.enumerate():
    if t.name == "graphc-llvm-init":
        t.join()
print(json.dumps({"names": names, "llvm": jit.llvm is not None,
                  "host": sorted(n for n in os.listdir(jit.compiledir()) if n.startswith("host-"))}))
"""


def test_a_cold_compile_dir_loads_llvm_on_a_thread_at_import(tmp_path):
    """``import graphc`` on a cold compile dir starts loading LLVM on a thread (jit.warm_up);
    once the dir knows the machine (host-*.json), a process does not load LLVM at all."""
    env = dict(os.environ, GRAPHC_COMPILEDIR=str(tmp_path),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _WARM_UP_CHILD], env=env, text=True,
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert "graphc-llvm-init" in cold["names"] and cold["llvm"] and len(cold["host"]) == 1
    assert "graphc-llvm-init" not in warm["names"] and not warm["llvm"]
    assert warm["host"] == cold["host"]


def test_call_overhead():
    spec = KernelSpec(("float32", "float32"), (("add", (("in", 0), ("in", 1)), "float32"),),
                      (("eq", 0),))
    k = gl.compile_kernel(spec)
    x = np.ones(16, np.float32)
    out = np.empty_like(x)
    args = ([x, x], [out])
    k(*args)
    best = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(2000):
            k(*args)
        best.append((time.perf_counter() - t) / 2000)
    us = min(best) * 1e6
    print(f"\nKernel.__call__ overhead, 16 floats: {us:.2f} us")
    assert us < 50                                     # loose: shared CI machines


# ------------------------------------------------------------------------ BLAS
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_against_numpy(dtype):
    rng = np.random.default_rng(0)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    m, k, n = 7, 5, 9
    views = {
        "C": lambda a: a,
        "F": np.asfortranarray,
        "step": lambda a: np.repeat(a, 2, axis=0)[::2],
        "reversed": lambda a: a[::-1, ::-1].copy()[::-1, ::-1],
        "neg": lambda a: np.ascontiguousarray(a[::-1])[::-1],
    }
    for ta in (False, True):
        for tb in (False, True):
            for va, vb in [("C", "C"), ("F", "step"), ("step", "F"), ("neg", "reversed")]:
                A0 = rng.normal(size=(k, m) if ta else (m, k)).astype(dtype)
                B0 = rng.normal(size=(n, k) if tb else (k, n)).astype(dtype)
                A, B = views[va](A0), views[vb](B0)
                C = rng.normal(size=(m, n)).astype(dtype)
                want = 1.5 * ((A0.T if ta else A0) @ (B0.T if tb else B0)) - 0.5 * C
                gl.gemm(ta, tb, 1.5, A, B, -0.5, C)
                np.testing.assert_allclose(C, want, rtol=rtol, atol=rtol,
                                           err_msg=f"{ta} {tb} {va} {vb}")
    C = np.full((3, 2), np.nan, dtype)[:, :]                  # beta == 0 ignores C
    gl.gemm(False, False, 1.0, np.ones((3, 4), dtype), np.ones((4, 2), dtype), 0.0, C)
    assert (C == 4).all()
    Ct = np.zeros((2, 3), dtype).T                             # non-row-major C: via a copy
    gl.gemm(False, False, 1.0, np.ones((3, 4), dtype), np.ones((4, 2), dtype), 0.0, Ct)
    assert (Ct == 4).all()


def test_blas_pointer():
    for name in ("sgemm", "dgemm", "sgemv", "dgemv", "sger", "dger", "saxpy", "daxpy"):
        assert isinstance(gl.blas_pointer(name), int) and gl.blas_pointer(name) > 0
    with pytest.raises(ValueError):
        gl.blas_pointer("no_such_routine")


def test_blas_pointer_skips_scipy_linalg_import():
    """The BLAS capsules come without importing scipy.linalg (~150 ms of a first call); a later
    import of scipy.linalg shares the same extension module."""
    code = ("import sys\nfrom graphc.backend.llvm import blas\n"
            "before = 'scipy.linalg' in sys.modules\n"
            "a = blas.blas_pointer('sgemm')\nskipped = ('scipy.linalg' in sys.modules) == before\n"
            "import scipy.linalg.cython_blas as cb\n"
            "print(skipped, cb is blas._cython_blas(), a == blas._get_pointer("
            "cb.__pyx_capi__['sgemm'], blas._get_name(cb.__pyx_capi__['sgemm'])))")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_a_compile_holds_the_locks():
    """A child forked while another thread compiles (pycall's background prefetch holds
    jit's and pycall's locks) starts with free locks instead of waiting forever."""
    import graphc as theano
    import graphc.tensor as T
    from graphc.backend.llvm import jit, pycall
    x = T.fvector("x")
    jit._lock.acquire()
    pycall._lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:        # child: compile and run a kernel, report through the exit code
            try:
                f = theano.function([x], T.tanh(x) * 2 + 1)
                r = f(np.arange(10, dtype="float32"))
                ok = np.allclose(r, np.tanh(np.arange(10)) * 2 + 1, atol=1e-6)
            finally:
                os._exit(0 if "ok" in locals() and ok else 3)
    finally:
        jit._lock.release()
        pycall._lock.release()
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on a lock held at fork time")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0


_FORK_AFTER_IMPORT_CHILD = """
import os, sys, threading
import numpy as np
import graphc
import graphc.tensor as T
assert any(t.name == "graphc-llvm-init" for t in threading.enumerate())   # cold dir
pid = os.fork()                     # at once: warm_up's thread is still loading LLVM
if pid == 0:
    x = T.fvector("x")
    f = graphc.function([x], T.tanh(x) * 3)     # compiles: needs llvmlite in the child
    ok = np.allclose(f(np.ones(5, np.float32)), np.tanh(1.0) * 3)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_llvm_loads_can_compile(tmp_path):
    """warm_up's thread is let finish before a fork: a child forked right after ``import
    graphc`` on a cold dir compiles (a half-imported llvmlite would hang or fail it)."""
    env = dict(os.environ, GRAPHC_COMPILEDIR=str(tmp_path),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _FORK_AFTER_IMPORT_CHILD], env=env, text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0"
