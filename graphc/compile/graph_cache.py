"""A persistent cache of optimized graphs: a warm process skips the rewrite passes.

``function()`` rewrites the graph it is given (graphc/rewriting/pipeline.py) before linking.
The result depends only on that graph, the mode, the flags and graphc's own code, so it is
stored in the compile dir and a later process that builds the same graph loads it instead
of running the passes again (measured on the benchmark workloads, warm caches: 12-25 ms
less CPU to build the MLP, LeNet and LSTM steps, about a third to a half of their build).

    key = sha256(graphc's source text, Python/numpy versions, every flag, the mode,
                 the trace function() records on new nodes, the types of the inputs,
                 pickle of the graph's outputs with each input replaced by its position)
    <compiledir>/<key>.graph = header (magic, length, sha256 of the payload) + pickle of
                               the optimized FunctionGraph, inputs again by position

The inputs (explicit inputs and shared variables) are never stored: they are the calling
process's own objects, put back by position, so updates reach the user's shared variables.
A graph that reaches a shared variable any other way, holds something that cannot be
pickled, or is compiled with ``optimizer_verbose`` / debug checks (whose point is to run
the passes) is not cached. Everything else in the key is content, not identity: pickling the
same graph in another process gives the same bytes, and a graph that pickles differently
(say, a set whose order follows the per-process string hash) only misses, it is never
mistaken for another. Entries are written atomically (temporary file + rename); an entry
whose header or hash does not match, or that does not load, is rebuilt. ``graph_cache=False``
(GRAPHC_FLAGS) turns the cache off.

For op authors: an op is pickled with its ``__dict__``. State that must not travel (compiled
functions, values of ``hash()``, which differ between processes) is left out by
``__getstate__`` and rebuilt by ``__setstate__`` (see Scan, IfElse); an op that keeps a
``_hash`` without them makes its graphs uncacheable, and one that cannot be pickled too.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import struct
import sys
import threading

import numpy as np

from graphc.compile.sharedvalue import SharedVariable
from graphc.graph.basic import Variable
from graphc.configdefaults import config

_MAGIC = b"GRAPHCG1"
_HEADER = struct.Struct("<8sQ32s")          # magic, payload length, sha256(payload)
MAX_BYTES = 64 << 20                        # larger graphs (big constants) are not stored

stats = {"hits": 0, "misses": 0, "stored": 0, "uncacheable": 0, "rebuilt_corrupt": 0,
         "derived": 0}
_source_hash = None
# .loading: [key, ops numbered so far] while a graph unpickles (origin);
# .derived: the name the next key takes instead of a pickle of its graph (derived)
_local = threading.local()


class _Uncacheable(Exception):
    pass


def _sources() -> bytes:
    """sha256 of every graphc source file (read once per process): any change to a rewrite,
    an op or this module gives every graph a new key."""
    global _source_hash
    if _source_hash is None:
        h = hashlib.sha256()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            for d, dirs, files in os.walk(root):
                dirs.sort()
                for name in sorted(files):
                    if name.endswith(".py"):
                        path = os.path.join(d, name)
                        with open(path, "rb") as f:
                            h.update(os.path.relpath(path, root).encode() + b"\0" + f.read())
        except OSError:                     # unreadable sources: nothing is ever shared
            h.update(os.urandom(32))
        _source_hash = h.digest()
    return _source_hash


def preload() -> None:
    """Hash graphc's sources now (at import, see function.preload) when the cache is on."""
    if config.graph_cache:
        _sources()


def compiledir() -> str:
    """The same directory as the kernel cache (graphc/backend/llvm/jit.py), else the flag."""
    try:
        from graphc.backend.llvm.jit import compiledir as jit_dir
    except ImportError:                     # no llvmlite
        return config.compiledir
    return jit_dir()


def _input(k):
    """Stands for input ``k`` in a pickle; _Unpickler resolves it to the caller's input."""
    raise RuntimeError("a pickled graph is loaded with graph_cache._Unpickler")


