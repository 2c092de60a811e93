"""LLVM plumbing: the host target machine, the O3 pipeline, one JIT engine, the object cache.

Every kernel goes through the same path, whether or not it was compiled before:

    (KernelSpec, Variant) --sha256(spec + variant + codegen sources + CPU + features
                                   + versions + flags)--> key
    key --linked library <key>.so--> dlopen (ctypes) --> function address   (no LLVM at all)
        --object entry <key>.o--> the process-wide MCJIT engine --> function address
        --miss--> build IR, parse, verify, optimize (O3 + loop vectorizer), emit object, store
                  the object, load it through MCJIT, link <key>.so at interpreter exit

(Hand-written code that the optimizer would not improve, the call trampoline of pycall.py,
skips the optimize step: ``load_function(optimize=False)``, with NOOPT_FLAGS in its key.)

The key is computed from the *inputs* of code generation, not from the IR text, so a warm
process never runs the (slow, pure Python) IR builder. To keep that sound, the key includes a
hash of the source text of every module that decides what code a (spec, variant) becomes
(``CODEGEN_SOURCES``): editing any of them changes every key. The CPU name and features come
from LLVM once per machine and are remembered in the compile dir (see ``_host``), so a warm
process builds keys without importing llvmlite.binding. Going through object code even on a
miss keeps one loading path for fresh and cached objects (~1 ms).

Cache entries are files ``<compiledir>/<key>.o`` made of a header (magic, payload length,
sha256 of the payload) followed by the object code, and ``<key>.so``, the same object linked by
the system linker, followed by the same kind of record as a trailer. A writer writes to a
temporary file in the same directory and ``os.replace``s it, so readers in other processes see
the old entry or the new one, never half of one. A reader that finds a bad header, a wrong
length or a wrong hash treats the entry as missing and rebuilds it. Two processes compiling the
same key at once both write complete, identical entries; the last rename wins. Empty
``<key>.ok`` files are markers (see ``mark``): facts about a key that are cheaper to remember
than to recompute.

See /work/shared/TOOLCHAIN.md for the llvmlite 0.50 facts this relies on (new pass manager only,
host CPU name + features for AVX, emit_object instead of set_object_cache).
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import queue
import shutil
import struct
import subprocess
import sys
import tempfile
import threading

import llvmlite

# llvmlite.binding (LLVM itself, ~50-65 ms to import: a large shared library and hundreds of
# ctypes prototypes) is imported only when a kernel must be compiled or loaded from a bare
# object file; a warm process loads linked shared objects with ctypes alone.
llvm = None

# Part of every cache key, with the hash of CODEGEN_SOURCES: names the pass pipeline, target
# machine options and loading convention (already covered by jit.py's own source hash, but this
# string says in words what a key promises).
CODEGEN_FLAGS = ("graphc-llvm;O3;loopvec;noslp;epilogue=codegen.vector_epilogue;reloc=pic;"
                 "codemodel=default;opts=rtcheck64")
# What load_function(optimize=False) promises instead; callers add it to their key parts.
NOOPT_FLAGS = "graphc-llvm;noopt;reloc=pic;codemodel=default"

# Modules whose source text decides what machine code a (KernelSpec, Variant) becomes, relative
# to this directory. Their hash is part of every key: edit one and every entry is rebuilt.
# kernel.py is not listed: it chooses *which* variant runs, and the variant is in the key.
CODEGEN_SOURCES = ("codegen.py", "scalar.py", "vmath.py", "jit.py", "../kernel_spec.py")

# The generated IR names its entry point with this placeholder; the real, unique name
# ("gk_" + key prefix) is substituted once the key is known.
PLACEHOLDER = "GRAPHC_KERNEL_PLACEHOLDER"

_MAGIC = b"GRAPHCO1"
_SO_MAGIC = b"GRAPHCS1"
_HEADER = struct.Struct("<8sQ32s")          # magic, payload length, sha256(payload)

_lock = threading.RLock()                   # guards the engine, the loaded-symbol table, stats


def _new_lock_in_child():
    """A child forked while another thread held _lock (e.g. pycall's background prefetch)
    would wait on it forever: the child starts with a free lock."""
    global _lock, _later_lock
    _lock = threading.RLock()
    _later_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)
_state = None                               # lazily built _Target
_salt_text = None                           # host + versions + flags part of every key
_loaded: dict = {}                          # function name -> address (already in the engine)
_libraries = []                             # every loaded ctypes.CDLL (kept alive)
_compiledir_override = None
_codegen_version = None
_pending = []                               # (compile dir, key, object) to link at exit
used: dict = {}                             # every key load_function was asked for, in order
_exit_hook = False                          # link_pending registered with atexit
stats = {"compiled": 0, "disk_hits": 0, "memory_hits": 0, "rebuilt_corrupt": 0, "ir_built": 0,
         "so_hits": 0}


def _binding():
    """Import llvmlite.binding on first need (see ``llvm`` above)."""
    global llvm
    if llvm is None:
        import llvmlite.binding
        llvm = llvmlite.binding
    return llvm


class _Target:
    """Target machine for codegen, an MCJIT engine to load objects into, and the key salt."""

    def __init__(self):
        _binding()
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
        self.llvm_version = ".".join(map(str, llvm.llvm_version_info))
        self.objects = []                   # keep every loaded ObjectFileRef alive
        self.epilogue = True                # LLVM's default of -enable-epilogue-vectorization

    def optimize(self, mod, epilogue=True, level=3):
        # a process-wide LLVM option, set for each compile (every compile holds _lock)
        if epilogue != self.epilogue:
            llvm.set_option("", f"-enable-epilogue-vectorization={str(epilogue).lower()}")
            self.epilogue = epilogue
        pto = llvm.create_pipeline_tuning_options(speed_level=level)
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


def _host_fingerprint():
    """What decides LLVM's host CPU name and features, read without LLVM: the first CPU's
    vendor, family, model, stepping and feature flags from /proc/cpuinfo (both come from
    cpuid), plus the llvmlite version (which pins the LLVM version). None when unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n", 1)[0]
    except OSError:
        return None
    keep = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags", "Features",
            "CPU implementer", "CPU architecture", "CPU variant", "CPU part", "CPU revision")
    lines = sorted(ln for ln in first.splitlines() if ln.split(":")[0].strip() in keep)
    if not any(ln.startswith(("flags", "Features")) for ln in lines):
        return None
    return "\n".join(lines + [sys.platform, llvmlite.__version__])


