"""Indexing against numpy: basic slicing (static and symbolic bounds, negative steps,
newaxis, Ellipsis), integer-array and boolean (advanced) indexing such as
``x[T.arange(n), y]``, ``set_subtensor``/``inc_subtensor`` (repeated indices accumulate)."""
import numpy as np
import pytest

import graphc
import graphc.tensor as T
from op_table import F_AND_I, MODE_IDS, MODES, Arg, Case, case_tests

A = (3, 4, 5)
M = (4, 5)


def case(name, build, ref, args, **kw):
    args = [a if isinstance(a, Arg) else Arg(a) for a in args]
    kw.setdefault("dtypes", F_AND_I)
    return Case(name, build, ref, args, **kw)


def I(n, shape=()):   # noqa: E743  an int64 index input with values in [0, n)
    return Arg(shape, f"idx:{n}", "int64")


def _set(x, where, y):
    r = x.copy()
    r[where] = y
    return r


def _inc_at(x, where, y):
    r = x.copy()
    np.add.at(r, where, y)
    return r


TABLE = [
    # ---- basic indexing (views)
    case("int", lambda x: x[1], lambda x: x[1], [A]),
    case("neg_int", lambda x: x[-1, 2], lambda x: x[-1, 2], [A]),
    case("slice", lambda x: x[1:3], lambda x: x[1:3], [A]),
    case("slice_step", lambda x: x[::2, 1:], lambda x: x[::2, 1:], [A]),
    case("slice_reverse", lambda x: x[::-1, ::-2], lambda x: x[::-1, ::-2], [A]),
    case("slice_neg_bounds", lambda x: x[-3:-1, :-2], lambda x: x[-3:-1, :-2], [A]),
    case("slice_out_of_range", lambda x: x[2:100], lambda x: x[2:100], [A]),
    case("mixed", lambda x: x[1:-1, 2], lambda x: x[1:-1, 2], [A]),
    case("newaxis", lambda x: x[:, None, 1:], lambda x: x[:, None, 1:], [M]),
    case("ellipsis", lambda x: x[..., 0], lambda x: x[..., 0], [A]),
    case("ellipsis_mid", lambda x: x[0, ..., 1:], lambda x: x[0, ..., 1:], [A]),
    case("scalar_of_vector", lambda x: x[2], lambda x: x[2], [(5,)]),
    case("sym_int", lambda x, i: x[i], lambda x, i: x[i], [A, I(3)]),
    case("sym_neg_int", lambda x, i: x[:, -i - 1], lambda x, i: x[:, -i - 1], [A, I(4)]),
    case("sym_slice", lambda x, i, j: x[i:j + 2], lambda x, i, j: x[i:j + 2], [M, I(3), I(3)]),
    case("sym_slice_step", lambda x, i, k: x[i::k + 1], lambda x, i, k: x[i::k + 1],
         [M, I(3), I(2)]),
    case("sym_neg_step", lambda x, k: x[::-(k + 1)], lambda x, k: x[::-(k + 1)], [M, I(3)]),
    case("sym_slice_minibatch", lambda x, i: x[i * 2:(i + 1) * 2],
         lambda x, i: x[i * 2:(i + 1) * 2], [(7, 3), I(4)]),
    # ---- advanced indexing (copies)
    case("int_vector", lambda x, v: x[v], lambda x, v: x[v], [M, I(4, (6,))]),
    case("int_matrix", lambda x, v: x[v], lambda x, v: x[v], [M, I(4, (2, 3))]),
    case("arange_labels", lambda x, y: x[T.arange(y.shape[0]), y],
         lambda x, y: x[np.arange(y.shape[0]), y], [M, I(5, (4,))]),
    case("columns", lambda x, v: x[:, v], lambda x, v: x[:, v], [A, I(4, (3,))]),
    case("array_then_slice", lambda x, v: x[v, 1:], lambda x, v: x[v, 1:], [A, I(3, (4,))]),
    case("arrays_apart", lambda x, u, v: x[u, :, v], lambda x, u, v: x[u, :, v],
         [A, I(3, (2,)), I(5, (2,))]),
    case("negative_array", lambda x, v: x[-v - 1], lambda x, v: x[-v - 1], [M, I(4, (3,))]),
    case("list_index", lambda x: x[[0, 2, 2]], lambda x: x[[0, 2, 2]], [M]),
    case("bool_mask", lambda x: x[x > 0], lambda x: x[x > 0], [M]),
    case("take_axis1", lambda x, v: T.take(x, v, axis=1), lambda x, v: np.take(x, v, axis=1),
         [M, I(5, (3,))]),
    case("take_flat", lambda x, v: T.take(x, v), lambda x, v: np.take(x, v), [M, I(20, (6,))]),
    # ---- set / inc
    case("set_slice", lambda x, y: T.set_subtensor(x[1:3], y),
         lambda x, y: _set(x, slice(1, 3), y), [M, (2, 5)]),
    case("set_bcast_scalar", lambda x, y: T.set_subtensor(x[:, 1], y),
         lambda x, y: _set(x, (slice(None), 1), y), [M, ()]),
    case("inc_slice", lambda x, y: T.inc_subtensor(x[1:, ::2], y),
         lambda x, y: _inc_at(x, (slice(1, None), slice(None, None, 2)), y), [M, (1, 3)]),
    case("inc_sym_int", lambda x, y, i: T.inc_subtensor(x[i], y),
         lambda x, y, i: _inc_at(x, i, y), [M, (5,), I(4)]),
    case("set_array", lambda x, y, v: T.set_subtensor(x[v], y),
         lambda x, y, v: _set(x, v, y), [M, (3, 5), I(4, (3,))], wrt=[0]),
    case("inc_array_repeats", lambda x, y: T.inc_subtensor(x[[0, 2, 0, 0]], y),
         lambda x, y: _inc_at(x, [0, 2, 0, 0], y), [M, (4, 5)]),
    case("inc_labels", lambda x, y, v: T.inc_subtensor(x[T.arange(4), v], y),
         lambda x, y, v: _inc_at(x, (np.arange(4), v), y), [M, (4,), I(5, (4,))]),
    case("inc_columns_bcast", lambda x, y, v: T.inc_subtensor(x[:, v], y),
         lambda x, y, v: _inc_at(x, (slice(None), v), y), [M, (4, 1), I(5, (3,))]),
    case("set_whole", lambda x, y: T.set_subtensor(x[:], y),
         lambda x, y: np.broadcast_to(y, x.shape), [M, (4, 5)]),
]