class _Pickler(pickle.Pickler):
    """Pickles a graph with the variables of ``inputs`` replaced by their position.

    ``reducer_override`` rather than ``persistent_id``: the pickler calls the latter for
    every object, strings and tuples included (~35,000 Python calls for a chain of 200
    elementwise ops), the former only for instances of other classes."""

    def __init__(self, f, inputs):
        super().__init__(f, protocol=pickle.HIGHEST_PROTOCOL)
        self._pos = {id(v): k for k, v in enumerate(inputs)}

    def reducer_override(self, obj):
        kind = _kinds.get(type(obj))
        if kind is None:
            kind = _kinds[type(obj)] = _kind_of(type(obj))
        if kind is _PLAIN:
            return NotImplemented
        if kind is _VARIABLE or kind is _SHARED:
            k = self._pos.get(id(obj))
            if k is not None:
                return _input, (k,)
            if kind is _SHARED:         # its value and identity must not be copied
                raise _Uncacheable("a shared variable that is not an input")
            return NotImplemented
        if kind is _DTYPE:
            if obj.isbuiltin == 1 and obj.metadata is None:
                # numpy's own dtype objects load back as copies, but the native call path
                # (graphc/backend/llvm/pycall.py) checks ``a.dtype is`` numpy's singleton
                return np.dtype, (obj.str,)
            return NotImplemented
        state = getattr(obj, "__dict__", None)
        if state is not None and "_hash" in state:
            # a remembered hash() (of strings: different in another process) would be
            # restored as is; classes that recompute it define __getstate__ (Scan, IfElse)
            raise _Uncacheable(f"{type(obj).__name__} keeps its hash")
        return NotImplemented


# What reducer_override does with the instances of a class, decided once per class (it is
# called for every object in the graph that is not a str, number, tuple, list or dict).
_PLAIN, _VARIABLE, _SHARED, _DTYPE, _CHECK_HASH = "plain", "var", "shared", "dtype", "hash"
_kinds: dict = {}


def _kind_of(cls) -> str:
    if issubclass(cls, SharedVariable):
        return _SHARED
    if issubclass(cls, Variable):       # the inputs are replaced by their position
        return _VARIABLE
    if str(getattr(cls, "__module__", "")).startswith("numpy") and issubclass(cls, np.dtype):
        return _DTYPE
    if getattr(cls, "__getstate__", None) is object.__getstate__:
        return _CHECK_HASH
    return _PLAIN


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, inputs):
        super().__init__(f)
        self._inputs = inputs

    def find_class(self, module, name):
        if module == __name__ and name == "_input":
            return self._inputs.__getitem__
        return super().find_class(module, name)


def _dump(obj, inputs) -> bytes:
    buf = io.BytesIO()
    try:
        _Pickler(buf, inputs).dump(obj)
    except _Uncacheable:
        raise
    except Exception as e:                  # an op or tag that cannot be pickled
        raise _Uncacheable(f"{type(e).__name__}: {e}") from None
    return buf.getvalue()


def enabled(mode) -> bool:
    return bool(config.graph_cache) and not config.optimizer_verbose and \
        not config.debug and not getattr(mode, "check", False)


def key(fgraph, mode, trace, derived_from=None) -> str | None:
    """The key of optimizing ``fgraph`` (not optimized yet) in ``mode``, or None when it
    cannot be cached. ``trace``: what function() records on the nodes it creates.
    ``derived_from``: a name that stands for the graph itself (see ``derived``)."""
    if not enabled(mode):
        return None
    if derived_from is not None:
        graph = b"derived from " + repr(derived_from).encode()
        stats["derived"] += 1
    else:
        try:
            # the nodes in topological order first: pickling them from the outputs would
            # recurse once per node along a long chain
            graph = _dump((fgraph.toposort(), fgraph.outputs), fgraph.inputs)
        except _Uncacheable:
            stats["uncacheable"] += 1
            return None
    h = hashlib.sha256(_sources())
    flags = sorted((n, repr(v)) for n, v in config._values.items() if n != "compiledir")
    mode_state = sorted((k, repr(v)) for k, v in vars(mode).items())
    parts = [sys.version, np.__version__, repr(flags), type(mode).__qualname__,
             repr(mode_state), repr(trace), repr([(v.type, v.name) for v in fgraph.inputs])]
    for p in parts:
        h.update(p.encode() + b"\0")
    h.update(graph)
    return h.hexdigest()


