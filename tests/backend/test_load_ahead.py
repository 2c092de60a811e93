"""Kernel libraries loaded ahead on a background thread (graphc/backend/llvm/ahead.py): a
process that makes a kernel an earlier process used loads that kernel's libraries before its
first call, computes the same numbers, and a damaged library is still rebuilt (counted once)
by the ordinary path; a process with nothing remembered starts no loader thread."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from graphc.backend.llvm import ahead, jit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_llvm_kernels import REPO  # noqa: E402

_CHILD = """
import json, sys, threading, time, numpy as np
from graphc.backend.kernel_spec import KernelSpec
from graphc.backend import llvm as gl
from graphc.backend.llvm import ahead, jit
names = []
real_thread = threading.Thread
def thread(*args, **kw):
    names.append(kw.get("name"))
    return real_thread(*args, **kw)
threading.Thread = thread
spec = KernelSpec(("float32", "float32"), (("mul", (("in", 0), ("in", 1)), "float32"),
                  ("exp", (("eq", 0),), "float32")), (("eq", 1),))
k = gl.compile_kernel(spec)
deadline = time.time() + 20                 # the loader thread's work, if it has any
while sys.argv[1] == "wait" and ahead.stats["loaded_ahead"] == 0 and time.time() < deadline:
    time.sleep(0.01)
loaded_before_call = ahead.stats["loaded_ahead"]
x = np.linspace(-2, 2, 64, dtype=np.float32).reshape(8, 8)
out = np.empty_like(x)
k([x, x.T], [out])
print(json.dumps({"ok": bool(np.allclose(out, np.exp(x * x.T), rtol=1e-5)),
                  "ahead": loaded_before_call, "loader": "graphc-load-ahead" in names,
                  **{n: jit.stats[n] for n in ("compiled", "so_hits", "rebuilt_corrupt")}}))
"""


def _run(cachedir, wait):
    env = dict(os.environ, GRAPHC_COMPILEDIR=str(cachedir), GRAPHC_NATIVE_CALL="0",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _CHILD, "wait" if wait else "go"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_later_process_loads_the_remembered_variant_ahead(tmp_path):
    first = _run(tmp_path, wait=False)
    assert first["ok"] and first["compiled"] == 1 and not first["loader"]
    assert list(tmp_path.glob("*" + ahead.SUFFIX))      # the variant it used, remembered
    second = _run(tmp_path, wait=True)
    assert second["ok"] and second["loader"] and second["ahead"] == 1
    assert second["compiled"] == 0 and second["so_hits"] == 1
    assert second["rebuilt_corrupt"] == 0


def test_a_damaged_library_is_rebuilt_by_the_ordinary_path(tmp_path):
    _run(tmp_path, wait=False)
    (so,) = tmp_path.glob("*.so")
    blob = bytearray(so.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    so.write_bytes(bytes(blob))
    again = _run(tmp_path, wait=False)
    assert again["ok"] and again["ahead"] == 0 and again["rebuilt_corrupt"] == 1
    assert again["so_hits"] == 0 and again["compiled"] == 0   # from the object entry


def test_remembered_keys_are_listed_once_and_cleared(tmp_path):
    old = jit._compiledir_override
    jit.set_compiledir(tmp_path)
    try:
        ahead.forget()
        for _ in range(3):
            ahead.remember("g" * 64, "a" * 64)
        ahead.remember("g" * 64, "b" * 64)
        path = tmp_path / ("g" * 64 + ahead.SUFFIX)
        assert path.read_text().split() == ["a" * 64, "b" * 64]
        ahead.forget()                      # another process: reads the list back
        assert ahead._keys(str(tmp_path), "g" * 64) == {"a" * 64, "b" * 64}
        jit.clear_cache()
        assert not path.exists()
    finally:
        jit.set_compiledir(old)
        ahead.forget()

