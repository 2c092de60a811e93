"""All the kernels of a process in one linked library, and the memory its calls needed: the
next process that loads the same graph has both at hand at once.

A warm process used to load each kernel's own library (``<key>.so``) when a call plan first
needed it: the LSTM training step loads 19, the LeNet step about as many, most of them
inside the first call, each a file read, a hash, a dlopen and a symbol lookup (0.3-5 ms
each on this project's VM, 14 ms in all for the LSTM step, measured with the load-ahead
thread of ahead.py running). Here, at exit, a process that compiled or loaded graphs through
the graph cache (graphc/compile/graph_cache.py) links the object code of every kernel it
used into one library, and notes next to each of those graphs which library that is. A later
process that loads one of those graphs from the cache loads that library with one dlopen
(35 KB for the LSTM step: 0.4 ms) and every kernel of it is then at hand.

The note also lists the large memory blocks the process's calls needed
(graphc/link/hugemem.py): the later process has them mapped and faulted in on a thread of
its own while it links the graph and starts its first call (the LSTM step's ~40 MiB, ~20 ms
of page faults on this project's VMs; bench worker, warm first call: median 0.111 s against
0.127 s without, 10 interleaved pairs).

    <compiledir>/<graph key>.bundle     JSON {"lib": <bundle key>, "keys": [kernel keys],
                                              "blocks": [block sizes in bytes]}
    <compiledir>/<bundle key>.bundle.so the kernels' objects linked by ``ld -shared``, with
                                        the trailer of a kernel's .so (checked before dlopen)

    bundle key = sha256 of the sorted kernel keys (each of those already names its code)

Only processes that used at most MAX_KEYS kernels write a bundle (a test suite uses
thousands); a process whose graphs already point to a bundle of exactly its kernels and
blocks writes nothing. Index and library are written atomically (temporary file + rename); a missing,
damaged or unloadable library, or one that lacks a kernel, is ignored: each kernel is then
loaded on its own as before, and the library is linked again at exit. Nothing here changes
which code runs: a key names its code, whichever library it comes from.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile

from graphc.link import hugemem

from . import jit

SUFFIX = ".bundle"
MAX_KEYS = 256
stats = {"bundles_loaded": 0, "kernels_from_bundles": 0}
_graphs: dict = {}              # graph keys this process optimized or loaded, in order
_loaded_libs: set = set()       # bundle keys loaded in this process
_broken: set = set()            # bundle keys whose library did not load here


def _index_path(graph_key: str) -> str:
    return os.path.join(jit.compiledir(), graph_key + SUFFIX)


def _lib_path(bundle_key: str) -> str:
    return os.path.join(jit.compiledir(), bundle_key + SUFFIX + ".so")


def _read_index(graph_key: str):
    """(bundle key, kernel keys, block sizes) noted for ``graph_key``, or None."""
    try:
        with open(_index_path(graph_key)) as f:
            info = json.load(f)
        lib, keys, blocks = info["lib"], info["keys"], info.get("blocks", [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(lib, str) or not isinstance(keys, list) or \
            not all(isinstance(k, str) and len(k) == 64 for k in keys) or \
            not isinstance(blocks, list) or not all(isinstance(b, int) for b in blocks):
        return None
    return lib, keys, blocks


def note_graph(graph_key: str, hit: bool) -> None:
    """graph_cache: ``graph_key`` was stored (hit False) or loaded (hit True) by this
    process; a loaded one has its bundle, if any, loaded now."""
    _graphs[graph_key] = None
    if not hit:
        return
    found = _read_index(graph_key)
    if found is None or found[0] in _loaded_libs:
        return
    lib, keys, blocks = found
    hugemem.map_ahead(blocks)
    names = [jit.entry_name(k) for k in keys]
    missing = [n for n in names if n not in jit._loaded]
    if missing:
        addrs = jit.load_library(_lib_path(lib), missing, count=False)
        if addrs is None:               # linked again at exit if it is this process's
            _broken.add(lib)
            return
        with jit._lock:
            for n, a in zip(missing, addrs):
                jit._loaded.setdefault(n, a)
        stats["bundles_loaded"] += 1
        stats["kernels_from_bundles"] += len(missing)
    _loaded_libs.add(lib)


def write_at_exit() -> None:
    """Link this process's kernels into one library and point its graphs at it (see the
    module docstring); called once, at interpreter exit, after the compile queue drained."""
    keys = sorted(jit.used)
    if not _graphs or not keys or len(keys) > MAX_KEYS or jit._linker() is None:
        return
    lib = hashlib.sha256(" ".join(keys).encode()).hexdigest()
    blocks = list(hugemem.needed)           # in the order this process first needed them
    todo = [g for g in _graphs if _read_index(g) != (lib, keys, blocks)]
    usable = lib not in _broken and os.path.exists(_lib_path(lib))
    if not todo and usable:
        return
    if not usable and not _link(lib, keys):
        return
    text = json.dumps({"lib": lib, "keys": keys, "blocks": blocks}).encode()
    for g in todo:
        jit._atomic_write(_index_path(g), text)


def _link(lib: str, keys) -> bool:
    """Link the object entries of ``keys`` into the library of bundle ``lib``."""
    d = jit.compiledir()
    try:
        work = tempfile.mkdtemp(prefix=".tmp-link-", dir=d)
    except OSError:
        return False
    try:
        objs = []
        for i, key in enumerate(keys):
            payload = jit._read_entry(key)
            if payload is None:             # evicted or damaged: no bundle this time
                return False
            objs.append(os.path.join(work, f"k{i}.o"))
            with open(objs[-1], "wb") as f:
                f.write(payload)
        out = os.path.join(work, "bundle.so")
        done = subprocess.run([jit._linker(), "-shared", "-o", out] + objs,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=60)
        if done.returncode != 0:
            return False
        with open(out, "rb") as f:
            elf = f.read()
        jit._atomic_write(_lib_path(lib), elf, jit._pack(jit._SO_MAGIC, elf))
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(work, ignore_errors=True)


def forget() -> None:
    """jit.clear_cache removed the files: the graphs of this process have no bundle."""
    _graphs.clear()
