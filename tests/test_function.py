"""graphc.function and graphc.shared: Theano's call semantics (updates from old values,
givens, In/Out, argument checking, downcasting, unused inputs, no aliasing, atomic calls)."""
from collections import OrderedDict

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.compile.function import MissingInputError, UnusedInputError
from op_table import MODE_IDS, MODES

mode_param = pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)


# --------------------------------------------------------------------------- updates
@mode_param
def test_updates_use_old_values_and_apply_together(mode):
    a = graphc.shared(np.float64(1.0), name="a")
    b = graphc.shared(np.float64(2.0), name="b")
    swap = graphc.function([], [a, b], updates=[(a, b), (b, a)], mode=mode)
    assert swap() == [1.0, 2.0]          # outputs are computed before any update
    assert (a.get_value(), b.get_value()) == (2.0, 1.0)
    swap()
    assert (a.get_value(), b.get_value()) == (1.0, 2.0)


@mode_param
def test_accumulator_with_dict_updates(mode):
    state = graphc.shared(np.zeros(3), name="state")
    inc = T.dvector("inc")
    acc = graphc.function([inc], state, updates={state: state + inc}, mode=mode)
    np.testing.assert_array_equal(acc(np.ones(3)), np.zeros(3))   # the old value
    acc(np.arange(3.0))
    np.testing.assert_array_equal(state.get_value(), [1.0, 2.0, 3.0])
    # OrderedDict and list of pairs are accepted too
    f = graphc.function([inc], [], updates=OrderedDict([(state, state * inc)]), mode=mode)
    assert f(np.full(3, 2.0)) == []
    np.testing.assert_array_equal(state.get_value(), [2.0, 4.0, 6.0])


def test_bad_updates_are_rejected():
    s = graphc.shared(np.zeros(2, "float32"), name="s")
    x = T.fvector("x")
    with pytest.raises(TypeError, match="not a shared variable"):
        graphc.function([x], x, updates=[(x, x + 1)])
    with pytest.raises(TypeError, match="same type.*Cast"):
        graphc.function([x], x, updates=[(s, T.cast(x, "float64"))])
    with pytest.raises(ValueError, match="more than one update"):
        graphc.function([x], x, updates=[(s, x), (s, x * 2)])
    # a weak Python float keeps the update float32
    graphc.function([x], x, updates=[(s, s * 0.5 + x)])


@mode_param
def test_failed_call_leaves_shared_variables_unchanged(mode):
    w = graphc.shared(np.ones(3), name="w")
    n = graphc.shared(np.int64(0), name="n")
    x = T.dvector("x")
    f = graphc.function([x], T.dot(w, x), updates=[(w, w + 1), (n, n + 1)], mode=mode)
    f(np.ones(3))
    with pytest.raises(ValueError):
        f(np.ones(4))                     # Dot fails after the updates were computable
    np.testing.assert_array_equal(w.get_value(), 2 * np.ones(3))
    assert n.get_value() == 1
    with pytest.raises(TypeError):
        f("not a number")
    assert n.get_value() == 1


# --------------------------------------------------------------------------- givens
@mode_param
def test_givens_replace_inputs_and_shared_variables(mode):
    data = graphc.shared(np.arange(12.0).reshape(6, 2), name="data")
    x = T.dmatrix("x")
    i = T.lscalar("i")
    batch = 2
    f = graphc.function([i], T.sum(x, axis=0), givens={x: data[i * batch:(i + 1) * batch]},
                        mode=mode)
    np.testing.assert_array_equal(f(1), [4.0 + 6.0, 5.0 + 7.0])
    # replace a shared variable by an expression of an input
    y = T.dscalar("y")
    g = graphc.function([y], T.sum(data), givens=[(data, T.alloc(y, 2, 2))], mode=mode)
    assert g(3.0) == 12.0
    with pytest.raises(TypeError, match="givens"):
        graphc.function([i], x * 2, givens={x: T.dvector()})


# --------------------------------------------------------------------------- arguments
@mode_param
def test_in_defaults_names_and_keywords(mode):
    x, y = T.dscalars("x", "y")
    f = graphc.function([x, graphc.In(y, value=10.0, name="yy")], x * y, mode=mode)
    assert f(2.0) == 20.0
    assert f(2.0, 3.0) == 6.0
    assert f(2.0, yy=4.0) == 8.0
    assert f(x=1.0, yy=5.0) == 5.0
    with pytest.raises(TypeError, match="both by position and by name"):
        f(1.0, x=2.0)
    with pytest.raises(TypeError, match="no input named 'z'"):
        f(1.0, z=2.0)
    with pytest.raises(TypeError, match="takes 2 inputs"):
        f(1.0, 2.0, 3.0)


