"""Products against numpy: dot (every rank combination, the ``@`` operator), tensordot,
batched_dot, outer."""
import numpy as np
import pytest

import graphc
import graphc.tensor as T
from op_table import F_AND_I, MODE_IDS, MODES, Arg, Case, case_tests


def case(name, build, ref, shapes, **kw):
    kw.setdefault("dtypes", F_AND_I)
    return Case(name, build, ref, [Arg(s) for s in shapes], **kw)


def _batched(a, b):
    if a.ndim == 2 and b.ndim == 2:
        return np.einsum("bi,bi->b", a, b)
    ae = a if a.ndim == 3 else a[:, None, :]
    be = b if b.ndim == 3 else b[:, :, None]
    r = np.matmul(ae, be)
    if a.ndim == 2:
        r = r[:, 0]
    if b.ndim == 2:
        r = r[..., 0]
    return r


TABLE = [
    case("dot_vv", T.dot, np.dot, [(4,), (4,)]),
    case("dot_mv", T.dot, np.dot, [(3, 4), (4,)]),
    case("dot_vm", T.dot, np.dot, [(3,), (3, 5)]),
    case("dot_mm", T.dot, np.dot, [(3, 4), (4, 5)]),
    case("dot_matmul_op", lambda a, b: a @ b, np.matmul, [(3, 4), (4, 2)]),
    case("dot_method", lambda a, b: a.dot(b), np.dot, [(2, 4), (4, 2)]),
    case("dot_scalar", T.dot, np.dot, [(), (3, 4)]),
    case("dot_3d_2d", T.dot, np.dot, [(2, 3, 4), (4, 5)]),
    case("dot_2d_3d", T.dot, np.dot, [(3, 4), (2, 4, 5)]),
    case("dot_row_col", T.dot, np.dot, [(1, 4), (4, 1)]),
    case("dot_empty_inner", T.dot, np.dot, [(3, 0), (0, 2)], grad=False),
    case("graphc_dot", graphc.dot, np.dot, [(3, 4), (4, 2)]),
    case("tensordot_int", lambda a, b: T.tensordot(a, b, 2),
         lambda a, b: np.tensordot(a, b, 2), [(2, 3, 4), (3, 4, 5)]),
    case("tensordot_axes", lambda a, b: T.tensordot(a, b, [[0, 2], [1, 0]]),
         lambda a, b: np.tensordot(a, b, [[0, 2], [1, 0]]), [(2, 3, 4), (4, 2, 5)]),
    case("tensordot_one", lambda a, b: T.tensordot(a, b, axes=[[1], [0]]),
         lambda a, b: np.tensordot(a, b, axes=[[1], [0]]), [(2, 3), (3, 4, 2)]),
    case("tensordot_zero", lambda a, b: T.tensordot(a, b, 0),
         lambda a, b: np.tensordot(a, b, 0), [(2, 3), (4,)]),
    case("batched_dot_3d", T.batched_dot, _batched, [(3, 2, 4), (3, 4, 5)]),
    case("batched_dot_2d", T.batched_dot, _batched, [(3, 4), (3, 4)]),
    case("batched_dot_mat_3d", T.batched_dot, _batched, [(3, 4), (3, 4, 2)]),
    case("batched_dot_3d_mat", T.batched_dot, _batched, [(3, 2, 4), (3, 4)]),
    case("outer", T.outer, np.outer, [(3,), (4,)]),
    case("outer_flattens", T.outer, np.outer, [(2, 2), (3,)]),
]
case_tests(TABLE, globals())


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_dot_mixed_dtypes_upcast(mode):
    a, b = T.fmatrix("a"), T.imatrix("b")
    out = T.dot(a, b)
    assert out.dtype == "float64"
    f = graphc.function([a, b], out, mode=mode)
    av = np.ones((2, 3), "float32")
    bv = np.arange(6, dtype="int32").reshape(3, 2)
    r = f(av, bv)
    assert r.dtype == np.float64
    np.testing.assert_array_equal(r, av.astype("float64") @ bv)
    c = T.fmatrix("c")
    assert T.dot(a, c).dtype == "float32"


def test_dot_static_shape_mismatch():
    a = T.TensorType("float32", shape=(2, 3))("a")
    b = T.TensorType("float32", shape=(4, 5))("b")
    with pytest.raises(ValueError, match=r"Dot.*\(3 vs 4\)"):
        T.dot(a, b)
    with pytest.raises(ValueError, match="tensordot"):
        T.tensordot(a, b, [[1], [0]])
    with pytest.raises(ValueError, match="BatchedDot"):
        T.batched_dot(T.TensorType("float32", shape=(2, 3, 4))(),
                      T.TensorType("float32", shape=(3, 4, 5))())
