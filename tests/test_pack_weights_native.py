"""The native packing of weights (graphc/backend/llvm/packweights.py) and PackWeights' native
step (graphc/link/llvm_packed.py): the same panels as numpy's pack_weights on every edge of
the layout, into a buffer kept across calls."""

import threading
import time

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.backend.llvm import packweights
from graphc.tensor.packed import PackedDot, PackWeights, pack_weights

FAST = graphc.Mode(optimizer="fast_run")


def _f32(a):
    return np.asarray(a, dtype=np.float32)


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 16), (5, 17), (7, 40), (9, 8), (16, 9),
                                       (33, 70), (256, 1024), (1024, 256), (0, 5), (4, 0)])
@pytest.mark.parametrize("trans", [False, True])
def test_native_pack_matches_numpy(rows, cols, trans):
    # every K tail (K % 8) and panel tail (N % 16), both layouts
    w = _f32(np.random.default_rng(0).standard_normal((rows, cols)))
    ref = pack_weights(w, trans)
    out = np.full(ref.shape, np.nan, np.float32)
    packweights.pack_into(w, trans, out, packweights._load())
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("trans", [False, True])
def test_native_pack_strided_weights(trans):
    big = _f32(np.random.default_rng(1).standard_normal((40, 50)))
    fn = packweights._load()
    for w in (big[3:30, 5:38],             # row stride 50: read in place
              big[3:30:2, 5:38],           # row stride 100
              big[5:38, 3:30].T,           # column stride 50: copied first
              big[3:30, 5:38:3]):          # column stride 3: copied first
        ref = pack_weights(w, trans)
        out = np.full(ref.shape, np.nan, np.float32)
        packweights.pack_into(w, trans, out, fn)
        np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("trans", [False, True])
def test_pack_weights_step(trans):
    packweights._load()
    rng = np.random.default_rng(2)
    w = T.matrix("w", dtype="float32")
    f = graphc.function([w], PackWeights(trans)(w), mode=FAST)
    for shape in [(24, 40), (24, 40), (7, 33), (24, 40)]:
        wv = _f32(rng.standard_normal(shape))
        np.testing.assert_array_equal(f(wv), pack_weights(wv, trans))


def test_pack_weights_step_kept_buffer():
    """Inside a graph the packed panels live in a buffer kept across calls: each call's
    product reads that call's weight."""
    packweights._load()
    rng = np.random.default_rng(3)
    a, w = T.matrix("a", dtype="float32"), T.matrix("w", dtype="float32")
    f = graphc.function([a, w], PackedDot(True)(a, w, PackWeights(True)(w)), mode=FAST)
    for shape in [(20, 9), (20, 9), (33, 9), (20, 9)]:
        av, wv = _f32(rng.standard_normal((5, 9))), _f32(rng.standard_normal(shape))
        np.testing.assert_allclose(f(av, wv), av @ wv.T, rtol=1e-5, atol=1e-5)


def test_packer_compiles_in_background(monkeypatch):
    """On a cold cache the first call packs with numpy and compiles nothing; the second
    starts the compile on another thread and packs with numpy meanwhile; later calls use
    the kernel."""
    release = threading.Event()
    real = packweights._load

    def slow_load():
        release.wait(5)
        return real()
    monkeypatch.setattr(packweights, "_state", {"fn": None, "status": "new"})
    monkeypatch.setattr(packweights.jit, "linked", lambda key: False)
    monkeypatch.setattr(packweights, "_load", slow_load)
    w = T.matrix("w", dtype="float32")
    f = graphc.function([w], PackWeights()(w), mode=FAST)
    wv = _f32(np.random.default_rng(4).standard_normal((10, 20)))
    np.testing.assert_array_equal(f(wv), pack_weights(wv, False))       # numpy
    assert packweights._state["status"] == "new"
    np.testing.assert_array_equal(f(wv), pack_weights(wv, False))       # numpy, meanwhile
    assert packweights._state["status"] == "loading" and packweights.packer() is None
    release.set()
    for _ in range(500):
        if packweights._state["fn"] is not None:
            break
        time.sleep(0.01)
    assert packweights.packer() is not None
    np.testing.assert_array_equal(f(wv), pack_weights(wv, False))


def test_packer_failed_compile_keeps_numpy(monkeypatch):
    """A compile that fails leaves numpy packing for the rest of the process, with no retry
    per call."""
    tries = []

    def broken():
        tries.append(1)
        raise RuntimeError("no LLVM today")
    monkeypatch.setattr(packweights, "_state", {"fn": None, "status": "new"})
    monkeypatch.setattr(packweights.jit, "linked", lambda key: False)
    monkeypatch.setattr(packweights, "_load", broken)
    w = T.matrix("w", dtype="float32")
    f = graphc.function([w], PackWeights(True)(w), mode=FAST)
    wv = _f32(np.random.default_rng(5).standard_normal((10, 20)))
    for _ in range(2):
        np.testing.assert_array_equal(f(wv), pack_weights(wv, True))
    for _ in range(500):
        if packweights._state["status"] == "failed":
            break
        time.sleep(0.01)
    for _ in range(3):
        np.testing.assert_array_equal(f(wv), pack_weights(wv, True))
    assert packweights._state["status"] == "failed" and tries == [1]
