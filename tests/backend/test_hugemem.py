"""graphc/link/hugemem.py: large arrays in 2 MiB pages, recycled when the last view is gone."""
import pickle
import sys

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.configdefaults import config
from graphc.link import hugemem

pytestmark = pytest.mark.skipif(hugemem._LIBC is None, reason="needs mmap through libc")

BIG = (512, 1024)               # 2 MiB of float32, 4 MiB of float64


@pytest.fixture(autouse=True)
def _empty_cache():
    hugemem.release_cache()
    yield
    hugemem.release_cache()


def test_large_arrays_take_aligned_blocks_small_ones_come_from_numpy():
    a = hugemem.empty(BIG, np.float32)
    assert a.shape == BIG and a.dtype == np.float32 and a.flags.c_contiguous
    assert a.flags.writeable and isinstance(a.base, hugemem._Block)
    assert a.ctypes.data % hugemem.PAGE == 0
    small = hugemem.empty((10, 10), np.float32)
    assert small.base is None and small.shape == (10, 10)
    assert hugemem.empty(7, np.int64).shape == (7,)
    assert hugemem.empty(hugemem.HUGE_MIN, np.uint8).base is not None


def test_a_dropped_block_is_reused_and_zeros_clears_it():
    a = hugemem.empty(BIG, np.float32)
    addr = a.ctypes.data
    a.fill(7.0)
    del a
    before = dict(hugemem.stats)
    b = hugemem.zeros(BIG, np.float32)
    assert b.ctypes.data == addr
    assert hugemem.stats["reused"] == before["reused"] + 1
    assert not b.any()
    c = hugemem.zeros(BIG, np.float32)          # a new mapping, zero from the system
    assert c.ctypes.data != addr and not c.any()


def test_a_view_keeps_its_block():
    a = hugemem.empty(BIG, np.float64)
    a[...] = np.arange(a.size).reshape(BIG)
    view = a[100:, ::3]
    addr = a.ctypes.data
    del a
    b = hugemem.empty(BIG, np.float64)
    assert b.ctypes.data != addr
    b.fill(-1)
    np.testing.assert_array_equal(view[0, :4], [100 * 1024 + 0, 100 * 1024 + 3,
                                                100 * 1024 + 6, 100 * 1024 + 9])
    del view
    assert hugemem.empty(BIG, np.float64).ctypes.data == addr


def test_blocks_beyond_the_cache_are_unmapped(monkeypatch):
    monkeypatch.setattr(hugemem, "CACHE_BYTES", hugemem.PAGE)
    a, b = hugemem.empty(BIG, np.float32), hugemem.empty(BIG, np.float32)
    unmapped = hugemem.stats["unmapped"]
    del a, b
    assert hugemem.stats["unmapped"] == unmapped + 1
    assert hugemem.release_cache() == hugemem.PAGE


def test_the_flag_gives_plain_numpy_arrays():
    with config.change_flags(hugepages=False):
        assert hugemem.empty(BIG, np.float32).base is None
        assert hugemem.zeros(BIG, np.float32).base is None


def test_arrays_behave_like_numpy_ones():
    a = hugemem.empty(BIG, np.float32)
    a[...] = 1.5
    back = pickle.loads(pickle.dumps(a))
    assert back.base is None or not isinstance(back.base, hugemem._Block)
    np.testing.assert_array_equal(back, a)
    with pytest.raises(ValueError):
        a.resize((10,))                         # it does not own its data, like a view
    assert sys.getrefcount(a.base) >= 2


def test_function_outputs_are_recycled_across_calls():
    x = T.matrix("x", dtype="float32")
    f = graphc.function([x], T.tanh(x) * 2 + 1)
    v = np.random.default_rng(0).standard_normal(BIG).astype(np.float32)
    want = np.tanh(v) * 2 + 1
    for _ in range(3):
        out = f(v)
        assert isinstance(out.base, hugemem._Block)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
        del out
    kept = f(v)
    again = f(v)                                # kept is alive: a different block
    assert kept.ctypes.data != again.ctypes.data
    np.testing.assert_allclose(kept, want, rtol=1e-6, atol=1e-6)
    assert hugemem.stats["reused"] > 0


