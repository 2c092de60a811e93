"""shared_gemm: products sharing their right operand (and its row sum) become one product
over a FlatJoin; FlatJoin's own shape rule, errors and gradient."""
import numpy as np
import pytest

import graphc as theano
import graphc.tensor as T
from graphc.gradient import verify_grad
from graphc.tensor.blas import Gemm
from graphc.tensor.elemwise import CAReduce, ShapeError
from graphc.tensor.flatjoin import FlatJoin

from helpers import FAST, REF, assert_same, compile_both

DEFAULT = None                          # the default mode: fast_run, native linker


def nodes(f, cls):
    return [n for n in f.maker.fgraph.toposort() if isinstance(n.op, cls)]


def _rnn_grads(dtype, static=False):
    """The weight and bias gradients of a recurrent layer after scan_pushout: products of
    time-reversed sequences flattened to rows with one dZ, and dZ summed over time, batch.
    ``static``: h and dz with known batch and width (as a scan's outputs have)."""
    x = T.tensor3("x", dtype=dtype)
    h, dz = (T.TensorType(dtype, shape=(None, 3, k) if static else (None,) * 3)(name)
             for name, k in (("h", 7), ("dz", 8)))
    rows = lambda v: v.reshape((v.shape[0] * v.shape[1], v.shape[2]))     # noqa: E731
    dZ = rows(dz)
    outs = [T.dot(rows(x[::-1]).T, dZ), T.dot(rows(h[:-1][::-1]).T, dZ), dz.sum(axis=(0, 1))]
    rng = np.random.default_rng(0)
    vals = [rng.standard_normal(s).astype(dtype) for s in ((5, 3, 4), (6, 3, 7), (5, 3, 8))]
    return [x, h, dz], outs, vals


@pytest.mark.parametrize("dtype,static", [("float64", False), ("float32", True)])
@pytest.mark.parametrize("mode", [FAST, DEFAULT])
def test_rnn_weight_and_bias_gradients_are_one_product(dtype, static, mode):
    ins, outs, vals = _rnn_grads(dtype, static)
    f = theano.function(ins, outs, mode=mode)
    g = theano.function(ins, outs, mode=REF)
    (gemm,) = nodes(f, Gemm)
    (join,) = nodes(f, FlatJoin)
    assert gemm.inputs[0] is join.outputs[0] and join.op.ones
    assert [v.ndim for v in join.inputs] == [3, 3]      # the sequences, not their reshapes
    assert nodes(f, CAReduce) == []
    tol = 1e-5 if dtype == "float32" else 1e-12
    for _ in range(2):                                  # kept buffers: nothing carries over
        assert_same(f, g, *vals, rtol=tol, atol=tol)
    assert [a.shape for a in f(*vals)] == [(4, 8), (7, 8), (8,)]
    shorter = [v[:3] if v.shape[0] == 5 else v[:4] for v in vals]   # 3 steps: new shapes
    assert_same(f, g, *shorter, rtol=tol, atol=tol)


def matrix(name, shape):
    return T.TensorType("float64", shape=shape)(name)


def test_narrow_products_merge_without_a_sum_and_keep_their_alpha():
    a, b, y = matrix("a", (6, 2)), matrix("b", (6, 3)), matrix("y", (6, 16))
    f, g = compile_both([a, b, y], [2 * T.dot(a.T, y), 2 * T.dot(b.T, y), y.sum(axis=0)])
    (gemm,) = nodes(f, Gemm)
    (join,) = nodes(f, FlatJoin)
    assert not join.op.ones                             # alpha 2: the sum stays apart
    assert len(nodes(f, CAReduce)) == 1
    rng = np.random.default_rng(1)
    assert_same(f, g, rng.random((6, 2)), rng.random((6, 3)), rng.random((6, 16)))


def test_a_join_that_would_copy_more_than_it_saves_is_not_made():
    rng = np.random.default_rng(8)
    for shapes in [((6, 8), (6, 9), (6, 16)),          # 2 * 17 columns copied, 16 saved
                   ((6, None), (6, 3), (6, 64)),        # a width not known
                   ((6, 2), (6, 3), (6, None))]:
        a, b, y = (matrix(n, s) for n, s in zip("aby", shapes))
        f, g = compile_both([a, b, y], [T.dot(a.T, y), T.dot(b.T, y)])
        assert nodes(f, FlatJoin) == [] and len(nodes(f, Gemm)) == 2
        sizes = [tuple(d if d is not None else 5 for d in s) for s in shapes]
        assert_same(f, g, *[rng.random(s) for s in sizes])