def origin():
    """For the ``__setstate__`` of ops that compile inner graphs when they first run (Scan,
    IfElse): while a cached graph loads, (its key, the op's number in it), else None.

    Ops are numbered in the order they unpickle, the same in every process that loads the
    same bytes, so the pair names the op's whole content, inner graphs included: the keys
    of those inner graphs derive from it (``derived``) instead of each being a pickle of
    its graph (~1 ms per LSTM step graph, in the loop's first call)."""
    loading = getattr(_local, "loading", None)
    if loading is None:
        return None
    loading[1] += 1
    return loading[0], loading[1]


@contextlib.contextmanager
def derived(name):
    """The next graph function() compiles inside takes ``name`` (a repr-able value that
    determines that graph, e.g. an op's ``origin()`` and which of its inner graphs) in its
    key in place of a pickle of the graph; the rest of the key (flags, mode, call-site trace,
    input types, graphc's sources) is computed as usual. None: nothing changes."""
    outer, _local.derived = getattr(_local, "derived", None), name
    try:
        yield
    finally:
        _local.derived = outer


def _path(k: str, suffix: str = ".graph") -> str:
    return os.path.join(compiledir(), k + suffix)


def _unwrap(blob: bytes, magic: bytes):
    """The payload of an entry written by ``_write`` with ``magic``, or None when damaged."""
    if len(blob) < _HEADER.size:
        return None
    got, length, digest = _HEADER.unpack(blob[:_HEADER.size])
    payload = blob[_HEADER.size:]
    if got != magic or length != len(payload) or hashlib.sha256(payload).digest() != digest:
        return None
    return payload


def optimized(fgraph, mode, trace):
    """``fgraph`` (not optimized yet) after the rewrite passes of ``mode``: loaded from the
    cache, else optimized here, stored, and loaded back from the bytes just stored.

    Loading back costs a cold compile ~1-5 ms and buys two things: the graph a process
    runs is always one that came out of the cache, so a graph that does not survive the
    round trip fails in the process that made it (and in the tests), not in a later one;
    and the inner graphs of its loops, compiled later from that graph, pickle to the same
    bytes in every process (a freshly built graph and its unpickled copy can differ in
    which equal objects they share), so their own keys hit in the next process too."""
    from graphc.rewriting.pipeline import optimize
    name, _local.derived = getattr(_local, "derived", None), None     # for this graph only
    k = key(fgraph, mode, trace, name)
    if k is None:
        return optimize(fgraph, mode)
    hit = _load(k, fgraph)
    if hit is not None:
        _note(k, True)
        return hit
    optimize(fgraph, mode)
    try:
        payload = _dump((fgraph.toposort(), fgraph), fgraph.inputs)
    except _Uncacheable:
        stats["uncacheable"] += 1
        return fgraph
    again = _unpack(payload, fgraph, k)
    if again is None:                       # does not survive pickling: use it as it is
        stats["uncacheable"] += 1
        return fgraph
    if len(payload) <= MAX_BYTES:
        _store(k, payload)
        _note(k, False)
    return again


def _note(k: str, hit: bool) -> None:
    """Tell the native backend which cached graphs this process uses: it keeps their
    kernels together (graphc/backend/llvm/bundle.py) and loads them at once on a hit."""
    try:
        from graphc.backend.llvm import bundle
    except ImportError:                     # no llvmlite: nothing to bundle
        return
    bundle.note_graph(k, hit)