@mode_param
def test_wrong_arguments_raise_type_errors_naming_the_input(mode):
    x = T.fmatrix("x")
    k = T.iscalar("k")
    f = graphc.function([x, k], x * T.cast(k, "float32"), name="scale", mode=mode)
    xv = np.ones((2, 2), "float32")
    with pytest.raises(TypeError, match=r"missing argument k \(position 1\)"):
        f(xv)
    with pytest.raises(TypeError, match=r"'x'.*2-d"):
        f(np.ones(3, "float32"), 1)
    with pytest.raises(TypeError, match=r"'x'.*float64.*float32"):
        f(np.ones((2, 2)), 1)                      # float64 array: a downcast
    with pytest.raises(TypeError, match=r"'k'.*precision"):
        f(xv, 1.5)
    with pytest.raises(TypeError, match="scale"):
        f(np.ones((2, 2)), 1)
    # Python numbers and nested lists convert when no precision is lost
    np.testing.assert_array_equal(f([[1, 2], [3, 4]], 2), [[2, 4], [6, 8]])
    # a static shape in the input's type is checked too
    s = T.TensorType("float64", shape=(None, 3))("s")
    g = graphc.function([s], s * 2, mode=mode)
    with pytest.raises(TypeError, match=r"'s'.*dimension 1 must be 3"):
        g(np.ones((2, 4)))


@mode_param
def test_allow_input_downcast(mode):
    x = T.fvector("x")
    f = graphc.function([x], x * 2, allow_input_downcast=True, mode=mode)
    r = f(np.array([1.5, 2.5]))              # float64 data, cast to float32
    assert r.dtype == np.float32
    np.testing.assert_array_equal(r, [3.0, 5.0])
    i = T.bvector("i")
    g = graphc.function([graphc.In(i, allow_downcast=True)], i + 1, mode=mode)
    assert g(np.array([1, 2], dtype="int64")).dtype == np.int8
    h = graphc.function([x], x * 2, mode=mode)
    with pytest.raises(TypeError):
        h(np.array([1.5, 2.5]))
    h([1.5, 2.5])                             # Python floats are fine (Theano's floatX rule)


@mode_param
def test_on_unused_input(mode):
    x, y = T.dvectors("x", "y")
    with pytest.raises(UnusedInputError, match="y"):
        graphc.function([x, y], x * 2, mode=mode)
    with pytest.warns(UserWarning, match="not used"):
        graphc.function([x, y], x * 2, on_unused_input="warn", mode=mode)
    f = graphc.function([x, y], x * 2, on_unused_input="ignore", mode=mode)
    np.testing.assert_array_equal(f(np.ones(2), np.zeros(5)), [2.0, 2.0])
    with pytest.raises(ValueError, match="on_unused_input"):
        graphc.function([x], x, on_unused_input="maybe")


def test_missing_input_and_bad_inputs():
    x, y = T.dvectors("x", "y")
    with pytest.raises(MissingInputError, match="y"):
        graphc.function([x], x + y)
    s = graphc.shared(np.zeros(2))
    with pytest.raises(TypeError, match="shared variable"):
        graphc.function([s], s * 2)
    with pytest.raises(ValueError, match="twice"):
        graphc.function([x, x], x)


# --------------------------------------------------------------------------- outputs
@mode_param
def test_outputs_never_alias_inputs_or_shared_values(mode):
    x = T.dvector("x")
    s = graphc.shared(np.arange(3.0), name="s")
    f = graphc.function([x], [x, s, x, s.T, x[1:], T.constant(np.ones(2))], mode=mode)
    xv = np.zeros(3)
    outs = f(xv)
    for o in outs:
        assert isinstance(o, np.ndarray)
    assert not np.shares_memory(outs[0], xv)
    assert not np.shares_memory(outs[1], s.get_value(borrow=True))
    assert not np.shares_memory(outs[0], outs[2])
    assert not np.shares_memory(outs[3], s.get_value(borrow=True))
    assert not np.shares_memory(outs[4], xv)
    outs[1][:] = 99.0
    outs[5][:] = 99.0
    np.testing.assert_array_equal(s.get_value(), np.arange(3.0))
    np.testing.assert_array_equal(f(xv)[5], np.ones(2))


@mode_param
def test_outputs_are_numpy_arrays_with_symbolic_dtypes(mode):
    x = T.fscalar("x")
    f = graphc.function([x], [x * 2, T.cast(x, "int32"), x > 0, T.sum(x)], mode=mode)
    outs = f(1.5)
    assert [o.dtype.name for o in outs] == ["float32", "int32", "bool", "float32"]
    assert all(isinstance(o, np.ndarray) and o.ndim == 0 for o in outs)
    single = graphc.function([x], x + 1, mode=mode)
    assert isinstance(single(1.0), np.ndarray)
    assert isinstance(graphc.function([x], [x + 1], mode=mode)(1.0), list)


@mode_param
def test_maker_fgraph_and_function_attributes(mode):
    x = T.dmatrix("x")
    w = graphc.shared(np.ones((2, 2)), name="w")
    f = graphc.function([x], T.dot(x, w), updates=[(w, w * 0.5)], name="f", mode=mode)
    fg = f.maker.fgraph
    assert fg.inputs[0].name == "x" and len(fg.outputs) == 2   # output + update value
    assert fg.toposort()
    assert f.name == "f"
    assert x in [i.variable for i in f.inputs]


