"""PackedDot's addends (graphc/tensor/packed.py): ``a @ W + e1 + e2`` added in the packed
kernel's store (graphc/backend/llvm/packgemm.py), the op's reference and checks, and the
scan_pack rewrite that hands a step's sum to it (graphc/scan_module/pack.py)."""

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.graph.basic import io_toposort
from graphc.scan_module import Scan
from graphc.tensor.elemwise import Elemwise
from graphc.tensor.fused import Fused
from graphc.tensor.packed import PackedDot, PackWeights, pack_weights
from graphc.tensor.type import TensorType

from test_scan_pack import _lstm_function, _lstm_values, _pool_code

FAST = graphc.Mode(optimizer="fast_run")
NO_PACK = FAST.excluding("scan_pack")
PY = graphc.Mode(linker="py", optimizer="fast_run")


def _f32(a):
    return np.asarray(a, dtype=np.float32)


# ------------------------------------------------------------------ the native kernel
def _with_addends(m, k, n, rows, split, seed=0):
    """The kernel's a @ W + e1 (+ e2) against float64 numpy; ``rows``: each addend's row
    count (m, or 1 for a broadcast row)."""
    from graphc.backend.llvm.packgemm import PackedProduct
    _pool_code()
    rng = np.random.default_rng(seed)
    a = _f32(rng.standard_normal((m, k)))
    w = _f32(rng.standard_normal((k, n)))
    adds = [_f32(rng.standard_normal((r, n))) for r in rows]
    out = np.full((m, n), np.nan, np.float32)
    pp = PackedProduct()
    pp.ways.force(split)                  # the way under test
    pp(a, pack_weights(w, False), n, out, 2, adds)
    ref = a.astype(np.float64) @ w.astype(np.float64)
    for e in adds:
        ref = ref + e
    return out, ref


@pytest.mark.parametrize("m", [1, 3, 4, 5, 9, 32])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 100])
@pytest.mark.parametrize("rows", [(None,), (None, 1), (1,), (1, None)])
def test_kernel_addends(m, n, rows):
    # every row tail (M % 4), panel tail (N % 16), full and broadcast addends
    out, ref = _with_addends(m, 37, n, [m if r is None else r for r in rows], False)
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("k", [255, 300, 1024])
@pytest.mark.parametrize("split", [False, True])
def test_kernel_addends_long_k_and_split(k, split):
    # the LSTM's backward depth, and panels split over the spin pool
    out, ref = _with_addends(7, k, 70, [7, 1], split)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)


