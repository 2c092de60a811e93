"""Packed weights for a loop's products (graphc/scan_module/pack.py, graphc/tensor/packed.py,
graphc/backend/llvm/packgemm.py): the kernel against numpy on every edge of its blocking, the
ops, and the scan_pack rewrite's graphs and results (the spin pool it runs on:
tests/backend/test_spinpool.py)."""

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.graph.basic import io_toposort
from graphc.scan_module import Scan
from graphc.tensor.math import Dot
from graphc.tensor.packed import PANEL, PackedDot, PackWeights, pack_weights

from test_scan_store import lstm

FAST = graphc.Mode(optimizer="fast_run")
NO_PACK = FAST.excluding("scan_pack")
PY = graphc.Mode(linker="py", optimizer="fast_run")


def _f32(a):
    return np.asarray(a, dtype=np.float32)


# ------------------------------------------------------------------ layout and the ops
@pytest.mark.parametrize("k,n", [(1, 1), (3, 16), (5, 17), (7, 40), (0, 5), (4, 0)])
@pytest.mark.parametrize("trans", [False, True])
def test_pack_weights_layout(k, n, trans):
    b = np.arange(k * n, dtype=np.float32).reshape(k, n) + 1
    w = b.T.copy() if trans else b
    p = pack_weights(w, trans)
    assert p.shape == (-(-n // PANEL), k, PANEL) and p.dtype == np.float32
    for j in range(n):
        np.testing.assert_array_equal(p[j // PANEL, :, j % PANEL], b[:, j])
    if n % PANEL:
        assert (p[-1, :, n % PANEL:] == 0).all()


@pytest.mark.parametrize("trans", [False, True])
def test_packed_ops_reference(trans):
    rng = np.random.default_rng(0)
    a, w = T.matrix("a", dtype="float32"), T.matrix("w", dtype="float32")
    wp = PackWeights(trans)(w)
    out = PackedDot(trans)(a, w, wp)
    f = graphc.function([a, w], [out, wp], mode=PY)
    av = _f32(rng.standard_normal((5, 7)))
    wv = _f32(rng.standard_normal((9, 7) if trans else (7, 9)))
    r, p = f(av, wv)
    np.testing.assert_allclose(r, av @ (wv.T if trans else wv), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(p, pack_weights(wv, trans))
    shapes = graphc.function([a, w], [out.shape, wp.shape], mode=PY)(av, wv)
    assert tuple(shapes[0]) == r.shape and tuple(shapes[1]) == p.shape


def test_packed_ops_errors():
    a, w = T.matrix("a", dtype="float32"), T.matrix("w", dtype="float32")
    with pytest.raises(TypeError, match="float32 matrix"):
        PackWeights()(T.matrix("w64", dtype="float64"))
    f = graphc.function([a, w], PackedDot()(a, w, PackWeights()(w)))
    with pytest.raises(ValueError, match=r"PackedDot.*inner dimensions differ \(3 vs 4\)"):
        f(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))


# ------------------------------------------------------------------ the native kernel
def _pool_code():
    """Load the code a split needs now (else it is prefetched and splits wait for it)."""
    from graphc.backend.llvm import packgemm, spinpool
    if spinpool.usable(1):
        spinpool._functions()
        spinpool.kernel_slice()
        packgemm._load(True)


def _product(m, k, n, trans, split, threads=2, seed=0):
    from graphc.backend.llvm.packgemm import PackedProduct
    _pool_code()
    rng = np.random.default_rng(seed)
    a = _f32(rng.standard_normal((m, k)))
    w = _f32(rng.standard_normal((n, k) if trans else (k, n)))
    out = np.full((m, n), np.nan, np.float32)
    pp = PackedProduct()
    pp.ways.force(split)                  # the way under test
    pp(a, pack_weights(w, trans), n, out, threads)
    ref = a.astype(np.float64) @ (w.T if trans else w).astype(np.float64)
    return out, ref


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 8, 9, 32])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 64, 100])
@pytest.mark.parametrize("split", [False, True])
def test_packed_kernel_blocks(m, n, split):
    # every row tail (M % 4), every panel tail (N % 16), one thread and split panels
    out, ref = _product(m, 37, n, False, split)
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("split", [False, True])
def test_packed_kernel_lstm_shapes(trans, split):
    m, k, n = (32, 1024, 256) if trans else (32, 256, 1024)
    out, ref = _product(m, k, n, trans, split)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)


def test_packed_kernel_empty_and_strided():
    from graphc.backend.llvm.packgemm import PackedProduct
    out, ref = _product(3, 0, 20, False, False)
    np.testing.assert_array_equal(out, np.zeros((3, 20)))
    rng = np.random.default_rng(1)
    big = _f32(rng.standard_normal((6, 40)))
    a = big[:, 3:27]                       # row stride 40, unit columns: used in place
    w = _f32(rng.standard_normal((24, 33)))
    out = np.empty((6, 33), np.float32)
    PackedProduct()(a, pack_weights(w, False), 33, out, 1)
    np.testing.assert_allclose(out, a @ w, rtol=1e-5, atol=1e-5)
    out2 = np.empty((6, 33), np.float32)
    PackedProduct()(big[:, 3:27:2][:, :12].repeat(2, axis=1), pack_weights(w, False), 33,
                    out2, 1)                # a copy of a non-unit-stride operand
    np.testing.assert_allclose(out2, big[:, 3:27:2][:, :12].repeat(2, axis=1) @ w,
                               rtol=1e-5, atol=1e-5)


