"""Shape and construction ops against numpy: reshape, flatten, dimshuffle, transpose, shape,
addbroadcast/patternbroadcast, join/concatenate/stack, repeat, tile, arange, alloc, zeros,
ones, eye, cumsum/cumprod, squeeze, diff."""
import numpy as np
import pytest

import graphc
import graphc.tensor as T
from op_table import F_AND_I, FLOATS, MODE_IDS, MODES, Arg, Case, case_tests

A = (2, 3, 4)
M = (3, 4)
N = Arg((), "idx:6", "int64")      # a symbolic size


def case(name, build, ref, shapes, **kw):
    args = [s if isinstance(s, Arg) else Arg(s) for s in shapes]
    kw.setdefault("dtypes", F_AND_I)
    return Case(name, build, ref, args, **kw)


def _repeat_vec(x):
    return np.repeat(x, [1, 0, 2, 1], axis=1)


TABLE = [
    # ---- reshape / flatten
    case("reshape_static", lambda x: x.reshape((6, 4)), lambda x: x.reshape(6, 4), [A]),
    case("reshape_minus1", lambda x: T.reshape(x, (-1, 4)), lambda x: x.reshape(-1, 4), [A]),
    case("reshape_symbolic", lambda x: x.reshape((x.shape[0], -1)),
         lambda x: x.reshape(x.shape[0], -1), [A]),
    case("reshape_sym_full", lambda x: x.reshape((x.shape[1], x.shape[0] * x.shape[2])),
         lambda x: x.reshape(x.shape[1], -1), [A]),
    case("reshape_to_scalar", lambda x: T.reshape(x, ()), lambda x: x.reshape(()), [(1, 1)]),
    case("flatten", lambda x: x.flatten(), lambda x: x.reshape(-1), [A]),
    case("flatten2", lambda x: T.flatten(x, 2), lambda x: x.reshape(x.shape[0], -1), [A]),
    case("flatten_outdim3", lambda x: x.flatten(outdim=3), lambda x: x, [A]),
    # ---- dimshuffle / transpose
    case("dimshuffle_perm_x", lambda x: x.dimshuffle(1, "x", 0), lambda x: x.T[:, None, :], [M]),
    case("dimshuffle_drop", lambda x: x.dimshuffle(0, 2), lambda x: x[:, 0, :], [(3, 1, 4)]),
    case("dimshuffle_list", lambda x: x.dimshuffle(["x", 2, 0, 1]),
         lambda x: np.transpose(x, (2, 0, 1))[None], [A]),
    case("T_property", lambda x: x.T, lambda x: x.T, [M]),
    case("transpose_axes", lambda x: T.transpose(x, (1, 2, 0)),
         lambda x: np.transpose(x, (1, 2, 0)), [A]),
    case("transpose_method", lambda x: x.transpose(2, 0, 1),
         lambda x: np.transpose(x, (2, 0, 1)), [A]),
    case("squeeze", T.squeeze, np.squeeze, [(3, 1, 4)]),
    # ---- shape
    case("shape", lambda x: x.shape, lambda x: np.asarray(x.shape, "int64"), [A], grad=False),
    case("shape_i", lambda x: x.shape[1], lambda x: np.int64(x.shape[1]), [A], grad=False),
    case("size", lambda x: x.size, lambda x: np.int64(x.size), [A], grad=False),
    # ---- broadcast patterns (the [:, :1] slice has an unknown static size)
    case("addbroadcast", lambda x: T.addbroadcast(x[:, :1], 1) + x,
         lambda x: x[:, :1] + x, [M]),
    case("patternbroadcast", lambda x: T.patternbroadcast(x[:1], (True, False)) * x,
         lambda x: x[:1] * x, [M]),
    case("unbroadcast", lambda x: T.unbroadcast(x, 1), lambda x: x, [(3, 1)]),
    case("specify_shape", lambda x: T.specify_shape(x, (3, 4)), lambda x: x, [M]),
    # ---- join family
    case("concatenate0", lambda x, y: T.concatenate([x, y]), lambda x, y: np.concatenate([x, y]),
         [(2, 3), (4, 3)]),
    case("concatenate_neg", lambda x, y: T.concatenate([x, y], axis=-1),
         lambda x, y: np.concatenate([x, y], axis=-1), [(2, 3), (2, 1)]),
    case("join3", lambda x, y, z: T.join(1, x, y, z),
         lambda x, y, z: np.concatenate([x, y, z], axis=1), [(2, 1, 2), (2, 3, 2), (2, 2, 2)]),
    case("stack0", lambda x, y: T.stack([x, y]), lambda x, y: np.stack([x, y]), [M, M]),
    case("stack1", lambda x, y: T.stack([x, y], axis=1), lambda x, y: np.stack([x, y], axis=1),
         [M, M]),
    case("stack_neg", lambda x, y: T.stack([x, y], axis=-1),
         lambda x, y: np.stack([x, y], axis=-1), [M, M]),
    case("stack_scalars", lambda x, y: T.stack([x, y, x]), lambda x, y: np.stack([x, y, x]),
         [(), ()]),
    case("horizontal_stack", T.horizontal_stack, lambda x, y: np.hstack([x, y]),
         [(2, 3), (2, 2)]),
    case("vertical_stack", T.vertical_stack, lambda x, y: np.vstack([x, y]), [(1, 3), (2, 3)]),
    # ---- repeat / tile
    case("repeat_axis0", lambda x: T.repeat(x, 2, axis=0), lambda x: np.repeat(x, 2, axis=0),
         [M]),
    case("repeat_flat", lambda x: x.repeat(3), lambda x: np.repeat(x, 3), [M]),
    case("repeat_vector", lambda x: T.repeat(x, np.array([1, 0, 2, 1]), axis=1), _repeat_vec,
         [M]),
    case("repeat_symbolic", lambda x, n: T.repeat(x, n, axis=1),
         lambda x, n: np.repeat(x, n, axis=1), [M, N]),
    case("tile", lambda x: T.tile(x, (2, 3)), lambda x: np.tile(x, (2, 3)), [M]),
    case("tile_more_dims", lambda x: T.tile(x, (2, 1, 2)), lambda x: np.tile(x, (2, 1, 2)), [M]),
    # ---- construction
    case("arange_const", lambda: T.arange(5), lambda: np.arange(5), [], dtypes=("int64",),
         grad=False),
    case("arange_sym", lambda n: T.arange(n), lambda n: np.arange(n), [N], dtypes=("int64",),
         grad=False),
    case("arange_start_step", lambda a, b: T.arange(a, b + 7, 2),
         lambda a, b: np.arange(a, b + 7, 2), [N, N], dtypes=("int64",), grad=False),
    case("arange_float", lambda x: T.arange(0.0, x, 0.5), lambda x: np.arange(0.0, x, 0.5),
         [Arg((), "pos")], dtypes=("float64",), grad=False),
    case("zeros_sym", lambda x: T.zeros((x.shape[0], 3)),
         lambda x: np.zeros((x.shape[0], 3)), [M], dtypes=("float64",), grad=False),
    case("ones_dtype", lambda x: T.ones((2, x.shape[1]), dtype="int32"),
         lambda x: np.ones((2, x.shape[1]), "int32"), [M], dtypes=("float64",), grad=False),
    case("alloc", lambda v, x: T.alloc(v, x.shape[0], 4), lambda v, x: np.broadcast_to(v, x.shape),
         [(4,), M], wrt=[0]),
    case("alloc_scalar", lambda v: T.alloc(v, 2, 3), lambda v: np.full((2, 3), v), [()]),
    case("alloc_bcast_row", lambda v: T.alloc(v, 2, 3, 4), lambda v: np.broadcast_to(v, (2, 3, 4)),
         [(1, 4)]),
    case("eye", lambda: T.eye(3, 4, 1), lambda: np.eye(3, 4, 1), [], dtypes=("float64",),
         grad=False),
    case("eye_sym", lambda n: T.eye(n, dtype="int32"), lambda n: np.eye(n, dtype="int32"), [N],
         dtypes=("int64",), grad=False),
    case("identity_like", T.identity_like, lambda x: np.eye(*x.shape, dtype=x.dtype), [M],
         grad=False),
    # ---- scans along an axis
    case("cumsum_none", T.cumsum, lambda x: np.cumsum(x), [M]),
    case("cumsum0", lambda x: T.cumsum(x, axis=0), lambda x: np.cumsum(x, axis=0), [A]),
    case("cumsum_neg", lambda x: x.cumsum(axis=-1), lambda x: np.cumsum(x, axis=-1), [A]),
    case("cumprod1", lambda x: T.cumprod(x, axis=1), lambda x: np.cumprod(x, axis=1),
         [Arg(M, "nonzero")]),
    case("cumprod_none", T.cumprod, lambda x: np.cumprod(x), [Arg(M, "nonzero")]),
    case("diff", T.diff, np.diff, [M]),
    case("diff2_axis0", lambda x: T.diff(x, n=2, axis=0), lambda x: np.diff(x, n=2, axis=0),
         [(5, 3)]),
]
for c in TABLE:
    if c.grad and all(d not in FLOATS for d in c.dtypes):
        c.grad = False

