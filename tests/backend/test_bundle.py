"""One library per process's kernels (graphc/backend/llvm/bundle.py): a process that loads a
cached graph loads the kernels an earlier process used for it with one dlopen, computes the
same numbers, and a missing or damaged bundle only sends it back to the kernels' own
libraries."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from graphc.backend.llvm import bundle, jit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_llvm_kernels import REPO  # noqa: E402

_CHILD = """
import json, sys, numpy as np
import graphc, graphc.tensor as T
from graphc.backend.llvm import bundle, jit
if sys.argv[1] == "max0":
    bundle.MAX_KEYS = 0
from graphc.link import hugemem
x = T.matrix("x", dtype="float32")
y = T.matrix("y", dtype="float32")
f = graphc.function([x, y], [T.tanh(x * y).sum(axis=1), T.exp(x) + y])
a = np.linspace(-2, 2, 600 * 1000, dtype=np.float32).reshape(600, 1000)
b = a[::-1].copy()
s, e = f(a, b)
ok = np.allclose(s, np.tanh(a * b).sum(axis=1), rtol=1e-4, atol=1e-3) and \\
    np.allclose(e, np.exp(a) + b, rtol=1e-5)
print(json.dumps({"ok": bool(ok), "used": len(jit.used), **bundle.stats,
                  "ahead": hugemem.stats["ahead"], "needed": hugemem.needed,
                  **{n: jit.stats[n] for n in ("compiled", "so_hits", "memory_hits")}}))
"""


def _run(cachedir, arg="go"):
    env = dict(os.environ, GRAPHC_FLAGS=f"compiledir={cachedir},floatX=float32",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _CHILD, arg], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _bundle_files(d):
    return sorted(p.name for p in d.iterdir() if bundle.SUFFIX in p.name)


def test_a_warm_process_loads_its_kernels_from_one_library(tmp_path):
    cold = _run(tmp_path)
    assert cold["ok"] and cold["compiled"] >= 2 and cold["bundles_loaded"] == 0
    files = _bundle_files(tmp_path)
    stamps = {n: (tmp_path / n).stat().st_mtime_ns for n in files}
    libs = [n for n in files if n.endswith(".so")]
    assert len(libs) == 1 and len(files) > 1          # one library, an index per graph
    index = json.loads((tmp_path / [n for n in files if n != libs[0]][0]).read_text())
    assert len(index["keys"]) == cold["used"]
    assert index["blocks"] == cold["needed"] and cold["needed"]    # the 2.3 MB output
    warm = _run(tmp_path)
    assert warm["ok"] and warm["compiled"] == 0 and warm["so_hits"] == 0
    assert warm["bundles_loaded"] == 1 and warm["kernels_from_bundles"] == warm["used"]
    assert warm["ahead"] == len(cold["needed"])         # its memory mapped ahead
    assert _bundle_files(tmp_path) == files
    # its graphs point to that library already: the warm process rewrote nothing
    assert all((tmp_path / n).stat().st_mtime_ns == stamps[n] for n in files)


def test_a_damaged_or_missing_bundle_leaves_the_kernels_own_libraries(tmp_path):
    _run(tmp_path)
    lib = next(p for p in tmp_path.iterdir() if p.name.endswith(bundle.SUFFIX + ".so"))
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    damaged = _run(tmp_path)
    assert damaged["ok"] and damaged["compiled"] == 0 and damaged["bundles_loaded"] == 0
    assert damaged["so_hits"] == damaged["used"]
    assert _run(tmp_path)["bundles_loaded"] == 1      # linked again at the damaged one's exit
    lib.unlink()                                      # the same bundle: linked again at exit
    again = _run(tmp_path)
    assert again["ok"] and again["bundles_loaded"] == 0
    assert lib.exists()
    assert _run(tmp_path)["bundles_loaded"] == 1


def test_a_process_with_too_many_kernels_writes_no_bundle(tmp_path):
    assert _run(tmp_path, "max0")["ok"]
    assert _bundle_files(tmp_path) == []


def test_clear_cache_removes_bundles(tmp_path):
    _run(tmp_path)
    assert _bundle_files(tmp_path)
    old = jit._compiledir_override
    jit.set_compiledir(str(tmp_path))
    try:
        jit.clear_cache()
    finally:
        jit._compiledir_override = old
    assert _bundle_files(tmp_path) == []
