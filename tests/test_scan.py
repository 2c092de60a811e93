"""graphc.scan: Theano's semantics, gradients (BPTT) against finite differences and a
hand-written numpy LSTM, updates, random numbers in the step, errors."""
import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.gradient import verify_grad
from graphc.scan_module import Scan, until
from graphc.tensor.elemwise import ShapeError
from graphc.tensor.shared_randomstreams import RandomStreams


def scan_nodes(f):
    return [n for n in f.maker.fgraph.toposort() if isinstance(n.op, Scan)]


def scan_node_of(v):
    """The Scan node that computes ``v`` (scan() returns views of the buffers)."""
    while not isinstance(v.owner.op, Scan):
        v = v.owner.inputs[0]
    return v.owner


def rnn(x, h0, W, mode=None):
    hs, _ = graphc.scan(lambda x_t, h, W: T.tanh(T.dot(h, W) + x_t), sequences=x,
                        outputs_info=h0, non_sequences=W, mode=mode)
    return hs


# ------------------------------------------------------------------ forward semantics
@pytest.mark.parametrize("mode", [None, "FAST_COMPILE"])
def test_rnn_forward_matches_numpy(rng, mode):
    x, h0, W = T.matrix("x"), T.vector("h0"), T.matrix("W")
    f = graphc.function([x, h0, W], rnn(x, h0, W, mode), mode=mode)
    xv, h0v, Wv = rng.standard_normal((6, 3)), rng.standard_normal(3), rng.standard_normal((3, 3))
    h, ref = h0v, []
    for t in range(6):
        h = np.tanh(h @ Wv + xv[t])
        ref.append(h)
    np.testing.assert_allclose(f(xv, h0v, Wv), ref, rtol=1e-10)


def test_output_taps_fibonacci():
    x0 = T.vector("x0")
    fib, _ = graphc.scan(lambda a, b: a + b, outputs_info=dict(initial=x0, taps=[-2, -1]),
                         n_steps=8)
    np.testing.assert_array_equal(graphc.function([x0], fib)(np.array([1.0, 1.0])),
                                  [2, 3, 5, 8, 13, 21, 34, 55])


def test_sequence_taps():
    s = T.vector("s")
    o, _ = graphc.scan(lambda a, b, c: a + 10 * b + 100 * c,
                       sequences=dict(input=s, taps=[-1, 0, 1]))
    np.testing.assert_array_equal(graphc.function([s], o)(np.arange(6.0)),
                                  [210, 321, 432, 543])
    # all-negative taps: the current position still counts, as in Theano
    o, _ = graphc.scan(lambda a: a, sequences=dict(input=s, taps=[-1]))
    np.testing.assert_array_equal(graphc.function([s], o)(np.arange(6.0)), [0, 1, 2, 3, 4])


def test_go_backwards_and_per_step_outputs():
    s = T.vector("s")
    (acc, dbl), _ = graphc.scan(lambda a, h: [h + a, 2 * a], sequences=s,
                                outputs_info=[np.float64(0), None], go_backwards=True)
    a, d = graphc.function([s], [acc, dbl])(np.arange(4.0))
    np.testing.assert_array_equal(a, [3, 5, 6, 6])
    np.testing.assert_array_equal(d, [6, 4, 2, 0])


def test_n_steps_without_sequences_and_n_steps_cut():
    k = T.iscalar("k")
    o, _ = graphc.scan(lambda h: h * 2, outputs_info=T.constant(1.0), n_steps=k)
    np.testing.assert_array_equal(graphc.function([k], o)(4), [2, 4, 8, 16])
    assert graphc.function([k], o)(0).shape == (0,)
    s = T.vector("s")
    o, _ = graphc.scan(lambda a: a + 1, sequences=s, n_steps=3)
    np.testing.assert_array_equal(graphc.function([s], o)(np.zeros(5)), [1, 1, 1])