case_tests(TABLE, globals())


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_set_subtensor_leaves_input_unchanged(mode):
    x = T.dmatrix("x")
    y = T.set_subtensor(x[0], 7.0)
    f = graphc.function([x], [x, y], mode=mode)
    xv = np.zeros((2, 3))
    a, b = f(xv)
    assert np.all(xv == 0) and np.all(a == 0)
    np.testing.assert_array_equal(b, [[7, 7, 7], [0, 0, 0]])


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_out_of_bounds_index_is_reported(mode):
    x = T.dmatrix("x")
    i = T.lscalar("i")
    f = graphc.function([x, i], x[i], mode=mode)
    with pytest.raises((ValueError, IndexError), match="index"):
        f(np.zeros((2, 3)), 5)
    v = T.lvector("v")
    g = graphc.function([x, v], x[v], mode=mode)
    with pytest.raises((ValueError, IndexError), match="index"):
        g(np.zeros((2, 3)), np.array([0, 2]))


def test_index_errors_at_build_time():
    x = T.matrix()
    with pytest.raises(IndexError, match="too many"):
        x[0, 1, 2]
    with pytest.raises(TypeError, match="int"):
        x[T.fvector()]
    with pytest.raises(TypeError, match="int"):
        x[T.scalar()]
    with pytest.raises(TypeError, match="indexed tensor"):
        T.set_subtensor(x + 1, 0.0)


def test_iterating_a_static_length_vector():
    v = T.TensorType("float64", shape=(3,))("v")
    parts = list(v)
    assert len(parts) == 3
    f = graphc.function([v], parts[2] - parts[0])
    assert f(np.array([1.0, 2.0, 5.0])) == 4.0
    with pytest.raises(TypeError):
        iter(T.vector()).__next__()


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_advanced_index_placement_matches_numpy(mode):
    """numpy puts the broadcast index dims in place when the advanced indices (arrays and
    ints) are adjacent, else first; graphc's static shape and result agree."""
    from op_table import infer_shape_of
    xs = T.TensorType("float64", shape=(3, 4, 5))("x")
    vs = T.TensorType("int64", shape=(2,))("v")
    x, v = T.dtensor3("x"), T.lvector("v")
    xv, vv = np.arange(60.0).reshape(3, 4, 5), np.array([1, 2])
    for index in [lambda a, b: a[:, 0, b], lambda a, b: a[0, :, b], lambda a, b: a[b, :, 0],
                  lambda a, b: a[:, None, b], lambda a, b: a[b, None, b],
                  lambda a, b: a[b, 1:, b], lambda a, b: a[None, b], lambda a, b: a[1, b, 2:]]:
        want = index(xv, vv)
        assert index(xs, vs).type.shape == want.shape
        out = index(x, v)
        f = graphc.function([x, v], [out] + list(infer_shape_of(out, [x, v])), mode=mode)
        got, *dims = f(xv, vv)
        np.testing.assert_array_equal(got, want)
        assert tuple(dims) == want.shape