case_tests(TABLE, globals())


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_reshape_shape_vector_input(mode):
    x = T.dtensor3("x")
    s = T.lvector("s")
    f = graphc.function([x, s], T.reshape(x, s, ndim=2), mode=mode)
    xv = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(f(xv, np.array([4, 6])), xv.reshape(4, 6))
    np.testing.assert_array_equal(f(xv, np.array([-1, 3])), xv.reshape(-1, 3))
    with pytest.raises(ValueError, match="Reshape"):
        f(xv, np.array([5, 5]))


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_join_upcasts_and_checks(mode):
    a, b = T.fvector("a"), T.ivector("b")
    j = T.concatenate([a, b])
    assert j.dtype == "float64"
    f = graphc.function([a, b], j, mode=mode)
    np.testing.assert_array_equal(f(np.ones(2, "float32"), np.arange(3, dtype="int32")),
                                  [1, 1, 0, 1, 2])
    x, y = T.matrix("x"), T.matrix("y")
    g = graphc.function([x, y], T.concatenate([x, y], axis=0), mode=mode)
    with pytest.raises(ValueError, match="Join"):
        g(np.ones((2, 3)), np.ones((2, 4)))


def test_static_shapes_are_propagated():
    x = T.TensorType("float64", shape=(2, 3, 4))("x")
    assert x.reshape((6, 4)).type.shape == (6, 4)
    assert x.reshape((-1, 4)).type.shape == (6, 4)
    assert x.flatten(2).type.shape == (2, 12)
    assert x.dimshuffle(2, "x", 0, 1).type.shape == (4, 1, 2, 3)
    assert T.concatenate([x, x], axis=1).type.shape == (2, 6, 4)
    assert T.stack([x, x]).type.shape == (2, 2, 3, 4)
    assert T.tile(x, (1, 2, 1)).type.shape == (2, 6, 4)
    assert T.arange(2, 11, 3).type.shape == (3,)
    assert T.eye(3, 5).type.shape == (3, 5)
    assert T.zeros((4, 2)).type.shape == (4, 2)
    assert T.sum(x, axis=1).type.shape == (2, 4)
    assert x[0, 1:].type.shape == (2, 4)
    assert x[:, ::2, -1].type.shape == (2, 2)
    assert x.shape.owner is None or x.shape.type.shape == (3,)