def test_until_stops_early():
    def power_of_2(prev, max_value):
        return prev * 2, until(prev * 2 > max_value)
    m = T.scalar("m")
    values, _ = graphc.scan(power_of_2, outputs_info=T.constant(1.0), non_sequences=m,
                            n_steps=1024)
    np.testing.assert_array_equal(graphc.function([m], values)(45), [2, 4, 8, 16, 32, 64])


def test_outputs_none_and_return_list():
    s = T.vector("s")
    o, upd = graphc.scan(lambda a: a * 2, sequences=s, return_list=True)
    assert isinstance(o, list) and len(o) == 1 and not upd
    count = graphc.shared(np.int64(0))
    o, upd = graphc.scan(lambda a: {count: count + 1}, sequences=s)
    assert o is None
    graphc.function([s], [], updates=upd)(np.zeros(5))
    assert count.get_value() == 5


def test_shared_updates_in_step():
    count = graphc.shared(np.int64(0), name="count")
    acc = graphc.shared(np.zeros(3), name="acc")
    X = T.matrix("X")
    o, upd = graphc.scan(lambda x_t: (x_t * 2, {count: count + 1, acc: acc + x_t}), sequences=X)
    f = graphc.function([X], o, updates=upd)
    np.testing.assert_array_equal(f(np.ones((4, 3))), 2 * np.ones((4, 3)))
    f(np.ones((4, 3)))
    assert count.get_value() == 8
    np.testing.assert_array_equal(acc.get_value(), [8, 8, 8])


def test_shared_variable_in_step_is_an_input_and_givens_reach_it():
    W = graphc.shared(2.0, name="W")
    s = T.vector("s")
    o, _ = graphc.scan(lambda a: a * W, sequences=s)
    node = scan_node_of(o)
    assert W in node.inputs          # an explicit non-sequence input of the node
    np.testing.assert_array_equal(graphc.function([s], o)(np.arange(3.0)), [0, 2, 4])
    g = graphc.function([s], o, givens={W: T.constant(3.0)})
    np.testing.assert_array_equal(g(np.arange(3.0)), [0, 3, 6])


def test_loop_invariants_are_hoisted():
    x, W = T.matrix("x"), T.matrix("W")
    hs, _ = graphc.scan(lambda x_t, h: T.tanh(T.dot(W.T, h) + x_t), sequences=x,
                        outputs_info=T.zeros((3,)))
    node = scan_node_of(hs)
    inner_ops = [type(n.op).__name__ for n in graphc.graph.basic.io_toposort(
        node.op.inner_inputs, node.op.inner_outputs)]
    assert "DimShuffle" not in inner_ops         # W.T is computed once, outside the loop


def test_nested_scan():
    X = T.matrix("X")
    def row(r):
        cs, _ = graphc.scan(lambda a, h: h + a, sequences=r, outputs_info=np.float64(0))
        return cs[-1]
    sums, _ = graphc.scan(row, sequences=X)
    xv = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(graphc.function([X], sums)(xv), xv.sum(1))
    g = graphc.function([X], graphc.grad((sums ** 2).sum(), X))(xv)
    np.testing.assert_allclose(g, 2 * xv.sum(1)[:, None] * np.ones((3, 4)))


def test_op_equality_and_infer_shape(rng):
    x, h0, W = T.matrix("x"), T.vector("h0"), T.matrix("W")
    a, b = rnn(x, h0, W), rnn(x, h0, W)
    c, _ = graphc.scan(lambda x_t, h, W: T.nnet.sigmoid(T.dot(h, W) + x_t), sequences=x,
                       outputs_info=h0, non_sequences=W)
    op_a, op_b, op_c = (scan_node_of(v).op for v in (a, b, c))
    assert op_a == op_b and hash(op_a) == hash(op_b)
    assert op_a != op_c
    node = scan_node_of(a)
    xv, h0v, Wv = rng.standard_normal((5, 3)), rng.standard_normal(3), rng.standard_normal((3, 3))
    shp = node.op.infer_shape(node, [[T.shape_i(i, d) for d in range(i.ndim)]
                                     for i in node.inputs])
    f = graphc.function([x, h0, W], [T.stack(list(s)) for s in shp], on_unused_input="ignore")
    np.testing.assert_array_equal(f(xv, h0v, Wv)[0], [6, 3])


