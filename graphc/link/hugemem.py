"""Large arrays of compiled functions in blocks of 2 MiB pages, recycled across calls.

Fresh memory is expensive on this project's VMs: the kernel's first touch of a page costs
about 0.7 ms per MiB. The LSTM training step's first call makes ~32 MiB of arrays (its loops'
per-step buffers, gate activations, gradients) and spent 20-28 ms of system time on it, with
4 KiB pages (6,000-6,500 faults) and with transparent huge pages (~700 faults and 21 huge
ones) alike; numpy's allocator also gave ~400 fresh pages back and forth on every later call
(the gradients it returns). So this module

  * recycles: a block whose array and views are all gone goes to a free list and the next
    request takes it without a fault (the LSTM step: 0 faults per steady call);
  * lets a process map blocks ahead, on a thread of its own, when it knows which ones its
    calls will need (``map_ahead``; graphc/backend/llvm/bundle.py remembers them per graph);
  * asks for huge pages (``madvise(MADV_HUGEPAGE)``, honoured where
    ``/sys/kernel/mm/transparent_hugepage/enabled`` is ``always`` or ``madvise``): one fault
    per 2 MiB, 4x cheaper than 512 small ones when the kernel has recently freed huge pages
    at hand (7-9 ms instead of 31-35 ms for 32 MiB, measured), and fewer TLB misses.

    empty(shape, dtype)   like np.empty; arrays of HUGE_MIN bytes or more take a block of
                          whole 2 MiB pages, arrays of SLAB_MIN bytes or more a piece of
                          one (a slab of equal pieces), smaller ones come from numpy
    zeros(shape, dtype)   the same, zero-filled

Pieces: an array of SLAB_MIN..HUGE_MIN bytes takes a piece of its size class (``piece_size``:
four classes per octave, at most 25% more than asked), carved with its siblings from one
2 MiB page. numpy's allocator maps each such array afresh (glibc serves them with mmap) and
the kernel faults it in on first touch: the LeNet step's first call made 22 of them, 9 MiB,
and took ~2,600 faults in all (~240 with pieces). Pieces are recycled like blocks, and
mapped ahead like them; a page carved into pieces stays mapped (at most SLAB_BYTES of them).

Blocks are recycled: when an array and every view of it are gone, its block goes to a free
list (by size, at most CACHE_BYTES in all) and the next request of that size, or of at least
half that size, takes it. Arrays handed back by a compiled function and then dropped by the
caller are reused the same way; a scan's per-step buffers, allocated every call, too (the
linker frees them after their last use: the flag allow_gc).

An array made here is an ordinary ndarray whose ``base`` is the block's owner (so it does not
own its data: ``a.resize`` refuses, as for any view). The flag ``hugepages=False`` gives plain
np.empty everywhere; so does a platform without ``mmap`` through libc.
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading

import numpy as np

from graphc.configdefaults import config

PAGE = 2 << 20              # one transparent huge page (x86-64, arm64 with 4 KiB pages)
HUGE_MIN = 1 << 20          # smaller arrays take a piece of a page (a whole page would waste)
SLAB_MIN = 64 << 10         # smaller arrays come from numpy (glibc's heap, not fresh mmaps)
SLAB_BYTES = 64 << 20       # pages carved into pieces, at most; then numpy's allocator
CACHE_BYTES = 256 << 20     # free blocks kept for reuse; beyond that they are unmapped

stats = {"mapped": 0, "reused": 0, "unmapped": 0, "ahead": 0}

_PROT_RW = 0x1 | 0x2
_MAP_PRIVATE_ANON = 0x02 | 0x20
_MADV_HUGEPAGE = 14
_MAP_FAILED = ctypes.c_void_p(-1).value


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()
_lock = threading.Lock()
_owner = [None]             # the thread holding _lock
_returned: list = []        # (address, size) freed while their thread held _lock
_free: dict = {}            # block size -> [address, ...] (most recently freed last)
_cached = [0]               # bytes in _free
_pieces: dict = {}          # piece size -> [address, ...] of free pieces
_slab_bytes = [0]           # bytes of the pages carved into pieces


class _Locked:
    """``with _locked:`` holds _lock and files the blocks freed meanwhile. A block's owner
    can die while its thread holds the lock (the cycle collector runs on any allocation):
    ``_give_back`` then only notes it in ``_returned``, never waits for itself."""

    def __enter__(self):
        _lock.acquire()
        _owner[0] = threading.get_ident()

    def __exit__(self, *exc):
        while _returned:
            _file(*_returned.pop())
        _owner[0] = None
        _lock.release()


_locked = _Locked()


def _new_lock_in_child():
    """A child forked while another thread held _lock would wait on it forever."""
    global _lock
    _lock = threading.Lock()
    _owner[0] = None
    _returned.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def _map(size: int):
    """A new block of ``size`` bytes (a multiple of PAGE) aligned to PAGE, or None."""
    raw = _LIBC.mmap(None, size + PAGE, _PROT_RW, _MAP_PRIVATE_ANON, -1, 0)
    if raw is None or raw == _MAP_FAILED:
        return None
    addr = (raw + PAGE - 1) & ~(PAGE - 1)
    if addr > raw:                          # unmap the unaligned head and the spare tail
        _LIBC.munmap(raw, addr - raw)
    if raw + PAGE > addr:
        _LIBC.munmap(addr + size, raw + PAGE - addr)
    _LIBC.madvise(addr, size, _MADV_HUGEPAGE)     # advice only: a refusal changes nothing
    stats["mapped"] += 1
    return addr


def _take(size: int):
    """(address, size, fresh) of a block of at least ``size`` bytes: the smallest freed one
    of at most twice that size if any, else a new one."""
    with _locked:
        fits = [s for s, blocks in _free.items() if size <= s <= 2 * size and blocks]
        if fits:
            got = min(fits)
            _cached[0] -= got
            stats["reused"] += 1
            addr = _free[got].pop()
            if addr in _ahead:
                _ahead.discard(addr)
                needed.append(got)
            return addr, got, False
    addr = _map(size)
    if addr is not None:
        needed.append(size)
    return addr, size, True


def piece_size(n: int) -> int:
    """The size class of an array of ``n`` bytes (SLAB_MIN <= n < HUGE_MIN): ``n`` rounded up
    to a multiple of an eighth of the smallest power of two >= n (four classes per octave)."""
    step = 1 << ((n - 1).bit_length() - 3)
    return -(-n // step) * step


def _take_piece(size: int):
    """(address, fresh) of a free piece of class ``size``, else of a new page carved into
    pieces of that size (its other pieces filed); (None, False) past SLAB_BYTES."""
    with _locked:
        free = _pieces.get(size)
        if free:
            stats["reused"] += 1
            addr = free.pop()
            page = addr & ~(PAGE - 1)
            if page in _ahead:              # the first piece taken of a page mapped ahead
                _ahead.discard(page)
                needed.append(size)
            return addr, False
        if _slab_bytes[0] + PAGE > SLAB_BYTES:
            return None, False
        _slab_bytes[0] += PAGE
    base = _map(PAGE)
    with _locked:
        if base is None:
            _slab_bytes[0] -= PAGE
            return None, False
        needed.append(size)
        _pieces.setdefault(size, []).extend(base + k * size for k in range(1, PAGE // size))
    return base, True


# ------------------------------------------------------------------ blocks mapped ahead
# A process that loads a cached graph learns from the earlier process that built it which
# blocks its calls needed (graphc/backend/llvm/bundle.py keeps the list with the graph), and
# has them mapped and faulted in here, on a thread of their own, while it links the graph:
# the kernel's page faults (~0.7 ms per MiB on this project's VMs, whatever the page size)
# then happen on the other core, not in the first call.
# sizes of the blocks this process needed (mapped or taken ahead); a size under PAGE: a page
# carved into pieces of that size
needed: list = []
_ahead: set = set()         # addresses of the blocks and pages mapped ahead, not taken yet
AHEAD_BYTES = 128 << 20     # at most this much is mapped ahead
_MADV_POPULATE_WRITE = 23   # Linux 5.14: fault the pages in, writable, in one call


def _span(size: int) -> int:
    """Bytes mapped for an entry of ``needed``: a block, or the page of a piece size; 0 for
    anything else (a damaged note)."""
    if size >= PAGE:
        return size if size % PAGE == 0 else 0
    return PAGE if SLAB_MIN <= size < HUGE_MIN and piece_size(size) == size else 0


def map_ahead(sizes) -> None:
    """Map and fault in blocks of ``sizes`` (entries of an earlier process's ``needed``, in
    the order they will be needed) on a new thread and put them in the free lists; at most
    AHEAD_BYTES, once per process."""
    if _LIBC is None or not config.hugepages or stats.get("ahead") or not sizes:
        return
    sizes = [int(s) for s in sizes if _span(int(s))]
    total, todo = 0, []
    for s in sizes:
        if total + _span(s) > min(AHEAD_BYTES, CACHE_BYTES):
            break
        todo.append(s)
        total += _span(s)
    stats["ahead"] = len(todo)
    threading.Thread(target=_map_ahead, args=(todo,), name="graphc-map-ahead",
                     daemon=True).start()


def _map_ahead(sizes) -> None:
    """One mapping for all the blocks, faulted in the order the earlier process first needed
    them, each block filed as soon as it is ready. One page per madvise call: the call holds
    the process's mmap lock, and while it does every other thread's mmap waits, thread
    starts and dlopen included (one 16 MiB call made a thread start on the caller's side
    wait ~50 ms; measured)."""
    base = _map(sum(map(_span, sizes)))
    if base is None:
        return
    for size in sizes:
        span = _span(size)
        for off in range(0, span, PAGE):
            if _LIBC.madvise(base + off, PAGE, _MADV_POPULATE_WRITE) != 0:
                ctypes.memset(base + off, 0, PAGE)
        with _locked:
            _ahead.add(base)
            if size < PAGE:                 # a page of pieces
                _slab_bytes[0] += PAGE
                _pieces.setdefault(size, []).extend(base + k * size
                                                    for k in range(PAGE // size))
            else:
                _file(base, size)
        base += span


def _give_back(addr: int, size: int) -> None:
    if _owner[0] == threading.get_ident():
        _returned.append((addr, size))
        return
    with _locked:
        _file(addr, size)


def _file(addr: int, size: int) -> None:
    """Put a block in the free lists, or unmap it when they are full; a piece in its class's
    list (_lock held)."""
    if size < PAGE:
        _pieces.setdefault(size, []).append(addr)
    elif _cached[0] + size <= CACHE_BYTES:
        _free.setdefault(size, []).append(addr)
        _cached[0] += size
    else:
        stats["unmapped"] += 1
        _ahead.discard(addr)                # its address may be mapped again, afresh
        _LIBC.munmap(addr, size)


class _Block:
    """Owns one block while an array (or a view of it) refers to it."""

    __slots__ = ("addr", "size", "__array_interface__")

    def __init__(self, addr, size, shape, dtype):
        self.addr, self.size = addr, size
        self.__array_interface__ = {"data": (addr, False), "shape": shape,
                                    "typestr": dtype.str, "version": 3}

    def __del__(self):
        try:
            _give_back(self.addr, self.size)
        except Exception:                   # interpreter shutdown: the OS takes it back
            pass


def _alloc(shape, dtype, zero: bool) -> np.ndarray:
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(map(int, shape))
    n = dtype.itemsize
    for s in shape:
        n *= s
    plain = np.zeros if zero else np.empty
    if n < SLAB_MIN or _LIBC is None or dtype.hasobject or not config.hugepages:
        return plain(shape, dtype)
    if n < HUGE_MIN:
        size = piece_size(n)
        addr, fresh = _take_piece(size)
    else:
        addr, size, fresh = _take(-(-n // PAGE) * PAGE)
    if addr is None:
        return plain(shape, dtype)
    a = np.asarray(_Block(addr, size, shape, dtype))
    if zero and not fresh:                  # a new mapping is zero already
        a.fill(0)
    return a


def empty(shape, dtype=np.float64) -> np.ndarray:
    """np.empty(shape, dtype), in recycled huge pages when it is SLAB_MIN bytes or more."""
    return _alloc(shape, dtype, False)


def zeros(shape, dtype=np.float64) -> np.ndarray:
    """np.zeros(shape, dtype), in recycled huge pages when it is SLAB_MIN bytes or more."""
    return _alloc(shape, dtype, True)


def allocator(nbytes: int):
    """The function ``empty`` would end up calling for arrays of ``nbytes``: np.empty below
    SLAB_MIN (or with huge pages off), else ``empty``. For callers that allocate the same
    size over and over (the linker's fused steps) and skip ``empty``'s checks that way."""
    if nbytes < SLAB_MIN or _LIBC is None or not config.hugepages:
        return np.empty
    return empty


def empty_like(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array of ``a``'s shape and dtype (see ``empty``)."""
    return empty(a.shape, a.dtype)


def release_cache() -> int:
    """Unmap every free block now; returns the bytes given back to the system. Pages carved
    into pieces stay: a page goes back only as a whole, and its pieces are recycled."""
    with _locked:
        blocks = [(addr, size) for size, addrs in _free.items() for addr in addrs]
        _ahead.difference_update(addr for addr, _ in blocks)
        _free.clear()
        _cached[0] = 0
    for addr, size in blocks:
        _LIBC.munmap(addr, size)
        stats["unmapped"] += 1
    return sum(size for _, size in blocks)
