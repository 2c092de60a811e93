"""LLVM plumbing: the host target machine, the O3 pipeline, one JIT engine, the object cache.

Every kernel goes through the same path, whether or not it was compiled before:

    (KernelSpec, Variant) --sha256(spec + variant + codegen sources + CPU + features
                                   + versions + flags)--> key
    key --disk cache hit--> object code                         (no IR is built)
        --miss--> build IR, parse, verify, optimize (O3 + loop vectorizer), emit object, store
    object code --add_object_file--> the process-wide MCJIT engine --> function address

The key is computed from the *inputs* of code generation, not from the IR text, so a warm
process never runs the (slow, pure Python) IR builder. To keep that sound, the key includes a
hash of the source text of every module that decides what code a (spec, variant) becomes
(``CODEGEN_SOURCES``): editing any of them changes every key. Going through object code even
on a miss keeps one loading path (so the cache path is the path every test exercises) and
costs ~1 ms.

Cache entries are files ``<compiledir>/<key>.o`` made of a header (magic, payload length,
sha256 of the payload) followed by the object code. A writer writes to a temporary file in the
same directory and ``os.replace``s it, so readers in other processes see the old entry or the
new one, never half of one. A reader that finds a bad header, a wrong length or a wrong hash
treats the entry as missing and rebuilds it. Two processes compiling the same key at once both
write complete, identical entries; the last rename wins. Empty ``<key>.ok`` files are markers
(see ``mark``): facts about a key that are cheaper to remember than to recompute.

See /work/shared/TOOLCHAIN.md for the llvmlite 0.50 facts this relies on (new pass manager only,
host CPU name + features for AVX, emit_object instead of set_object_cache).
"""
from __future__ import annotations

import hashlib
import os
import struct
import sys
import tempfile
import threading

import llvmlite
import llvmlite.binding as llvm

# Part of every cache key, with the hash of CODEGEN_SOURCES: names the pass pipeline, target
# machine options and loading convention (already covered by jit.py's own source hash, but this
# string says in words what a key promises).
CODEGEN_FLAGS = "graphc-llvm;O3;loopvec;noslp;reloc=pic;codemodel=default;opts=rtcheck64"

# Modules whose source text decides what machine code a (KernelSpec, Variant) becomes, relative
# to this directory. Their hash is part of every key: edit one and every entry is rebuilt.
# kernel.py is not listed: it chooses *which* variant runs, and the variant is in the key.
CODEGEN_SOURCES = ("codegen.py", "scalar.py", "vmath.py", "jit.py", "../kernel_spec.py")

# The generated IR names its entry point with this placeholder; the real, unique name
# ("gk_" + key prefix) is substituted once the key is known.
PLACEHOLDER = "GRAPHC_KERNEL_PLACEHOLDER"

_MAGIC = b"GRAPHCO1"
_HEADER = struct.Struct("<8sQ32s")          # magic, payload length, sha256(payload)

_lock = threading.RLock()                   # guards the engine, the loaded-symbol table, stats
_state = None                               # lazily built _Target
_loaded: dict = {}                          # function name -> address (already in the engine)
_compiledir_override = None
_codegen_version = None
stats = {"compiled": 0, "disk_hits": 0, "memory_hits": 0, "rebuilt_corrupt": 0, "ir_built": 0}