# ------------------------------------------------------------------ gradients
def test_grad_rnn_finite_differences(rng):
    pt = [rng.standard_normal((5, 3)), rng.standard_normal(3), 0.5 * rng.standard_normal((3, 3))]
    verify_grad(lambda x, h0, W: rnn(x, h0, W), pt, rng=rng)


def test_grad_output_taps(rng):
    def f(x0, a, s):
        o, _ = graphc.scan(lambda s_t, u, v, a: T.tanh(a * u + v * v * 0.5 + s_t),
                           sequences=s, outputs_info=dict(initial=x0, taps=[-3, -1]),
                           non_sequences=a)
        return o
    verify_grad(f, [rng.standard_normal((3, 2)), np.array(0.7), rng.standard_normal((5, 2))],
                rng=rng)


def test_grad_sequence_taps_and_longer_sequence(rng):
    def f(s, w):
        o, _ = graphc.scan(lambda a, b, w: T.sin(a * w) * b, sequences=dict(input=s, taps=[-2, 1]),
                           non_sequences=w, n_steps=3)
        return o
    verify_grad(f, [rng.standard_normal((7, 2)), rng.standard_normal(2)], rng=rng)


def test_grad_go_backwards_and_until(rng):
    def f(s, h0):
        o, _ = graphc.scan(lambda a, h: (h * a + 1, until(T.gt(h, 3))), sequences=s,
                           outputs_info=h0, go_backwards=True)  # stops early
        return o
    verify_grad(f, [rng.uniform(0.5, 1.5, 6), np.array(0.3)], rng=rng)


def test_grad_through_final_value_state(rng):
    """An updated shared variable read by the step: its values are recomputed for BPTT."""
    acc = graphc.shared(np.zeros(2), name="acc")

    def f(x, h0, w):
        o, _ = graphc.scan(lambda x_t, h, w: (T.tanh(h * w + acc), {acc: acc + x_t}),
                           sequences=x, outputs_info=h0, non_sequences=w)
        return o
    verify_grad(f, [rng.standard_normal((4, 2)), rng.standard_normal(2), rng.standard_normal(2)],
                rng=rng)


def test_truncate_gradient_matches_manual_truncation(rng):
    n, k = 7, 3
    x, h0, a = T.vector("x"), T.scalar("h0"), T.scalar("a")
    step = lambda x_t, h, a: T.tanh(h * a + x_t)  # noqa: E731
    P = rng.standard_normal(n)
    hs, _ = graphc.scan(step, sequences=x, outputs_info=h0, non_sequences=a,
                        truncate_gradient=k)
    got = graphc.function([x, h0, a], graphc.grad((hs * P).sum(), [x, h0, a]))
    # reference: the first n-k steps are constants for the gradient, their outputs unused
    pre, _ = graphc.scan(step, sequences=x[:n - k], outputs_info=h0, non_sequences=a)
    post, _ = graphc.scan(step, sequences=x[n - k:], non_sequences=a,
                          outputs_info=graphc.gradient.disconnected_grad(pre[-1]))
    ref = graphc.function([x, h0, a], graphc.grad((post * P[n - k:]).sum(), [x, h0, a],
                                                  disconnected_inputs="ignore"))
    args = (rng.standard_normal(n), np.array(0.2), np.array(0.8))
    for g, r in zip(got(*args), ref(*args)):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    assert not np.any(got(*args)[0][:n - k]) and got(*args)[1] == 0


def test_grad_of_grad(rng):
    """Differentiating the backward loop (second order) against finite differences."""
    def f(h0, W):
        hs = rnn(T.zeros((4, 2)), h0, W)
        return graphc.grad((hs ** 2).sum(), h0)
    verify_grad(f, [rng.standard_normal(2), 0.5 * rng.standard_normal((2, 2))], rng=rng)


