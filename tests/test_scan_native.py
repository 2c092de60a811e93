"""Loops whose steps map batch rows to rows run their later steps natively, by rows
(graphc/scan_module/native.py): the same results as the Python loop, and the Python loop
wherever a step does not fit."""
import time

import numpy as np
import pytest

import graphc as theano
import graphc.tensor as T
from graphc.configdefaults import config
from graphc.scan_module import native
from graphc.tensor import nnet


def _call(f, args, want_native):
    """f(*args) and the change of native.stats in that call. With a cold compile cache the
    native steps' code compiles in the background and the first calls run in Python:
    called again (up to ~30 s) until a call ran ``want_native`` loops natively."""
    deadline = time.monotonic() + 30
    while True:
        before = dict(native.stats)
        res = f(*args)
        ran = {k: native.stats[k] - before[k] for k in before}
        # (a loop that ran on an earlier call's program counts: native.Template)
        if ran["native"] + ran["reused"] >= want_native or time.monotonic() > deadline:
            return [np.asarray(r) for r in (res if isinstance(res, list) else [res])], ran
        time.sleep(0.05)


def _run_both(build, *args, want_native=1):
    """Outputs with the native steps and with the Python loop only, and how many loops
    ran which way in the first."""
    out = {}
    ran = None
    for flag in (True, False):
        old = config.scan_native
        config.scan_native = flag
        try:
            res, r = _call(build(), args, want_native if flag else 0)
            if flag:
                ran = r
            out[flag] = res
        finally:
            config.scan_native = old
    return out[True], out[False], ran


def _lstm(batch, hidden, steps, n_in=8, seed=0):
    rng = np.random.default_rng(seed)
    x = theano.shared(rng.standard_normal((steps, batch, n_in)).astype("float32"), name="x")
    Wx = theano.shared((rng.standard_normal((n_in, 4 * hidden)) / 3).astype("float32"))
    Wh = theano.shared((rng.standard_normal((hidden, 4 * hidden)) / 4).astype("float32"))
    b = theano.shared(rng.uniform(-0.1, 0.1, 4 * hidden).astype("float32"))
    loss, hs = _lstm_loss(x, batch, hidden, Wx, Wh, b)
    params = [Wx, Wh, b]
    return lambda: theano.function([], [loss, hs] + theano.grad(loss, params))


def _lstm_loss(x, batch, H, Wx, Wh, b):
    """(loss, hidden states) of an LSTM over the sequence x, from zero states."""
    def cell(x_t, h, c, Wx, Wh, b):
        z = T.dot(x_t, Wx) + T.dot(h, Wh) + b
        i, f = nnet.sigmoid(z[:, :H]), nnet.sigmoid(z[:, H:2 * H])
        g, o = T.tanh(z[:, 2 * H:3 * H]), nnet.sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        return o * T.tanh(c), c
    h0 = T.zeros((batch, H), dtype="float32")
    (hs, cs), _ = theano.scan(cell, sequences=x, outputs_info=[h0, h0],
                              non_sequences=[Wx, Wh, b])
    return (hs[-1] * hs[-1]).sum() + cs.mean(), hs


@pytest.mark.parametrize("steps", [9, 12, 13])
@pytest.mark.parametrize("batch", [8, 12, 32])
def test_lstm_forward_and_gradient_loops_run_natively(batch, steps):
    got, ref, ran = _run_both(_lstm(batch, 16, steps), want_native=2)
    # the forward loop and its gradient's (on a cold compile cache a loop may have become
    # native in an earlier call, and run on that call's program: native.Template)
    assert ran["python"] == 0 and ran["native"] + ran["reused"] == 2, ran
    for g, r in zip(got, ref):
        # the same kernels in the same order of operations: the same numbers
        np.testing.assert_array_equal(g, r)


def test_lstm_matches_numpy():
    batch, H, steps, n_in = 8, 16, 11, 8
    f = _lstm(batch, H, steps, n_in, seed=3)()
    loss, hs = _call(f, (), 2)[0][:2]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((steps, batch, n_in)).astype("float32")
    Wx = (rng.standard_normal((n_in, 4 * H)) / 3).astype("float32")
    Wh = (rng.standard_normal((H, 4 * H)) / 4).astype("float32")
    b = rng.uniform(-0.1, 0.1, 4 * H).astype("float32")
    h = np.zeros((batch, H)); c = np.zeros((batch, H)); want = []
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for t in range(steps):
        z = x[t] @ Wx + h @ Wh + b
        c = sig(z[:, H:2 * H]) * c + sig(z[:, :H]) * np.tanh(z[:, 2 * H:3 * H])
        h = sig(z[:, 3 * H:]) * np.tanh(c)
        want.append(h)
    np.testing.assert_allclose(hs, np.array(want), rtol=2e-5, atol=2e-6)