class _Target:
    """Target machine for codegen, an MCJIT engine to load objects into, and the key salt."""

    def __init__(self):
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        llvm.initialize_native_asmparser()
        # The vectorizer gives up on loops that need more pointer-overlap checks than this
        # (default 8); a fused kernel with 6 array inputs and 2 outputs needs 12. The checks
        # cost a few instructions per call, far less than a scalar loop.
        llvm.set_option("", "-runtime-memory-check-threshold=64")
        self.cpu = llvm.get_host_cpu_name()
        self.features = llvm.get_host_cpu_features().flatten()
        target = llvm.Target.from_default_triple()
        self.triple = target.triple
        # PIC + the default (small) code model: the object is loaded at an arbitrary address by
        # RuntimeDyld, and calls into libm go through stubs it creates.
        self.tm = target.create_target_machine(
            cpu=self.cpu, features=self.features, opt=3, reloc="pic", codemodel="default")
        self.data_layout = str(self.tm.target_data)
        engine_tm = target.create_target_machine(
            cpu=self.cpu, features=self.features, opt=3, reloc="pic", codemodel="default")
        empty = llvm.parse_assembly(
            f'target triple = "{self.triple}"\ntarget datalayout = "{self.data_layout}"\n')
        self.engine = llvm.create_mcjit_compiler(empty, engine_tm)
        self.salt = "\n".join([self.cpu, self.features, llvmlite.__version__,
                               ".".join(map(str, llvm.llvm_version_info)), CODEGEN_FLAGS])
        self.objects = []                   # keep every loaded ObjectFileRef alive

    def optimize(self, mod):
        pto = llvm.create_pipeline_tuning_options(speed_level=3)
        pto.loop_vectorization = True
        # The SLP vectorizer stays off (llvmlite's default): on kernels already vectorized by
        # the loop vectorizer it found nothing to gain (selfbench: same or better run time
        # without it) and it took ~60% of the optimizer's time on the LSTM's kernels
        # (550 -> 240 ms CPU for 12 kernels).
        pto.slp_vectorization = False
        pb = llvm.create_pass_builder(self.tm, pto)
        pb.getModulePassManager().run(mod, pb)


def target() -> _Target:
    global _state
    with _lock:
        if _state is None:
            _state = _Target()
        return _state


def codegen_version() -> str:
    """sha256 of the source text of CODEGEN_SOURCES (read once per process).

    When a source cannot be read (e.g. a zipped install), a per-process random value is used
    instead: nothing is shared across processes then, but no stale entry is ever trusted.
    """
    global _codegen_version
    if _codegen_version is None:
        h = hashlib.sha256()
        here = os.path.dirname(os.path.abspath(__file__))
        try:
            for name in CODEGEN_SOURCES:
                with open(os.path.join(here, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read() + b"\0")
        except OSError:
            h.update(os.urandom(32))
        _codegen_version = h.hexdigest()
    return _codegen_version


def cache_key(*parts: str) -> str:
    """The cache key of the code generated from ``parts`` (e.g. repr(spec), repr(variant)) on
    this machine, with this codegen and these versions and flags."""
    t = target()
    text = "\n".join((codegen_version(), t.salt) + parts)
    return hashlib.sha256(text.encode()).hexdigest()


def graphc_flag(name, default):
    """A graphc.config flag (GRAPHC_FLAGS), or ``default`` when the config is unavailable."""
    try:
        from ...configdefaults import config
        return getattr(config, name)
    except (ImportError, ValueError, AttributeError):
        return default


# --------------------------------------------------------------------------- cache directory
def compiledir() -> str:
    """The cache directory: set_compiledir(), else $GRAPHC_COMPILEDIR, else the graphc flag
    ``compiledir`` (GRAPHC_FLAGS=compiledir=...), whose default is ~/.cache/graphc."""
    if _compiledir_override is not None:
        return _compiledir_override
    env = os.environ.get("GRAPHC_COMPILEDIR")
    if env:
        return env
    return graphc_flag("compiledir", os.path.join(os.path.expanduser("~"), ".cache", "graphc"))


def set_compiledir(path) -> None:
    """Use ``path`` for the object cache from now on (None: back to env/default)."""
    global _compiledir_override
    _compiledir_override = None if path is None else os.fspath(path)


def _entry_path(key: str) -> str:
    return os.path.join(compiledir(), key + ".o")


def is_marked(key: str) -> bool:
    """Was ``mark(key)`` called, by this or an earlier process, on this cache directory?"""
    return os.path.exists(os.path.join(compiledir(), key + ".ok"))


def mark(key: str) -> None:
    """Remember a fact about ``key`` as an empty file (creating it is atomic enough: a marker
    has no content to be half-written). Failing to write one only costs time later."""
    d = compiledir()
    try:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, key + ".ok"), "ab"):
            pass
    except OSError:
        pass