def _host():
    """(cpu name, features, LLVM version) as LLVM reports them for this machine.

    Asking LLVM means importing llvmlite.binding; a warm process would pay that only to build
    cache keys, so the answer is remembered in the compile dir under a hash of the cpuinfo
    fingerprint (``host-<hash>.json``) and read back from there.
    """
    path = _host_path()
    if path is not None:
        try:
            with open(path) as f:
                info = json.load(f)
            return info["cpu"], info["features"], info["llvm"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    t = target()
    info = {"cpu": t.cpu, "features": t.features, "llvm": t.llvm_version}
    if path is not None:
        _atomic_write(path, json.dumps(info).encode())
    return info["cpu"], info["features"], info["llvm"]


def _host_path():
    """Where _host() remembers LLVM's answer for this machine, or None (no fingerprint)."""
    fp = _host_fingerprint()
    if fp is None:
        return None
    return os.path.join(compiledir(), f"host-{hashlib.sha256(fp.encode()).hexdigest()[:32]}.json")


def warm_up() -> None:
    """On a cold compile dir (``_host()`` has not remembered this machine there yet), import
    llvmlite.binding and set up the target machine now, on a background thread: ``import
    graphc`` calls this. The first compile of a cold process would otherwise do it inside
    the user's first call (~25-35 ms: loading libllvmlite takes most of it); this way it
    overlaps whatever the program does in between. A warm dir needs no LLVM: nothing then."""
    path = _host_path()
    if llvm is not None or (path is not None and os.path.exists(path)):
        return
    t = threading.Thread(target=_warm_up_quietly, name="graphc-llvm-init", daemon=True)
    _warming[:] = [t]
    t.start()


_warming: list = []             # warm_up's thread


def _warm_up_quietly():
    try:
        _host()
    except Exception:           # the first compile sets it up again and reports
        pass


def _finish_warm_up_before_fork():
    """A child forked while warm_up's thread is importing llvmlite could find the module
    half-initialized, its import lock held by a thread the child does not have: the parent
    lets the thread finish first (tens of milliseconds; at most 5 s). (Not seen to fail
    without this in 3 tries on CPython 3.11; the join is cheap insurance.)"""
    t = _warming[0] if _warming else None
    if t is not None and t.is_alive() and t is not threading.current_thread():
        t.join(timeout=5.0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_finish_warm_up_before_fork)


_source_hashes: dict = {}


def source_hash(*names: str) -> str:
    """sha256 of these files of graphc/backend/llvm/ (read once per process): part of the
    cache key of code written by hand in them (generic codegen sources are in every key
    through codegen_version already)."""
    h = _source_hashes.get(names)
    if h is None:
        d = hashlib.sha256()
        here = os.path.dirname(os.path.abspath(__file__))
        for name in names:
            with open(os.path.join(here, name), "rb") as f:
                d.update(f.read())
        h = _source_hashes[names] = d.hexdigest()
    return h


def cache_key(*parts: str) -> str:
    """The cache key of the code generated from ``parts`` (e.g. repr(spec), repr(variant)) on
    this machine, with this codegen and these versions and flags."""
    global _salt_text
    if _salt_text is None:
        cpu, features, llvm_version = _host()
        _salt_text = "\n".join([cpu, features, llvmlite.__version__, llvm_version,
                                 CODEGEN_FLAGS])
    text = "\n".join((codegen_version(), _salt_text) + parts)
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


def _pack(magic: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(magic, len(payload), hashlib.sha256(payload).digest())


def _unpack(magic: bytes, blob: bytes, trailer: bool):
    """The payload of an entry (header first, or trailer last), or None when damaged."""
    if len(blob) < _HEADER.size:
        return None
    if trailer:
        head, payload = blob[-_HEADER.size:], blob[:-_HEADER.size]
    else:
        head, payload = blob[:_HEADER.size], blob[_HEADER.size:]
    got, length, digest = _HEADER.unpack(head)
    if got != magic or length != len(payload) or hashlib.sha256(payload).digest() != digest:
        return None
    return payload


def _read_entry(key: str):
    """Return the cached object code for ``key``, or None when missing or damaged."""
    try:
        with open(_entry_path(key), "rb") as f:
            blob = f.read()
    except OSError:
        return None
    payload = _unpack(_MAGIC, blob, trailer=False)
    if payload is None:
        stats["rebuilt_corrupt"] += 1
    return payload


def _atomic_write(path: str, *chunks: bytes) -> None:
    """Write ``path`` through a temporary file and a rename, so that readers in other
    processes see the old file or the new one, never half of one. A cache we cannot write is
    not an error, only slower."""
    d = os.path.dirname(path)
    try:
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=d)
        try:
            os.chmod(tmp, 0o644)           # mkstemp makes 0600; the cache may be shared
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as e:
        print(f"graphc: cannot write compile cache entry in {d}: {e}", file=sys.stderr)


def _write_entry(key: str, payload: bytes) -> None:
    _atomic_write(_entry_path(key), _pack(_MAGIC, payload), payload)


# --------------------------------------------------------------------------- shared objects
# A warm process should not need LLVM at all. Next to each object entry the cache keeps the
# object linked by the system linker into a shared library, ``<key>.so``: the ELF file followed
# by a trailer (magic, length, sha256 of the ELF bytes) that is checked before dlopen, so a
# damaged library is rebuilt from the object entry, never loaded. The kernels reference no
# symbols of their own making; whatever libc/libm routine LLVM calls (memset, fmod) is
# resolved by dlopen from the process, and a library that fails to load falls back to the
# object through MCJIT. Linking waits for interpreter exit (link_pending), so a cold process
# spends nothing on it before its first results; a process killed before then leaves only the
# object entries, and the next one links them. Without a linker (or off Linux), everything
# goes through the object path, as before.

_LINKER = "unresolved"                      # path of `ld`, None when unusable
# At exit only the last this many objects are linked (~2-5 ms each): a process that compiled
# thousands (a test suite) would otherwise spend seconds linking at exit; the rest are linked
# by the next process that loads them.
EXIT_LINK_LIMIT = 512


def _linker():
    global _LINKER
    if _LINKER == "unresolved":
        _LINKER = shutil.which("ld") if sys.platform.startswith("linux") else None
    return _LINKER


def _so_path(key: str) -> str:
    return os.path.join(compiledir(), key + ".so")


def linked(key: str) -> bool:
    """Whether ``key`` has a linked library in the cache (loading it needs no LLVM)."""
    return os.path.exists(_so_path(key))


def _load_shared(key: str, name: str, count: bool = True):
    """The address of ``name`` from the linked library of ``key``, or None (no such entry, a
    damaged one, or one that does not load here). ``count=False``: a damaged entry is not
    counted (ahead.py's loader leaves it to load_function, which counts and rebuilds it)."""
    addrs = load_library(_so_path(key), [name], count)
    return None if addrs is None else addrs[0]


def load_library(path: str, names, count: bool = True):
    """The addresses of ``names`` in the linked library at ``path`` (an ELF file with the
    trailer of a cache entry, checked before dlopen), or None when it is missing, damaged,
    does not load here or lacks one of them."""
    import ctypes
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    if _unpack(_SO_MAGIC, blob, trailer=True) is None:
        if count:
            stats["rebuilt_corrupt"] += 1
        return None
    try:
        lib = ctypes.CDLL(path)
        addrs = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in names]
    except (OSError, AttributeError):
        return None
    if not all(addrs):
        return None
    _libraries.append(lib)
    return addrs