@mode_param
def test_out_and_explicit_mode_objects(mode):
    x = T.dvector("x")
    f = graphc.function([x], graphc.Out(x * 2, borrow=True), mode=mode)
    np.testing.assert_array_equal(f(np.ones(2)), [2.0, 2.0])
    g = graphc.function([x], T.exp(x), mode=graphc.Mode(linker="py", optimizer=None))
    np.testing.assert_allclose(g(np.zeros(2)), [1.0, 1.0])
    with pytest.raises(ValueError, match="unknown mode"):
        graphc.function([x], x, mode="FASTEST")


# --------------------------------------------------------------------------- shared variables
def test_shared_get_set_value_and_borrow():
    v = np.arange(4.0)
    s = graphc.shared(v, name="s")
    v[0] = 100.0
    assert s.get_value()[0] == 0.0                # shared() copies unless borrow=True
    got = s.get_value()
    got[1] = 50.0
    assert s.get_value()[1] == 1.0               # get_value() returns a copy
    b = graphc.shared(v, borrow=True)
    assert np.shares_memory(b.get_value(borrow=True), v)
    s.set_value(np.zeros(6))                      # sizes may change (unknown static shape)
    assert s.get_value().shape == (6,)
    with pytest.raises(TypeError, match="set_value of shared variable s"):
        s.set_value(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="set_value"):
        s.set_value(np.zeros(3, dtype="complex128"))
    f = graphc.shared(np.float32(1.0))
    assert f.dtype == "float32" and f.ndim == 0
    with pytest.raises(TypeError):
        graphc.shared(T.vector())
    row = graphc.shared(np.zeros((1, 3)), broadcastable=(True, False))
    assert row.broadcastable == (True, False)


@mode_param
def test_shared_value_changes_are_seen_by_compiled_functions(mode):
    s = graphc.shared(np.ones(2), name="s")
    f = graphc.function([], s * 3, mode=mode)
    np.testing.assert_array_equal(f(), [3.0, 3.0])
    s.set_value(np.array([1.0, 2.0, 5.0]))
    np.testing.assert_array_equal(f(), [3.0, 6.0, 15.0])


@mode_param
def test_default_update(mode):
    counter = graphc.shared(np.int64(0), name="counter")
    counter.default_update = counter + 1
    x = T.lscalar("x")
    f = graphc.function([x], x + counter, mode=mode)
    assert [int(f(10)) for _ in range(3)] == [10, 11, 12]
    g = graphc.function([x], x + counter, no_default_updates=True, mode=mode)
    g(0)
    assert counter.get_value() == 3


@mode_param
def test_eval(mode):
    x = T.dscalar("x")
    assert (x * 2).eval({x: 4.0}) == 8.0
    assert T.arange(3).sum().eval() == 3


@mode_param
def test_results_survive_later_calls_and_inputs_are_never_modified(mode):
    """Buffers the backend reuses or writes in place never leak into returned results,
    inputs or shared values."""
    x = T.dmatrix("x")
    s = graphc.shared(np.ones((2, 3)), name="s")
    e = T.exp(x) * 2 + s
    outs = [e.T, e[1:], T.sum(e), T.inc_subtensor(x[0], 1.0), T.set_subtensor(s[:, 0], 5.0),
            (x * 3).dimshuffle(1, 0)]
    f = graphc.function([x], outs, updates=[(s, s * 2 + T.sum(x))], mode=mode)
    a = np.zeros((2, 3))
    first = f(a)
    kept = [np.array(r, copy=True) for r in first]
    f(np.full((2, 3), 7.0))
    f(np.full((2, 3), -1.0))
    for r, k in zip(first, kept):
        np.testing.assert_array_equal(r, k)
    np.testing.assert_array_equal(a, np.zeros((2, 3)))
    # the shared value handed out by get_value(borrow=True) is replaced, not overwritten
    held = s.get_value(borrow=True)
    before = held.copy()
    f(a)
    np.testing.assert_array_equal(held, before)


@mode_param
def test_single_output_calls_return_fresh_arrays(mode):
    """One output and nothing else to do (the short way out of Function.__call__): every
    call still returns a new array of its own, also when the output is an input, a shared
    value or a 0-d result; a shape error raises and the next good call runs."""
    s = graphc.shared(np.arange(4.0), name="s")
    x = T.dvector("x")
    step = graphc.function([], s * 1.5 + 1, mode=mode)
    first = step()
    second = step()
    assert first is not second and not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, np.arange(4.0) * 1.5 + 1)
    np.testing.assert_array_equal(second, first)
    same = graphc.function([x], x, mode=mode)
    xv = np.ones(3)
    assert not np.shares_memory(same(xv), xv)
    assert not np.shares_memory(graphc.function([], s, mode=mode)(), s.get_value(borrow=True))
    total = graphc.function([x], T.sum(x), mode=mode)(xv)
    assert type(total) is np.ndarray and total.shape == () and total == 3.0
    pairs = graphc.function([x], x[:2] + x, mode=mode)
    with pytest.raises(ValueError):
        pairs(xv)
    assert pairs(np.ones(2)).tolist() == [2.0, 2.0]