def _elementwise_rnn(n, batch=8, width=5, shrink=False):
    rng = np.random.default_rng(1)
    x = T.tensor3("x")
    a = theano.shared(rng.uniform(0.5, 1.0, width).astype(config.floatX), name="a")

    def step(x_t, h, a):
        new = T.tanh(h * a + x_t[:, :width])     # a broadcast row and a view of x_t
        if shrink:                                 # mixes rows: cannot run by rows
            new = new - new.mean(axis=0)
        return new
    h0 = T.zeros((batch, width), dtype=config.floatX)
    hs, _ = theano.scan(step, sequences=x, outputs_info=h0, non_sequences=a)
    cost = (hs[-1] ** 2).sum()
    xv = rng.standard_normal((n, batch, width + 2)).astype(config.floatX)
    return (lambda: theano.function([x], [hs, theano.grad(cost, a)])), xv


@pytest.mark.parametrize("n", [3, 9, 10, 11])
def test_elementwise_loop(n):
    build, xv = _elementwise_rnn(n)
    got, ref, ran = _run_both(build, xv, want_native=int(n >= native.MIN_STEPS))
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)
    if n < native.MIN_STEPS:
        assert ran == {"native": 0, "python": 0, "reused": 0}
    else:
        assert ran["native"] + ran["reused"] >= 1


def test_a_step_that_mixes_rows_runs_in_python():
    build, xv = _elementwise_rnn(12, shrink=True)
    got, ref, ran = _run_both(build, xv, want_native=0)
    assert ran["native"] + ran["reused"] == 0
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-6)


def test_series():
    assert native._series([5, 5, 5]) == (5, 0, 0)
    assert native._series([10, 20, 30]) == (0, 10, 0)
    assert native._series([30, 20, 10]) == (40, -10, 0)
    assert native._series([7, 9, 7]) == (9, 0, -2)
    for pts in ([7, 9, 7], [10, 20, 30], [30, 20, 10]):
        a, b, c = native._series(pts)
        assert [a + t * b + (t & 1) * c for t in (1, 2, 3)] == pts
    assert native._series([1, 2, 4]) is None


def test_flag_off_means_python_loop():
    build, xv = _elementwise_rnn(12)
    old = config.scan_native
    config.scan_native = False
    try:
        before = dict(native.stats)
        build()(xv)
        assert native.stats == before
    finally:
        config.scan_native = old


def _loops():
    """Step functions of different shapes (name, builder of (function, inputs)); each maps
    rows to rows."""
    B, W, N = 6, 5, 11
    fx = config.floatX
    rng = None

    def xs():
        return rng.standard_normal((N, B, W)).astype(fx)

    def backwards():
        x = T.tensor3("x")
        hs, _ = theano.scan(lambda x_t, h: T.tanh(h * 0.5 + x_t), sequences=x,
                            outputs_info=T.zeros((B, W), dtype=fx), go_backwards=True)
        return theano.function([x], hs), [xs()]

    def two_taps():
        x = T.tensor3("x")
        h0 = T.tensor3("h0")
        hs, _ = theano.scan(lambda x_t, h2, h1: T.tanh(h1 * 0.6 + h2 * 0.3 + x_t),
                            sequences=x, outputs_info=dict(initial=h0, taps=[-2, -1]))
        return theano.function([x, h0], hs), [xs(), rng.standard_normal((2, B, W)).astype(fx)]

    def per_step_outputs():
        x, y = T.tensor3("x"), T.tensor3("y")
        m = T.matrix("m")                          # a non-sequence with the batch's rows

        def step(x_t, y_t, h, m):
            h = T.tanh(h * m + x_t - y_t)
            return h, h * h + 1.0, T.exp(-h)
        (hs, sq, ex), _ = theano.scan(step, sequences=[x, y],
                                      outputs_info=[T.zeros((B, W), dtype=fx), None, None],
                                      non_sequences=m)
        return theano.function([x, y, m], [hs, sq, ex]), \
            [xs(), xs(), rng.uniform(0.5, 1, (B, W)).astype(fx)]

    def gradient():
        x = T.tensor3("x")
        a = theano.shared(rng.uniform(0.5, 1.0, W).astype(fx))
        hs, _ = theano.scan(lambda x_t, h, a: T.tanh(h * a + x_t), sequences=x,
                            outputs_info=T.zeros((B, W), dtype=fx), non_sequences=a)
        cost = (hs ** 2).sum() + hs[-1].sum()
        return theano.function([x], [cost] + theano.grad(cost, [a, x])), [xs()]

    def one_row():
        x = T.tensor3("x")
        hs, _ = theano.scan(lambda x_t, h: h * 0.9 + x_t, sequences=x,
                            outputs_info=T.zeros((1, W), dtype=fx))
        return theano.function([x], hs), [rng.standard_normal((N, 1, W)).astype(fx)]

    def returns_its_input():                       # an inner output made by no node
        x = T.tensor3("x")
        (hs, same), _ = theano.scan(lambda x_t, h: (T.tanh(h + x_t), x_t), sequences=x,
                                    outputs_info=[T.zeros((B, W), dtype=fx), None])
        return theano.function([x], [hs, same]), [xs()]
    def seeded(make):
        def build():
            nonlocal rng
            rng = np.random.default_rng(7)          # the same inputs for both runs
            return make()
        build.__name__ = make.__name__
        return build
    return [seeded(m) for m in (backwards, two_taps, per_step_outputs, gradient, one_row,
                                returns_its_input)]