def _schedule_link(key: str, obj: bytes) -> None:
    """Remember ``obj`` to be linked into ``<key>.so`` at interpreter exit (link_pending)."""
    global _exit_hook
    if _linker() is None:
        return
    with _lock:
        _pending.append((compiledir(), key, obj))
        if not _exit_hook:
            atexit.register(link_pending, EXIT_LINK_LIMIT)
            _exit_hook = True


_later = {"pid": None, "queue": None, "deferred": []}   # see in_background
_later_lock = threading.Lock()              # not _lock: a compile holds that one for long
BACKGROUND_EXIT_WAIT = 30.0                 # seconds the exit waits for the queue, at most


def in_background(target, defer: bool = False) -> None:
    """Run ``target`` (a compile whose result later calls will use) on this process's
    background compile thread, one job after the other. ``defer``: only once the graphc
    function call running now has returned, so that its own compiles do not wait for this
    one (LLVM compiles one module at a time, under _lock). At interpreter exit the queue is
    drained (at most BACKGROUND_EXIT_WAIT seconds) and the objects linked into the cache: a
    process that exits right after a cold first call still leaves the next one a warm
    cache. (The thread waits on its queue from the start: starting a thread at the end of
    a call would cost that call the thread's first time slice.)"""
    with _later_lock:
        if _later["pid"] != os.getpid():        # first use, or a forked child
            q = _later["queue"] = queue.Queue()
            _later["deferred"] = []
            _later["pid"] = os.getpid()
            threading.Thread(target=_compile_later_loop, args=(q,), name="graphc-compile",
                             daemon=True).start()
            atexit.register(_finish_background)
        if defer:
            _later["deferred"].append(target)
            sys.modules["graphc.compile.function"].after_call.append(start_deferred)
            return
        _later["queue"].put(target)


