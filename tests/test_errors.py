"""Errors name the op, the shapes and dtypes, and the user's source line: at graph-build
time where static shapes allow it, otherwise when the compiled function runs."""
import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.graph.basic import Apply, Op
from graphc.tensor.elemwise import ShapeError
from op_table import MODE_IDS, MODES

mode_param = pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
THIS_FILE = "test_errors.py"


def static(dtype, *shape):
    return T.TensorType(dtype, shape=shape)()


# --------------------------------------------------------------------------- build time
def test_dot_shape_mismatch_at_build_time():
    a = static("float32", 2, 3)
    b = static("float32", 4, 5)
    with pytest.raises(ShapeError) as info:
        T.dot(a, b)   # the line the message points at
    msg = str(info.value)
    assert "Dot" in msg and "inner dimensions differ (3 vs 4)" in msg
    assert "(2, 3) float32, (4, 5) float32" in msg
    assert THIS_FILE in msg and "T.dot(a, b)   # the line the message points at" in msg


def test_elemwise_shape_mismatch_at_build_time():
    a = static("float64", 2, 3)
    b = static("float64", 4, 3)
    with pytest.raises(ShapeError, match=r"(?s)Elemwise\{add\}.*incompatible sizes \[2, 4\]"
                                         r".*\(2, 3\) float64, \(4, 3\) float64.*test_errors"):
        a + b
    with pytest.raises(ShapeError, match="Join"):
        T.concatenate([a, static("float64", 2, 3, 1)])
    with pytest.raises(ShapeError, match="Reshape.*cannot reshape"):
        T.reshape(a, (4, 2))
    with pytest.raises(ShapeError, match="cannot drop dimension 1"):
        T.matrix().dimshuffle(0)
    with pytest.raises(ShapeError, match="SetSubtensor|does not fit"):
        T.set_subtensor(a[0], static("float64", 4))


def test_type_errors_at_build_time():
    with pytest.raises(TypeError, match=r"(?s)bitwise.*float64.*test_errors"):
        T.dmatrix() & T.dmatrix()
    with pytest.raises(TypeError, match="expects a 2-d input"):
        from graphc.tensor.elemwise import DimShuffle
        DimShuffle(2, (1, 0))(T.vector())
    with pytest.raises(TypeError, match="does not support dtype"):
        T.TensorType("complex64", shape=(None,))
    with pytest.raises(TypeError, match="truth value"):
        if T.scalar() > 0:
            pass


# --------------------------------------------------------------------------- run time
@mode_param
def test_dot_runtime_mismatch_names_op_shapes_and_line(mode):
    x = T.fmatrix("x")
    y = T.fmatrix("y")
    z = T.dot(x, y) * 2   # the line the message points at
    f = graphc.function([x, y], z, mode=mode)
    with pytest.raises(ValueError) as info:
        f(np.ones((2, 3), "float32"), np.ones((4, 5), "float32"))
    msg = str(info.value)
    assert "Dot" in msg or "Gemm" in msg or "dot" in msg
    assert "(2, 3)" in msg and "(4, 5)" in msg and "float32" in msg
    assert THIS_FILE in msg and "z = T.dot(x, y) * 2   # the line the message points at" in msg


@mode_param
def test_elemwise_runtime_mismatch_names_op_shapes_and_line(mode):
    x = T.dmatrix("x")
    y = T.dmatrix("y")
    z = T.exp(x) + T.tanh(y)   # the user's line
    f = graphc.function([x, y], z, mode=mode)
    with pytest.raises(ValueError) as info:
        f(np.ones((2, 3)), np.ones((2, 4)))
    msg = str(info.value)
    assert "(2, 3)" in msg and "(2, 4)" in msg and "float64" in msg
    assert "add" in msg or "Fused" in msg or "Elemwise" in msg
    assert THIS_FILE in msg and "z = T.exp(x) + T.tanh(y)   # the user's line" in msg


@mode_param
def test_reshape_and_index_runtime_errors_name_the_line(mode):
    x = T.dvector("x")
    r = x.reshape((2, 3))   # reshape line
    i = T.lscalar("i")
    s = x[i]   # index line
    f = graphc.function([x], r, mode=mode)
    g = graphc.function([x, i], s, mode=mode)
    with pytest.raises(ValueError, match=r"(?s)Reshape.*\(5,\).*reshape line"):
        f(np.ones(5))
    with pytest.raises(Exception, match=r"(?s)Subtensor.*index line"):
        g(np.ones(5), 7)


def _build_in_a_helper(x):
    return T.specify_shape(x, (3,))   # helper line


@mode_param
def test_trace_points_at_the_user_function_that_built_the_node(mode):
    x = T.dvector("x")
    f = graphc.function([x], _build_in_a_helper(x) * 2, mode=mode)
    with pytest.raises(ValueError, match=r"(?s)SpecifyShape.*dimension 0 is 4.*helper line"):
        f(np.ones(4))


class _Failing(Op):
    """An op whose perform raises a plain Python error."""

    def make_node(self, x):
        x = T.as_tensor_variable(x)
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, out):
        raise ZeroDivisionError("boom")


def test_any_op_failure_is_reported_with_op_inputs_and_line():
    x = T.dvector("x")
    y = _Failing()(x)
    f = graphc.function([x], y, mode="FAST_COMPILE")
    with pytest.raises(RuntimeError) as info:
        f(np.ones(2))
    msg = str(info.value)
    assert "_Failing failed: ZeroDivisionError: boom" in msg
    # the innermost frame outside graphc: here the custom op's make_node in this file
    assert "(2,) float64" in msg and THIS_FILE in msg
    assert isinstance(info.value.__cause__, ZeroDivisionError)