def test_kernel_addends_empty_k_and_strided():
    from graphc.backend.llvm.packgemm import PackedProduct
    out, ref = _with_addends(3, 0, 20, [3, 1], False)
    np.testing.assert_array_equal(out, ref.astype(np.float32))
    rng = np.random.default_rng(4)
    a, w = _f32(rng.standard_normal((5, 8))), _f32(rng.standard_normal((8, 33)))
    big = _f32(rng.standard_normal((5, 80)))
    e1 = big[:, 7:40]                              # row stride 80: read in place
    e2 = _f32(rng.standard_normal((33, 5))).T      # column stride != 1: copied first
    out = np.empty((5, 33), np.float32)
    PackedProduct()(a, pack_weights(w, False), 33, out, 1, [e1, e2])
    np.testing.assert_allclose(out, a @ w + e1 + e2, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the op
def _op_function(n_add, bcast, mode, trans=False):
    a, w = T.matrix("a", dtype="float32"), T.matrix("w", dtype="float32")
    adds = [TensorType("float32", shape=(1, None))(f"e{j}") if bcast[j] else
            T.matrix(f"e{j}", dtype="float32") for j in range(n_add)]
    out = PackedDot(trans)(a, w, PackWeights(trans)(w), *adds)
    return [a, w] + adds, out


@pytest.mark.parametrize("mode", [PY, FAST])
@pytest.mark.parametrize("bcast", [(False,), (True,), (False, True), (True, False)])
@pytest.mark.parametrize("trans", [False, True])
def test_op_values(mode, bcast, trans):
    rng = np.random.default_rng(5)
    m, k, n = 6, 11, 21
    ins, out = _op_function(len(bcast), bcast, mode, trans)
    f = graphc.function(ins, out, mode=mode)
    av = _f32(rng.standard_normal((m, k)))
    wv = _f32(rng.standard_normal((n, k) if trans else (k, n)))
    ev = [_f32(rng.standard_normal((1 if b else m, n))) for b in bcast]
    ref = av @ (wv.T if trans else wv)
    for e in ev:
        ref = ref + e
    got = f(av, wv, *ev)
    assert got.dtype == np.float32 and got.shape == (m, n)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert tuple(graphc.function(ins, out.shape, mode=mode)(av, wv, *ev)) == (m, n)


def test_op_errors():
    a, w = T.matrix("a", dtype="float32"), T.matrix("w", dtype="float32")
    wp = PackWeights()(w)
    with pytest.raises(TypeError, match="addend 0 must be a float32 matrix"):
        PackedDot()(a, w, wp, T.matrix("e", dtype="float64"))
    with pytest.raises(TypeError, match="addend 0 must be a float32 matrix"):
        PackedDot()(a, w, wp, T.vector("e", dtype="float32"))
    with pytest.raises(TypeError, match="at most 2 addends"):
        PackedDot()(a, w, wp, *[T.matrix(f"e{j}", dtype="float32") for j in range(3)])
    with pytest.raises(ValueError, match=r"PackedDot.*addend 0 has shape \(3, 4\)"):
        PackedDot()(TensorType("float32", shape=(2, 5))("a2"),
                    TensorType("float32", shape=(5, 4))("w2"), wp,
                    TensorType("float32", shape=(3, 4))("e"))
    for mode in (PY, FAST):
        e = T.matrix("e", dtype="float32")
        f = graphc.function([a, w, e], PackedDot()(a, w, wp, e), mode=mode)
        # a single row where the graph does not declare the rows broadcastable (as add)
        with pytest.raises(ValueError, match=r"PackedDot.*addend 0 has shape \(1, 5\), "
                                             r"expected \(2, 5\)(.|\n)*test_packed_addends"):
            f(np.zeros((2, 3), np.float32), np.zeros((3, 5), np.float32),
              np.zeros((1, 5), np.float32))
        with pytest.raises(ValueError, match=r"addend 0 has shape \(2, 4\)"):
            f(np.zeros((2, 3), np.float32), np.zeros((3, 5), np.float32),
              np.zeros((2, 4), np.float32))


# ------------------------------------------------------------------ the rewrite
def _scan_nodes(f):
    return [n for n in f.maker.fgraph.toposort() if isinstance(n.op, Scan)]


def _inner(node, cls=PackedDot):
    return [n for n in io_toposort(node.op.inner_inputs, node.op.inner_outputs)
            if isinstance(n.op, cls)]


def _compiled_step(node):
    """The nodes of a scan's compiled step function (after its own optimization)."""
    inner = next(iter(node.op._compiled.values()))
    return inner.fn.maker.fgraph.toposort()


def test_lstm_step_sum_is_absorbed():
    f = _lstm_function(FAST)
    vals = _lstm_values()
    got = f(*vals)
    fwd, bwd = _scan_nodes(f)
    (pd,) = _inner(fwd)
    # pushed_dot[t] + h @ Wh + b: the pushed-out input product and the bias row
    assert len(pd.inputs) == 5 and pd.inputs[4].type.broadcastable == (True, False)
    assert not [n for n in _inner(fwd, Elemwise)
                if n.op.scalar_op.name == "add" and any(v.owner is pd for v in n.inputs)]
    step = _compiled_step(fwd)
    assert any(isinstance(n.op, PackedDot) and len(n.inputs) == 5 for n in step)
    assert not [n for n in step if isinstance(n.op, Fused) and
                any(v.owner is not None and isinstance(v.owner.op, PackedDot)
                    for v in n.inputs) and "add(add(" in str(n.op)]
    for g, r, p in zip(got, _lstm_function(NO_PACK)(*vals), _lstm_function(PY)(*vals)):
        np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(g, p, rtol=2e-4, atol=2e-5)


def _rnn(step, H, batch, steps=4, seed=6):
    """A one-state loop ``h = step(x_t, h, W, b)`` run natively and by the Python linker."""
    rng = np.random.default_rng(seed)
    x, W = T.tensor3("x", dtype="float32"), T.matrix("W", dtype="float32")
    b = T.vector("b", dtype="float32")
    hs, _ = graphc.scan(step, sequences=x, non_sequences=[W, b],
                        outputs_info=[T.zeros((x.shape[1], H), dtype="float32")])
    loss = (hs ** 2).sum()
    outs = [hs] + graphc.grad(loss, [x, W, b], disconnected_inputs="ignore")
    vals = [_f32(rng.standard_normal((steps, batch, H))),
            _f32(rng.standard_normal((H, H)) / np.sqrt(H)), _f32(rng.uniform(-1, 1, H))]
    f = graphc.function([x, W, b], outs, mode=FAST)
    got, ref = f(*vals), graphc.function([x, W, b], outs, mode=PY)(*vals)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    return _scan_nodes(f)[0]


@pytest.mark.parametrize("H,batch", [(20, 3), (16, 5), (33, 1)])
def test_rnn_sum_absorbed_any_size(H, batch):
    # N not a multiple of 16, M not a multiple of 4, a bias row broadcast over the batch
    fwd = _rnn(lambda x_t, h, W, b: T.tanh(x_t + T.dot(h, W) + b), H, batch)
    (pd,) = _inner(fwd)
    assert len(pd.inputs) == 5


def test_state_is_operand_and_addend():
    # h = (x_t + h @ W) + h: the previous state is both the product's operand and a term
    fwd = _rnn(lambda x_t, h, W, b: x_t + T.dot(h, W) + h, 20, 3)
    (pd,) = _inner(fwd)
    assert len(pd.inputs) == 5 and pd.inputs[0] is pd.inputs[4]


def test_three_terms_keep_one_add():
    # (x_t + h @ W) + b) + x_t: two terms in the kernel, the third stays an add
    fwd = _rnn(lambda x_t, h, W, b: T.tanh(x_t + T.dot(h, W) + b + x_t * 0.5), 20, 3)
    (pd,) = _inner(fwd)
    assert len(pd.inputs) == 5
    assert [n for n in _inner(fwd, Elemwise) if n.op.scalar_op.name == "add"
            and any(v is pd.outputs[0] for v in n.inputs)]


@pytest.mark.parametrize("step", [
    # the product itself is read elsewhere too: it stays a value of its own
    lambda x_t, h, W, b: T.tanh(x_t + T.dot(h, W)) * T.dot(h, W),
    # a float64 term makes a float64 sum
    lambda x_t, h, W, b: T.tanh(T.dot(h, W) + T.cast(x_t, "float64")).astype("float32"),
    # a term broadcast along columns
    lambda x_t, h, W, b: T.tanh(T.dot(h, W) + x_t[:, 0].dimshuffle(0, "x")),
    # the product scaled first: not a sum of the product
    lambda x_t, h, W, b: T.tanh(T.dot(h, W) * 2 + b),
])
def test_sums_not_absorbed(step):
    fwd = _rnn(step, 20, 3)
    assert all(len(n.inputs) == 3 for n in _inner(fwd))