def _compile_later_loop(q):
    while True:
        target = q.get()
        try:
            target()
        except Exception:           # a caller that needs the result compiles and reports
            pass
        finally:
            q.task_done()


def start_deferred() -> None:
    """Queue the deferred compiles (graphc.compile.function calls this after a call)."""
    with _later_lock:
        jobs, _later["deferred"] = _later["deferred"], []
        q = _later["queue"]
    for target in jobs:
        q.put(target)


def _finish_background() -> None:
    import time
    if _later["pid"] != os.getpid():
        return
    start_deferred()
    q = _later["queue"]
    deadline = time.monotonic() + BACKGROUND_EXIT_WAIT
    while q.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.005)
    link_pending(EXIT_LINK_LIMIT)


def link_pending(limit=None) -> None:
    """Link every object this process loaded through LLVM (the last ``limit`` of them) into
    its ``<key>.so`` now, with one linker process per object, 8 side by side. Runs at
    interpreter exit, so that linking costs a cold process nothing before its results are
    ready; tests call it to see the files. A linker that fails is not used again by this
    process."""
    global _LINKER
    with _lock:
        jobs, _pending[:] = list(_pending), []
    if limit is not None:
        jobs = jobs[-limit:]
    ld = _linker()
    if ld is None or not jobs:
        return
    for start in range(0, len(jobs), 8):
        running = []
        for d, key, obj in jobs[start:start + 8]:
            try:                            # a directory removed since: nothing to add to
                work = tempfile.mkdtemp(prefix=".tmp-link-", dir=d)
            except OSError:
                continue
            src, out = os.path.join(work, "k.o"), os.path.join(work, "k.so")
            try:
                with open(src, "wb") as f:
                    f.write(obj)
                proc = subprocess.Popen([ld, "-shared", "-o", out, src],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            except OSError:
                shutil.rmtree(work, ignore_errors=True)
                _LINKER = None
                break
            running.append((proc, d, key, work, out))
        for proc, d, key, work, out in running:
            try:
                if proc.wait(timeout=60) == 0:
                    with open(out, "rb") as f:
                        elf = f.read()
                    _atomic_write(os.path.join(d, key + ".so"), elf, _pack(_SO_MAGIC, elf))
                else:
                    _LINKER = None
            except (OSError, subprocess.SubprocessError):
                proc.kill()
                _LINKER = None
            finally:
                shutil.rmtree(work, ignore_errors=True)
        if _LINKER is None:
            return


def cache_info() -> dict:
    """{dir, entries, bytes, shared} of the on-disk cache (entries: object files; shared:
    linked libraries), plus this process's counters."""
    d = compiledir()
    entries = nbytes = shared = 0
    try:
        for name in os.listdir(d):
            if name.endswith(".o"):
                entries += 1
                nbytes += os.path.getsize(os.path.join(d, name))
            elif name.endswith(".so"):
                shared += 1
                nbytes += os.path.getsize(os.path.join(d, name))
    except OSError:
        pass
    return {"dir": d, "entries": entries, "bytes": nbytes, "shared": shared, **stats}


def clear_cache() -> None:
    """Remove every cache entry (and temporaries left by killed writers) from the directory,
    the optimized graphs and generated Python code of graphc/compile/graph_cache.py
    (``.graph``, ``.pycode``), the lists of
    backend/llvm/ahead.py (``.uses``) and the bundles of bundle.py (``.bundle``) included.

    Functions already loaded into this process stay loaded (their addresses are in use).
    """
    d = compiledir()
    with _lock:                             # objects of this directory not linked yet
        _pending[:] = [job for job in _pending if job[0] != d]
    from . import ahead, bundle
    ahead.forget()
    bundle.forget()
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in names:
        path = os.path.join(d, name)
        if name.startswith(".tmp-link-"):
            shutil.rmtree(path, ignore_errors=True)
        elif name.endswith((".o", ".so", ".ok", ".part", ".graph", ".pycode", ".uses",
                            ".bundle")) or (
                name.startswith("host-") and name.endswith(".json")):
            try:
                os.unlink(path)
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


def _compile(t: _Target, ir_text: str, debug: bool, title: str, optimize: bool,
             epilogue: bool) -> bytes:
    mod = llvm.parse_assembly(ir_text)
    mod.triple = t.triple
    mod.data_layout = t.data_layout
    mod.verify()
    if debug:
        print(f"; ==== graphc LLVM IR ({title}) ====\n{ir_text}", file=sys.stderr)
    if optimize:
        t.optimize(mod, epilogue, 3 if optimize is True else int(optimize))
    if debug:
        print(f"; ==== graphc optimized IR ({title}) ====\n{mod}", file=sys.stderr)
        print(f"# ==== graphc assembly ({title}) ====\n{t.tm.emit_assembly(mod)}",
              file=sys.stderr)
    return t.tm.emit_object(mod)


def entry_name(key: str) -> str:
    """The symbol of the entry point cached under ``key`` (in this process and its .so)."""
    return "gk_" + key[:32]


def load_function(key: str, make_ir, debug=None, title: str = "", optimize: bool = True,
                  epilogue: bool = True) -> int:
    """The address, in this process, of the entry point of the code cached under ``key``.

    ``key`` comes from ``cache_key`` of everything the code is generated from; ``make_ir()``
    returns its IR text (entry point named PLACEHOLDER) and is only called on a cache miss or
    in debug mode. Lookup order: this process, the linked library (no LLVM), the object
    entry (loaded by MCJIT), a fresh compile. ``optimize=False``: no optimizer passes, only
    the code generator (``NOOPT_FLAGS``; the caller puts it in the key); an int: that
    optimizer level instead of 3 (the caller's key must cover it).
    ``epilogue``: let the loop vectorizer add vector epilogue loops (a function of what the
    key covers, e.g. codegen.vector_epilogue of the spec and variant).
    """
    debug = _debug_enabled(debug)
    name = entry_name(key)
    used[key] = None
    with _lock:
        addr = _loaded.get(name)
        if addr is not None and not debug:
            stats["memory_hits"] += 1
            return addr
        if addr is None and not debug:
            addr = _load_shared(key, name)
            if addr is not None:
                stats["disk_hits"] += 1
                stats["so_hits"] += 1
                _loaded[name] = addr
                return addr
        t = target()
        obj = None if debug else _read_entry(key)
        if obj is None:
            text = make_ir().replace(PLACEHOLDER, name)
            obj = _compile(t, text, debug, title or name, optimize, epilogue)
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
        _schedule_link(key, obj)             # the next process loads it without LLVM
        return addr


def _bundle_at_exit() -> None:
    """Registered at import, so it runs after every other exit hook of this module (atexit
    runs them last-registered first): the compile queue has drained by then."""
    from . import bundle
    try:
        bundle.write_at_exit()
    except Exception:                       # a cache we cannot write is only slower
        pass


atexit.register(_bundle_at_exit)