# ------------------------------------------------------------------ LSTM vs numpy
def _np_lstm(x, h0, c0, W, U, b, P):
    """Forward and hand-written BPTT of an LSTM (gates i, f, o, g) with cost sum(h * P)."""
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    H = h0.shape[1]
    hs, cs, gates = [h0], [c0], []
    for t in range(x.shape[0]):
        z = x[t] @ W + hs[-1] @ U + b
        i, f, o = sig(z[:, :H]), sig(z[:, H:2 * H]), sig(z[:, 2 * H:3 * H])
        g = np.tanh(z[:, 3 * H:])
        cs.append(f * cs[-1] + i * g)
        hs.append(o * np.tanh(cs[-1]))
        gates.append((i, f, o, g))
    dW, dU, db = np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)
    dx = np.zeros_like(x)
    dh_next, dc_next = np.zeros_like(h0), np.zeros_like(c0)
    for t in reversed(range(x.shape[0])):
        i, f, o, g = gates[t]
        dh = P[t] + dh_next
        tc = np.tanh(cs[t + 1])
        do = dh * tc
        dc = dh * o * (1 - tc ** 2) + dc_next
        di, dg, df = dc * g, dc * i, dc * cs[t]
        dc_next = dc * f
        dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), do * o * (1 - o),
                             dg * (1 - g ** 2)], axis=1)
        dW += x[t].T @ dz
        dU += hs[t].T @ dz
        db += dz.sum(0)
        dx[t] = dz @ W.T
        dh_next = dz @ U.T
    return np.stack(hs[1:]), [dx, dh_next, dc_next, dW, dU, db]


@pytest.mark.parametrize("mode", [None, "FAST_COMPILE"])
def test_lstm_matches_numpy_forward_and_bptt(rng, mode):
    n_t, B, n_in, H = 5, 2, 3, 4
    x, h0, c0 = T.tensor3("x"), T.matrix("h0"), T.matrix("c0")
    W, U, b = T.matrix("W"), T.matrix("U"), T.vector("b")
    P = T.tensor3("P")

    def step(x_t, h, c, W, U, b):
        z = T.dot(x_t, W) + T.dot(h, U) + b
        i, f = T.nnet.sigmoid(z[:, :H]), T.nnet.sigmoid(z[:, H:2 * H])
        o, g = T.nnet.sigmoid(z[:, 2 * H:3 * H]), T.tanh(z[:, 3 * H:])
        c_new = f * c + i * g
        return [o * T.tanh(c_new), c_new]
    (hs, cs), _ = graphc.scan(step, sequences=x, outputs_info=[h0, c0], non_sequences=[W, U, b],
                              mode=mode)
    wrt = [x, h0, c0, W, U, b]
    f = graphc.function(wrt + [P], [hs] + graphc.grad((hs * P).sum(), wrt), mode=mode)
    vals = [rng.standard_normal((n_t, B, n_in)), rng.standard_normal((B, H)),
            rng.standard_normal((B, H)), 0.5 * rng.standard_normal((n_in, 4 * H)),
            0.5 * rng.standard_normal((H, 4 * H)), 0.1 * rng.standard_normal(4 * H)]
    Pv = rng.standard_normal((n_t, B, H))
    ref_h, ref_g = _np_lstm(*vals, Pv)
    out = f(*vals, Pv)
    np.testing.assert_allclose(out[0], ref_h, rtol=1e-9, atol=1e-12)
    for got, ref in zip(out[1:], ref_g):
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------ random numbers in the step
def test_random_in_step_updates_and_gradient_replay(rng):
    srng = RandomStreams(7)
    X, h0, w = T.matrix("X"), T.vector("h0"), T.vector("w")

    def step(x_t, h, w):
        eps = srng.normal((2,))
        return [T.tanh(h * w + x_t + eps), eps]
    (hs, eps), upd = graphc.scan(step, sequences=X, outputs_info=[h0, None], non_sequences=w)
    assert len(upd) == 1
    f = graphc.function([X, h0, w], [hs, eps, graphc.grad(hs.sum(), w)], updates=upd)
    xv, h0v, wv = rng.standard_normal((4, 2)), rng.standard_normal(2), rng.standard_normal(2)
    h1, e1, g1 = f(xv, h0v, wv)
    h2, e2, _ = f(xv, h0v, wv)
    assert not np.allclose(e1, e2)            # the stream advanced between calls
    srng.seed(7)
    np.testing.assert_array_equal(f(xv, h0v, wv)[1], e1)   # reseeding replays

    def cost(wv):                              # the same noise, in numpy
        h, s = h0v, 0.0
        for t in range(4):
            h = np.tanh(h * wv + xv[t] + e1[t])
            s += h.sum()
        return s
    num = [(cost(wv + d) - cost(wv - d)) / 2e-6 for d in np.eye(2) * 1e-6]
    np.testing.assert_allclose(g1, num, rtol=1e-6)