def test_packed_product_adapts():
    """Both ways get timed, and the recorded averages choose the way of later calls."""
    from graphc.backend.llvm.packgemm import PackedProduct
    rng = np.random.default_rng(2)
    a = _f32(rng.standard_normal((8, 64)))
    bp = pack_weights(_f32(rng.standard_normal((64, 128))), False)
    out = np.empty((8, 128), np.float32)
    _pool_code()
    pp = PackedProduct()
    for _ in range(40):
        pp(a, bp, 128, out, 2)
    assert pp.ways.cost[0] > 0 and pp.ways.cost[1] > 0
    np.testing.assert_allclose(out, a @ pack_weights(bp.transpose(1, 0, 2).reshape(64, -1),
                                                     False).transpose(1, 0, 2).reshape(64, -1),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the rewrite
def _scan_nodes(f):
    return [n for n in f.maker.fgraph.toposort() if isinstance(n.op, Scan)]


def _inner(node, cls):
    return [n for n in io_toposort(node.op.inner_inputs, node.op.inner_outputs)
            if isinstance(n.op, cls)]


def _lstm_function(fmode, H=32, dtype="float32", **scan_kw):
    x = T.tensor3("x", dtype=dtype)
    Wx, Wh = T.matrix("Wx", dtype=dtype), T.matrix("Wh", dtype=dtype)
    b = T.vector("b", dtype=dtype)
    hs, cs = lstm(x, Wx, Wh, b, H, **scan_kw)
    loss = (hs[-1] ** 2).sum() + (hs * cs).sum() * 0.1
    return graphc.function([x, Wx, Wh, b], [loss] + graphc.grad(loss, [x, Wx, Wh, b]),
                           mode=fmode)


def _lstm_values(dtype="float32", H=32, steps=5, batch=6, n_in=8, seed=0):
    rng = np.random.default_rng(seed)
    return [np.asarray(v, dtype) for v in (
        rng.standard_normal((steps, batch, n_in)), rng.standard_normal((n_in, 4 * H)) / 4,
        rng.standard_normal((H, 4 * H)) / np.sqrt(H), rng.uniform(-0.1, 0.1, 4 * H))]


def test_scan_pack_graph_and_values():
    f = _lstm_function(FAST)
    fwd, bwd = _scan_nodes(f)
    # the forward step's h @ Wh, the backward step's dz @ Wh.T and dz @ Wx.T (the
    # gradient of the input sequence) read packed panels
    assert [n.op.trans for n in _inner(fwd, PackedDot)] == [False]
    assert sorted((n.inputs[1].name, n.op.trans) for n in _inner(bwd, PackedDot)) == \
        [("Wh", True), ("Wx", True)]
    assert not _inner(fwd, Dot) and not _inner(bwd, Dot)
    packs = [n for n in f.maker.fgraph.toposort() if isinstance(n.op, PackWeights)]
    assert sorted(n.op.trans for n in packs) == [False, True, True]
    vals = _lstm_values()
    got = f(*vals)
    ref = _lstm_function(NO_PACK)(*vals)
    pyref = _lstm_function(PY)(*vals)
    for g, r, p in zip(got, ref, pyref):
        np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(g, p, rtol=2e-4, atol=2e-5)
    again = f(*_lstm_values(seed=1))           # new weights: packed again, not reused
    for g, r in zip(again, _lstm_function(NO_PACK)(*_lstm_values(seed=1))):
        np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-5)


def test_scan_pack_applies_only_where_it_pays():
    # (a loop's step runs in the scan's own mode, by default the configured one, whatever
    # the linker of the function around it)
    for f in (_lstm_function(FAST, mode=PY), _lstm_function(FAST, dtype="float64")):
        for node in _scan_nodes(f):
            assert not _inner(node, PackedDot)


def test_scan_pack_shared_weight_updated_between_calls():
    """A shared weight changed by an update is packed from its new value at the next call."""
    rng = np.random.default_rng(3)
    H = 32
    x = graphc.shared(_f32(rng.standard_normal((4, 2, H))), name="x")
    W = graphc.shared(_f32(rng.standard_normal((H, H)) / np.sqrt(H)), name="W")
    hs, _ = graphc.scan(lambda x_t, h, W: T.tanh(x_t + T.dot(h, W)), sequences=x,
                        outputs_info=[T.zeros((2, H), dtype="float32")], non_sequences=[W])
    loss = (hs[-1] ** 2).sum()
    g = graphc.grad(loss, W)
    step = graphc.function([], loss, updates=[(W, W - 0.5 * g)])
    check = graphc.function([], loss, mode=PY)
    assert any(_inner(n, PackedDot) for n in _scan_nodes(step))
    for _ in range(3):
        expected = check()
        np.testing.assert_allclose(step(), expected, rtol=1e-5)