def test_what_is_left_alone():
    a, b, y, z = (T.dmatrix(n) for n in "abyz")
    rng = np.random.default_rng(2)
    vals = [rng.random((5, 3)) for _ in range(4)]
    cases = [
        [T.dot(a.T, y), y.sum(axis=0)],                 # one product: nothing to share
        [T.dot(a.T, y), T.dot(b.T, z)],                 # different right operands
        [T.dot(a.T, y), 3 * T.dot(b.T, y)],             # different alphas
        [T.dot(a.T, y), T.dot(T.dot(a, T.dot(a.T, y)).T, y)],  # the second reads the first
    ]
    for outs in cases:
        f, g = compile_both([a, b, y, z], outs, on_unused_input="ignore")
        assert nodes(f, FlatJoin) == []
        assert_same(f, g, *vals)


def test_products_with_z_are_not_merged():
    a, b, y, w = (T.dmatrix(n) for n in "abyw")
    f, g = compile_both([a, b, y, w], [w + T.dot(a.T, y), w * 2 + T.dot(b.T, y)])
    assert nodes(f, FlatJoin) == [] and all(n.op.has_z for n in nodes(f, Gemm))
    rng = np.random.default_rng(3)
    assert_same(f, g, *[rng.random(s) for s in ((4, 2), (4, 2), (4, 2), (2, 2))])


def test_mismatched_rows_still_raise_a_clear_error():
    ins, outs, vals = _rnn_grads("float64")
    f = theano.function(ins, outs)
    vals[1] = vals[1][:, :2]                            # h has 2 rows per step, dz 3
    with pytest.raises(ShapeError, match="FlatJoin"):
        f(*vals)


def test_flat_join_values_shape_and_gradient():
    x, h = T.tensor3("x"), T.dmatrix("h")
    j = FlatJoin(True)(x[::-1], h)
    f = theano.function([x, h], [j, j.shape])
    xv, hv = np.random.default_rng(4).random((2, 3, 4)), np.random.default_rng(5).random((6, 5))
    out, shape = f(xv, hv)
    want = np.concatenate([xv[::-1].reshape(6, 4), hv, np.ones((6, 1))], axis=1)
    np.testing.assert_array_equal(out, want)
    assert tuple(shape) == (6, 10) and j.type.shape == (None, None)
    assert FlatJoin()(T.dtensor3(), T.dmatrix()).type.shape == (None, None)
    verify_grad(lambda u, v: T.tanh(FlatJoin(True)(u, v)), [xv, hv],
                rng=np.random.default_rng(6), n_tests=1)


def test_flat_join_checks_its_inputs():
    with pytest.raises(TypeError, match="FlatJoin"):
        FlatJoin()(T.dvector("v"), T.dmatrix("m"))
    with pytest.raises(TypeError, match="FlatJoin"):
        FlatJoin()(T.fmatrix("f"), T.dmatrix("m"))
    a = T.TensorType("float64", shape=(2, 3, 4))("a")
    b = T.TensorType("float64", shape=(5, 4))("b")
    with pytest.raises(ShapeError, match="row counts"):
        FlatJoin()(a, b)
    f = theano.function([x := T.dtensor3("x"), m := T.dmatrix("m")], FlatJoin()(x, m))
    with pytest.raises(ShapeError, match="same number of rows"):
        f(np.zeros((2, 3, 4)), np.zeros((5, 4)))


def test_static_shapes_of_the_replaced_products_are_kept():
    a, b, y = matrix("a", (5, 1)), matrix("b", (5, 2)), matrix("y", (5, 8))
    outs = [T.dot(a.T, y), T.dot(b.T, y), y.sum(axis=0)]
    f, g = compile_both([a, b, y], outs)
    assert len(nodes(f, FlatJoin)) == 1
    assert [o.type for o in f.maker.fgraph.outputs] == [o.type for o in outs]
    rng = np.random.default_rng(7)
    assert_same(f, g, rng.random((5, 1)), rng.random((5, 2)), rng.random((5, 8)))