# ------------------------------------------------------------------ errors
def test_dtype_mismatch_names_the_fix():
    h0 = T.fvector("h0")
    with pytest.raises(TypeError, match="cast"):
        graphc.scan(lambda h: h * np.float64(2.0), outputs_info=h0, n_steps=3)


def test_shape_change_at_runtime_names_the_step():
    h0 = T.vector("h0")
    o, _ = graphc.scan(lambda h: T.concatenate([h, h])[:3], outputs_info=h0, n_steps=3)
    f = graphc.function([h0], o)
    with pytest.raises(ShapeError, match="step"):
        f(np.ones(2))


def test_errors_for_missing_steps_and_short_sequences():
    with pytest.raises(ValueError, match="n_steps"):
        graphc.scan(lambda h: h, outputs_info=T.vector())
    s = T.vector("s")
    o, _ = graphc.scan(lambda a: a, sequences=s, n_steps=5)
    with pytest.raises(ShapeError, match="sequence 0 has 3 entries"):
        graphc.function([s], o)(np.zeros(3))


def test_runs_in_the_optimized_graph():
    x, h0, W = T.matrix("x"), T.vector("h0"), T.matrix("W")
    f = graphc.function([x, h0, W], rnn(x, h0, W))
    assert len(scan_nodes(f)) == 1


def test_prune_scans_drops_unread_gradients(rng):
    """grad w.r.t. the weights only: the backward loop's input-sequence gradient goes away."""
    from graphc.link.py import PyLinker
    from graphc.scan_module.rewrites import prune_scans
    x, W, U = T.tensor3("x"), T.matrix("W"), T.matrix("U")
    hs, _ = graphc.scan(lambda x_t, h, W, U: T.tanh(T.dot(x_t, W) + T.dot(h, U)), sequences=x,
                        outputs_info=T.zeros((4, 5)), non_sequences=[W, U])
    loss = (hs[-1] ** 2).sum()
    outs = [loss] + graphc.grad(loss, [W, U])
    f = graphc.function([x, W, U], outs, mode=graphc.Mode(linker="py", optimizer=None))
    vals = [rng.standard_normal((6, 4, 3)), rng.standard_normal((3, 5)),
            rng.standard_normal((5, 5))]
    ref = f(*vals)
    fg = f.maker.fgraph
    backward = [n for n in scan_nodes(f) if n.op.info.name.startswith("grad_of")]
    assert backward[0].op.info.n_nit == 1
    prune_scans(fg)
    backward = [n for n in fg.toposort() if isinstance(n.op, Scan) and
                n.op.info.name.startswith("grad_of")]
    assert backward[0].op.info.n_nit == 0
    storage, run = PyLinker().link(fg)
    for v, val in zip(fg.inputs, vals):
        storage[v][0] = val
    run()
    for got, r in zip([storage[o][0] for o in fg.outputs], ref):
        np.testing.assert_allclose(got, r, rtol=1e-12)