def test_blocks_mapped_ahead_are_taken_without_a_fault(monkeypatch):
    import time
    monkeypatch.setitem(hugemem.stats, "ahead", 0)
    monkeypatch.setattr(hugemem, "_ahead", set())
    monkeypatch.setattr(hugemem, "needed", [])
    hugemem.map_ahead([2 * hugemem.PAGE, hugemem.PAGE, 5])     # 5: not a block size
    assert hugemem.stats["ahead"] == 2
    deadline = time.time() + 20
    while len(hugemem._ahead) < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert len(hugemem._ahead) == 2
    mapped = hugemem.stats["mapped"]
    a = hugemem.empty((3 << 20) // 4, np.float32)      # 3 MiB: the 4 MiB block
    b = hugemem.empty(BIG, np.float32)
    assert hugemem.stats["mapped"] == mapped and not hugemem._ahead
    assert sorted(hugemem.needed) == [hugemem.PAGE, 2 * hugemem.PAGE]
    hugemem.map_ahead([hugemem.PAGE])                   # once per process
    assert hugemem.stats["ahead"] == 2
    del a, b


def test_a_block_freed_while_its_thread_holds_the_lock_is_filed_afterwards():
    """The cycle collector may free an array inside the allocator's own critical section:
    that must neither deadlock nor lose the block."""
    import gc
    a = hugemem.empty(BIG, np.float32)
    addr = a.ctypes.data
    cycle = [a]
    cycle.append(cycle)                     # only the collector frees it
    del a, cycle
    with hugemem._locked:
        gc.collect()
        assert hugemem._returned
    assert not hugemem._returned
    assert addr in hugemem._free[hugemem.PAGE]


def test_a_child_forked_while_the_lock_is_held_can_allocate():
    import os
    if not hasattr(os, "fork"):
        return
    with hugemem._locked:                   # this thread holds the lock while it forks
        pid = os.fork()
        if pid == 0:                        # the child: allocate, free, exit
            try:
                a = hugemem.empty(BIG, np.float32)
                a.fill(1.0)
                del a
                os._exit(0 if hugemem._free else 3)
            except BaseException:
                os._exit(2)
    import signal
    import time
    deadline = time.time() + 30
    while True:                             # a child stuck on the lock fails, not hangs
        done, status = os.waitpid(pid, os.WNOHANG)
        if done or time.time() > deadline:
            break
        time.sleep(0.01)
    if not done:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("n", [hugemem.SLAB_MIN, hugemem.SLAB_MIN + 1, 100_000, 131_073,
                               600_000, hugemem.HUGE_MIN - 1])
def test_piece_classes_round_up_by_at_most_a_quarter_and_fit_a_page(n):
    size = hugemem.piece_size(n)
    assert n <= size <= 1.25 * n and hugemem.PAGE // size >= 2
    assert hugemem.piece_size(size) == size


def test_mid_sized_arrays_take_recycled_pieces_of_one_page(monkeypatch):
    monkeypatch.setattr(hugemem, "_pieces", {})
    monkeypatch.setattr(hugemem, "needed", [])
    a = hugemem.empty((250, 100), np.float32)           # 100,000 bytes: class 114,688
    size = hugemem.piece_size(100_000)
    assert isinstance(a.base, hugemem._Block) and a.ctypes.data % hugemem.PAGE % size == 0
    assert hugemem.needed == [size]                     # one page carved
    siblings = [hugemem.zeros((250, 100), np.float32) for _ in range(hugemem.PAGE // size - 1)]
    pages = {x.ctypes.data & ~(hugemem.PAGE - 1) for x in [a] + siblings}
    assert len(pages) == 1 and hugemem.needed == [size]
    assert len({x.ctypes.data for x in [a] + siblings}) == hugemem.PAGE // size
    a.fill(3.0)
    addr = a.ctypes.data
    del a
    b = hugemem.zeros((250, 100), np.float32)           # the freed piece, cleared
    assert b.ctypes.data == addr and not b.any()
    c = hugemem.empty(100_000, np.uint8)                # the page is full: a second one
    assert c.ctypes.data & ~(hugemem.PAGE - 1) not in pages
    assert hugemem.needed == [size, size]
    assert hugemem.empty(hugemem.SLAB_MIN - 1, np.uint8).base is None


def test_past_the_slab_budget_pieces_come_from_numpy(monkeypatch):
    monkeypatch.setattr(hugemem, "_pieces", {})
    monkeypatch.setattr(hugemem, "_slab_bytes", [hugemem.SLAB_BYTES])
    a = hugemem.empty(200_000, np.uint8)
    assert a.base is None and a.shape == (200_000,)


def test_pages_of_pieces_mapped_ahead_are_taken_without_a_fault(monkeypatch):
    import time
    monkeypatch.setitem(hugemem.stats, "ahead", 0)
    monkeypatch.setattr(hugemem, "_ahead", set())
    monkeypatch.setattr(hugemem, "needed", [])
    monkeypatch.setattr(hugemem, "_pieces", {})
    size = hugemem.piece_size(300_000)
    hugemem.map_ahead([size, hugemem.PAGE, 300_001])     # 300,001: not a piece class
    assert hugemem.stats["ahead"] == 2
    deadline = time.time() + 20
    while len(hugemem._ahead) < 2 and time.time() < deadline:
        time.sleep(0.01)
    mapped = hugemem.stats["mapped"]
    pieces = [hugemem.empty(300_000, np.uint8) for _ in range(hugemem.PAGE // size)]
    assert hugemem.stats["mapped"] == mapped
    assert hugemem.needed == [size]                     # the page counts once
    assert len(hugemem._ahead) == 1                     # the block is not taken yet
    del pieces


def test_a_fused_output_takes_numpys_allocator_below_the_piece_sizes():
    """The linker's one-output fused step allocates with np.empty itself when the output is
    under SLAB_MIN (hugemem.empty's checks cost more than the kernel of a small op), and
    switches when the next call's shape is large."""
    x = T.fvector("x")
    f = graphc.function([x], T.tanh(x) * 2 + 1)
    small = f(np.ones(10, np.float32))
    assert small.base is None
    np.testing.assert_allclose(small, np.tanh(1.0) * 2 + 1, rtol=1e-6)
    big = f(np.ones(hugemem.SLAB_MIN, np.float32))          # 256 KiB
    assert isinstance(big.base, hugemem._Block)
    np.testing.assert_allclose(big, np.tanh(1.0) * 2 + 1, rtol=1e-6)
    assert f(np.ones(3, np.float32)).base is None