def _load(k: str, fgraph):
    """The optimized graph stored under ``k``, its inputs being ``fgraph``'s own, or None
    (missing, damaged, or not the graph ``fgraph`` becomes)."""
    try:
        with open(_path(k), "rb") as f:
            blob = f.read()
    except OSError:
        stats["misses"] += 1
        return None
    payload = _unwrap(blob, _MAGIC)
    loaded = None if payload is None else _unpack(payload, fgraph, k)
    if loaded is None:
        stats["rebuilt_corrupt"] += 1
        return None
    stats["hits"] += 1
    return loaded


def _unpack(payload: bytes, fgraph, k: str):
    """The graph pickled in ``payload`` (stored under key ``k``) with ``fgraph``'s inputs, or
    None when it does not load or is not a graph of those very inputs with outputs of the
    same types."""
    from graphc.graph.fg import FunctionGraph
    outer, _local.loading = getattr(_local, "loading", None), [k, 0]
    try:
        loaded = _Unpickler(io.BytesIO(payload), fgraph.inputs).load()[1]
    except Exception:
        return None
    finally:
        _local.loading = outer
    ok = isinstance(loaded, FunctionGraph) and len(loaded.inputs) == len(fgraph.inputs) \
        and all(a is b for a, b in zip(loaded.inputs, fgraph.inputs)) \
        and len(loaded.outputs) == len(fgraph.outputs) \
        and all(_same_kind(a.type, b.type) for a, b in zip(loaded.outputs, fgraph.outputs))
    return loaded if ok else None


def _same_kind(a, b) -> bool:
    """What FunctionGraph.replace keeps of an output's type: a rewrite may learn a static
    shape (``(?, ?)`` -> ``(32, 256)``), never change the dtype or the number of dims."""
    return a == b or (type(a) is type(b) and getattr(a, "dtype", None) == getattr(b, "dtype", 0)
                      and getattr(a, "ndim", None) == getattr(b, "ndim", 0))


def _store(k: str, payload: bytes) -> None:
    if _write(_path(k), _MAGIC, payload):
        stats["stored"] += 1


def _write(path: str, magic: bytes, payload: bytes) -> bool:
    """Write ``payload`` under a header (magic, length, sha256) that ``_unwrap`` checks."""
    try:        # the kernel cache's writer: temporary file + rename, failures only logged
        from graphc.backend.llvm.jit import _atomic_write
    except ImportError:                     # no llvmlite: no compile dir to share
        return False
    _atomic_write(path, _HEADER.pack(magic, len(payload), hashlib.sha256(payload).digest()),
                  payload)
    return True


# ----------------------------------------------------------------------------- generated code
_CODE_MAGIC = b"GRAPHCC1"
_code: dict = {}                            # (source, filename) -> code object


def compile_source(src: str, filename: str):
    """``compile(src, filename, "exec")``, remembered in this process and in the compile dir
    (``<sha256>.pycode``: the marshalled code object, keyed on the source, the file name and
    the interpreter's version). The linker and scan generate Python for their steps and
    loops; compiling one costs ~0.3-1 ms, loading it back ~30 us."""
    code = _code.get((src, filename))
    if code is not None:
        return code
    import marshal
    from importlib.util import MAGIC_NUMBER
    k = hashlib.sha256(b"\0".join([sys.version.encode(), MAGIC_NUMBER, filename.encode(),
                                    src.encode()])).hexdigest()
    path = _path(k, ".pycode")
    try:
        with open(path, "rb") as f:
            payload = _unwrap(f.read(), _CODE_MAGIC)
        code = None if payload is None else marshal.loads(payload)
    except (OSError, ValueError, EOFError, TypeError):
        code = None
    if code is None:
        code = compile(src, filename, "exec")
        if config.graph_cache:
            _write(path, _CODE_MAGIC, marshal.dumps(code))
    _code[(src, filename)] = code
    return code
