"""Kernel libraries loaded ahead, on a background thread, in a warm process.

A warm process loads each kernel's linked library (jit._load_shared: read it, check its
sha256, dlopen, look up the entry point) when a call plan first needs it: ~0.3 ms each, 15-18
of them inside the first call of the LSTM and LeNet training steps. Which libraries a
kernel will want is known only from the shapes it meets, but a process that builds the same
graph as an earlier one meets the same shapes, so each kernel spec keeps the list of the
cache keys its earlier processes used (``remember``), and a new Kernel has them loaded on a
background thread as soon as it is made (``load_ahead``), while its caller goes on linking
and running. Reading, hashing and dlopen release the GIL; only the symbol lookup holds it.

    <compiledir>/<group>.uses    one cache key per line, appended (a short line: appends
                                 from several processes do not interleave); duplicates and
                                 damaged lines are ignored

A key not loaded by the time it is needed is loaded by jit.load_function as before (if
both load it, dlopen hands back the same library); a missing or damaged library is left to
that path too, which rebuilds it. Nothing here changes which code runs.
"""
from __future__ import annotations

import os
import queue
import threading

from . import jit

SUFFIX = ".uses"
_known: dict = {}               # (dir, group) -> keys listed in its file (read or written)
_worker = {"queue": None}
_start_lock = threading.Lock()
stats = {"loaded_ahead": 0}


def _reset_in_child():
    """A forked child has no loader thread (and maybe a lock held by the parent's)."""
    global _start_lock
    _start_lock = threading.Lock()
    _worker["queue"] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


def _keys(d: str, group: str) -> set:
    keys = _known.get((d, group))
    if keys is None:
        found = set()
        try:
            with open(os.path.join(d, group + SUFFIX)) as f:
                found = {k for k in (line.strip() for line in f) if len(k) == 64}
        except (OSError, UnicodeDecodeError):
            pass
        keys = _known.setdefault((d, group), found)
    return keys


def remember(group: str, key: str) -> None:
    """Note that the code cached under ``key`` was used by ``group`` (a kernel spec's key):
    a later process's ``load_ahead(group)`` loads it. A failed write only costs time later."""
    d = jit.compiledir()
    keys = _keys(d, group)
    if key in keys:
        return
    keys.add(key)
    try:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, group + SUFFIX), "a") as f:
            f.write(key + "\n")
    except OSError:
        pass


def load_ahead(group: str) -> None:
    """Have the linked libraries remembered for ``group`` loaded on the loader thread (its
    list is read here, ~30 us: a process whose kernels have none starts no thread)."""
    keys = [k for k in sorted(_keys(jit.compiledir(), group))
            if jit.entry_name(k) not in jit._loaded]
    if not keys:
        return
    q = _worker["queue"]
    if q is None:
        with _start_lock:
            q = _worker["queue"]
            if q is None:
                q = queue.SimpleQueue()
                threading.Thread(target=_load_loop, args=(q,), name="graphc-load-ahead",
                                 daemon=True).start()
                _worker["queue"] = q
    q.put(keys)


def _load_loop(q) -> None:
    while True:
        for key in q.get():
            name = jit.entry_name(key)
            if name in jit._loaded:
                continue
            try:
                addr = jit._load_shared(key, name, count=False)
            except Exception:           # load_function meets (and reports) it later
                addr = None
            if addr is not None:
                with jit._lock:         # load_function holds it from lookup to insert
                    if name not in jit._loaded:
                        jit._loaded[name] = addr
                        for k in ("disk_hits", "so_hits"):     # as load_function counts
                            jit.stats[k] += 1
                        stats["loaded_ahead"] += 1


def forget() -> None:
    """Drop what this process knows of the lists (jit.clear_cache removed the files)."""
    _known.clear()