def _read_entry(key: str):
    """Return the cached object code for ``key``, or None when missing or damaged."""
    try:
        with open(_entry_path(key), "rb") as f:
            blob = f.read()
    except OSError:
        return None
    if len(blob) < _HEADER.size:
        stats["rebuilt_corrupt"] += 1
        return None
    magic, length, digest = _HEADER.unpack_from(blob)
    payload = blob[_HEADER.size:]
    if magic != _MAGIC or length != len(payload) or hashlib.sha256(payload).digest() != digest:
        stats["rebuilt_corrupt"] += 1
        return None
    return payload


def _write_entry(key: str, payload: bytes) -> None:
    """Atomically store ``payload``; a cache we cannot write is not an error, only slower."""
    d = compiledir()
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=d)
        try:
            os.chmod(tmp, 0o644)           # mkstemp makes 0600; the cache may be shared
            with os.fdopen(fd, "wb") as f:
                f.write(_HEADER.pack(_MAGIC, len(payload), hashlib.sha256(payload).digest()))
                f.write(payload)
            os.replace(tmp, _entry_path(key))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as e:
        print(f"graphc: cannot write compile cache entry in {d}: {e}", file=sys.stderr)


def cache_info() -> dict:
    """{dir, entries, bytes} of the on-disk cache, plus this process's counters."""
    d = compiledir()
    entries = nbytes = 0
    try:
        for name in os.listdir(d):
            if name.endswith(".o"):
                entries += 1
                nbytes += os.path.getsize(os.path.join(d, name))
    except OSError:
        pass
    return {"dir": d, "entries": entries, "bytes": nbytes, **stats}


def clear_cache() -> None:
    """Remove every cache entry (and temporaries left by killed writers) from the directory.

    Functions already loaded into this process stay loaded (their addresses are in use).
    """
    d = compiledir()
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in names:
        if name.endswith((".o", ".ok", ".part")):
            try:
                os.unlink(os.path.join(d, name))
            except OSError:
                pass


# --------------------------------------------------------------------------- compile + load
def _debug_enabled(debug) -> bool:
    """Print IR + assembly? The argument, else $GRAPHC_DEBUG_LLVM, else graphc flag debug >= 2."""
    if debug is not None:
        return bool(debug)
    env = os.environ.get("GRAPHC_DEBUG_LLVM")
    if env is not None:
        return env not in ("", "0")
    return graphc_flag("debug", 0) >= 2


def _compile(t: _Target, ir_text: str, debug: bool, title: str) -> bytes:
    mod = llvm.parse_assembly(ir_text)
    mod.triple = t.triple
    mod.data_layout = t.data_layout
    mod.verify()
    if debug:
        print(f"; ==== graphc LLVM IR ({title}) ====\n{ir_text}", file=sys.stderr)
    t.optimize(mod)
    if debug:
        print(f"; ==== graphc optimized IR ({title}) ====\n{mod}", file=sys.stderr)
        print(f"# ==== graphc assembly ({title}) ====\n{t.tm.emit_assembly(mod)}",
              file=sys.stderr)
    return t.tm.emit_object(mod)


def load_function(key: str, make_ir, debug=None, title: str = "") -> int:
    """The address, in this process, of the entry point of the code cached under ``key``.

    ``key`` comes from ``cache_key`` of everything the code is generated from; ``make_ir()``
    returns its IR text (entry point named PLACEHOLDER) and is only called on a cache miss or
    in debug mode.
    """
    t = target()
    debug = _debug_enabled(debug)
    name = "gk_" + key[:32]
    with _lock:
        addr = _loaded.get(name)
        if addr is not None and not debug:
            stats["memory_hits"] += 1
            return addr
        obj = None if debug else _read_entry(key)
        if obj is None:
            text = make_ir().replace(PLACEHOLDER, name)
            obj = _compile(t, text, debug, title or name)
            stats["compiled"] += 1
            _write_entry(key, obj)
        else:
            stats["disk_hits"] += 1
        if addr is not None:                 # debug re-print of an already loaded kernel
            return addr
        ref = llvm.ObjectFileRef.from_data(obj)
        t.engine.add_object_file(ref)
        t.objects.append(ref)
        t.engine.finalize_object()
        addr = t.engine.get_function_address(name)
        if not addr:
            raise RuntimeError(f"graphc: loaded object has no symbol {name}")
        _loaded[name] = addr
        return addr