@pytest.mark.parametrize("make", _loops(), ids=lambda f: f.__name__)
def test_loops_of_other_shapes(make):
    """Each loop gives the Python loop's results, natively where it fits; two more calls
    with other input values run every step on the first call's program (native.Template)."""
    # (a state of one row: its step ends in a SpecifyShape, not a row-mapping node; an inner
    # output that is an inner input has no node to write it: both stay in Python)
    must = make.__name__ not in ("one_row", "returns_its_input")
    results = {}
    for flag in (True, False):
        old = config.scan_native
        config.scan_native = flag
        try:
            f, args = make()
            calls = [args, [a * 0.5 + 0.25 for a in args], [a[::-1].copy() for a in args]]
            first = _call(f, calls[0], 1 if flag and must else 0)
            before = dict(native.stats)
            rest = [[np.asarray(r) for r in f(*c)] for c in calls[1:]]
            results[flag] = [first[0]] + rest, \
                {k: native.stats[k] - before[k] for k in before}, first[1]
        finally:
            config.scan_native = old
    (got, ran, first), (ref, _, _) = results[True], results[False]
    for g_call, r_call in zip(got, ref):
        for g, r in zip(g_call, r_call):
            np.testing.assert_array_equal(g, r)
    went = first["native"] + first["reused"]
    if must:
        assert went >= 1, first
    # every loop that went native in the first call reuses its program in the later ones
    assert ran["reused"] == 2 * went and ran["native"] == 0, (first, ran)


def test_later_calls_run_every_step_natively_on_their_own_arrays():
    """A later call relocates the first call's program to its own arrays: new inputs, new
    weights (set_value makes a new array), a final-value state (the gradient loop's), and
    the same numbers as the Python loop; a call of another batch size is analysed anew."""
    batch, H, steps, n_in = 12, 16, 11, 8
    results = {}
    for flag in (True, False):
        old = config.scan_native
        config.scan_native = flag
        try:
            rng = np.random.default_rng(5)
            x = T.ftensor3("x")
            Wh = theano.shared((rng.standard_normal((H, 4 * H)) / 4).astype("float32"))
            Wx = theano.shared((rng.standard_normal((n_in, 4 * H)) / 3).astype("float32"))
            b = theano.shared(np.zeros(4 * H, "float32"))
            loss, hs = _lstm_loss(x, x.shape[1], H, Wx, Wh, b)     # any batch size
            f = theano.function([x], [loss, hs] + theano.grad(loss, [Wx, Wh, b]))
            data = np.random.default_rng(9)
            xs = [data.standard_normal((steps, batch, n_in)).astype("float32")
                  for _ in range(3)]
            w2 = data.standard_normal((H, 4 * H)).astype("float32") / 4
            out = [_call(f, (xs[0],), 2 if flag else 0)[0]]
            before = dict(native.stats)
            out.append([np.asarray(r) for r in f(xs[1])])
            Wh.set_value(w2)                        # a new array for a non-sequence
            out.append([np.asarray(r) for r in f(xs[2])])
            out.append([np.asarray(r) for r in f(xs[0])])
            ran = {k: native.stats[k] - before[k] for k in before}
            small = data.standard_normal((steps, 8, n_in)).astype("float32")
            before = dict(native.stats)
            out.append([np.asarray(r) for r in f(small)])      # another batch size
            ran_small = {k: native.stats[k] - before[k] for k in before}
            results[flag] = out, ran, ran_small
        finally:
            config.scan_native = old
    (got, ran, ran_small), (ref, _, _) = results[True], results[False]
    assert ran == {"native": 0, "python": 0, "reused": 6}   # 3 calls, 2 loops each
    # another batch size: analysed anew (native, or Python while a kernel of its shapes
    # compiles on a cold cache), never the other size's program
    assert ran_small["reused"] == 0 and ran_small["native"] + ran_small["python"] == 2
    for g_call, r_call in zip(got, ref):
        for g, r in zip(g_call, r_call):
            np.testing.assert_array_equal(g, r)
    assert not np.array_equal(got[1][1], got[2][1])         # the new weights were used
