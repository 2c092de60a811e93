"""The scan_store rewrite (graphc/scan_module/store.py): a backward loop reads the forward
loop's expensive step values (gate nonlinearities) instead of recomputing them; and the
step loop's lending of per-step output rows (a fused kernel writes its row in place)."""
import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.graph.basic import io_toposort
from graphc.scan_module import Scan
from graphc.scan_module.store import EXPENSIVE
from graphc.tensor.blas import Gemm
from graphc.tensor.elemwise import Elemwise
from graphc.tensor.math import Dot
from graphc.tensor.nnet import sigmoid

FAST = graphc.Mode(optimizer="fast_run")
NO_STORE = FAST.excluding("scan_store")
PY_NO_STORE = graphc.Mode(linker="py", optimizer="fast_run").excluding("scan_store")


def scan_nodes(f):
    return [n for n in f.maker.fgraph.toposort() if isinstance(n.op, Scan)]


def inner_nodes(node):
    return io_toposort(node.op.inner_inputs, node.op.inner_outputs)


def transcendentals(node):
    return [n for n in inner_nodes(node)
            if isinstance(n.op, Elemwise) and n.op.scalar_op.name in EXPENSIVE]


def lstm(x, Wx, Wh, b, H, **kw):
    def cell(x_t, h, c, Wx, Wh, b):
        z = T.dot(x_t, Wx) + T.dot(h, Wh) + b
        i, f = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H])
        g, o = T.tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        return o * T.tanh(c), c
    h0 = T.zeros((x.shape[1], H), dtype=x.dtype)
    (hs, cs), _ = graphc.scan(cell, sequences=x, outputs_info=[h0, h0],
                              non_sequences=[Wx, Wh, b], **kw)
    return hs, cs


def lstm_inputs(rng, steps=6, batch=3, n_in=4, H=3):
    return [rng.standard_normal((steps, batch, n_in)),
            rng.standard_normal((n_in, 4 * H)) / 2, rng.standard_normal((H, 4 * H)) / 2,
            rng.uniform(-0.1, 0.1, 4 * H)]


def lstm_function(mode=FAST, H=3, **kw):
    x, Wx, Wh, b = T.tensor3("x"), T.matrix("Wx"), T.matrix("Wh"), T.vector("b")
    hs, cs = lstm(x, Wx, Wh, b, H, **kw)
    loss = (hs[-1] ** 2).sum() + (hs * cs).sum() * 0.1
    return graphc.function([x, Wx, Wh, b], [loss] + graphc.grad(loss, [x, Wx, Wh, b]),
                           mode=mode)


# ------------------------------------------------------------------ structure
def test_lstm_backward_step_recomputes_no_nonlinearity():
    f = lstm_function()
    fwd, bwd = sorted(scan_nodes(f), key=lambda n: "grad" in n.op.info.name)
    assert transcendentals(fwd) and not transcendentals(bwd)
    # i, f, g, o and tanh(c) per step; the product h @ Wh the backward loop used to
    # re-read is no longer needed (the step no longer recomputes z)
    assert fwd.op.info.n_nit == 5
    # left in the backward step: dz @ Wh.T (the recurrence) and dz @ Wx.T (dx_t)
    assert len([n for n in inner_nodes(bwd) if isinstance(n.op, (Dot, Gemm))]) == 2


def test_without_the_rewrite_the_backward_step_recomputes():
    f = lstm_function(NO_STORE)
    bwd = [n for n in scan_nodes(f) if "grad" in n.op.info.name][0]
    assert transcendentals(bwd)


def test_loops_that_do_not_read_forward_steps_in_reverse_are_left_alone():
    # loop 2 reads loop 1's states forwards: nothing aligns, nothing is stored
    x, U, h0 = T.matrix("x"), T.matrix("U"), T.vector("h0")
    hs, _ = graphc.scan(lambda x_t, h, U: T.tanh(T.dot(h, U) + x_t), sequences=x,
                        outputs_info=h0, non_sequences=U)
    ys, _ = graphc.scan(lambda h_t: T.exp(h_t) * 2, sequences=hs[::-1])
    f = graphc.function([x, U, h0], ys)
    first, second = scan_nodes(f)
    assert first.op.info.n_nit <= 1 and transcendentals(second)


# ------------------------------------------------------------------ values
def lstm_reference(x, Wx, Wh, b):
    """The loss of lstm_function and its gradients, by hand (float64 BPTT)."""
    sig = lambda z: 1 / (1 + np.exp(-z))                     # noqa: E731
    H = Wh.shape[0]
    h, c = np.zeros((x.shape[1], H)), np.zeros((x.shape[1], H))
    tape, hs, cs = [], [], []
    for t in range(x.shape[0]):
        z = x[t] @ Wx + h @ Wh + b
        i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), \
            sig(z[:, 3 * H:])
        tape.append((h, c, i, f, g, o))
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
        cs.append(c)
    loss = (h ** 2).sum() + sum((a * e).sum() for a, e in zip(hs, cs)) * 0.1
    dh_next, dc_next = np.zeros_like(h), np.zeros_like(c)
    gx, gWx, gWh, gb = np.zeros_like(x), np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)
    for t in reversed(range(x.shape[0])):
        h_prev, c_prev, i, f, g, o = tape[t]
        dh = dh_next + 0.1 * cs[t] + (2 * hs[t] if t == x.shape[0] - 1 else 0)
        tc = np.tanh(cs[t])
        dc = dc_next + 0.1 * hs[t] + dh * o * (1 - tc ** 2)
        dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                             dc * i * (1 - g ** 2), dh * tc * o * (1 - o)], axis=1)
        gx[t] = dz @ Wx.T
        gWx += x[t].T @ dz
        gWh += h_prev.T @ dz
        gb += dz.sum(axis=0)
        dh_next, dc_next = dz @ Wh.T, dc * f
    return [loss, gx, gWx, gWh, gb]


def test_lstm_gradients_match_a_hand_written_bptt(rng):
    args = lstm_inputs(rng)
    for got, ref in zip(lstm_function()(*args), lstm_reference(*args)):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(truncate_gradient=3), dict(go_backwards=True),
                                dict(n_steps=4)], ids=["truncate", "backwards", "short"])
def test_lstm_variants_match_the_graph_without_the_rewrite(rng, kw):
    args = lstm_inputs(rng)
    got = lstm_function(**kw)(*args)
    ref = lstm_function(PY_NO_STORE, **kw)(*args)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-12)


def test_taps_and_sequence_values_are_stored_at_the_right_step(rng):
    # the backward step needs exp(x_t), tanh of tap -2 and of the new state: every
    # kind of forward value (sequence, older tap, new state) at its own step
    x, h0, W = T.matrix("x"), T.matrix("h0"), T.matrix("W")

    def step(x_t, h2, h1, W):
        return T.tanh(T.dot(h1, W)) * T.exp(x_t) + T.sin(h2) * 0.5
    hs, _ = graphc.scan(step, sequences=x, outputs_info=dict(initial=h0, taps=[-2, -1]),
                        non_sequences=W)
    cost = (T.cos(hs) * hs).sum()
    outs = [cost] + graphc.grad(cost, [x, h0, W])
    vals = [rng.standard_normal((7, 3)) / 2, rng.standard_normal((2, 3)),
            rng.standard_normal((3, 3)) / 2]
    f = graphc.function([x, h0, W], outs)
    fwd = [n for n in scan_nodes(f) if "grad" not in n.op.info.name]
    assert any(n.op.info.n_nit for n in fwd)
    ref = graphc.function([x, h0, W], outs, mode=PY_NO_STORE)(*vals)
    for g, r in zip(f(*vals), ref):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-12)


def test_second_derivatives_through_a_stored_loop(rng):
    x, w = T.vector("x"), T.scalar("w")
    hs, _ = graphc.scan(lambda x_t, h, w: T.tanh(h * w + x_t), sequences=x,
                        outputs_info=T.constant(0.0), non_sequences=w)
    g = graphc.grad(hs.sum(), w)
    gg = graphc.grad(g, w)
    vals = [rng.standard_normal(5), 0.7]
    got = graphc.function([x, w], [g, gg])(*vals)
    ref = graphc.function([x, w], [g, gg], mode=PY_NO_STORE)(*vals)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ per-step output rows
LLVM = graphc.Mode(linker="llvm", optimizer="fast_run")
PY = graphc.Mode(linker="py", optimizer="fast_run")


def test_lent_per_step_rows_hold_every_step(rng):
    x, h0 = T.matrix("x"), T.vector("h0")
    (hs, ys), _ = graphc.scan(lambda x_t, h: [h * 0.5 + x_t, T.tanh(x_t) * h],
                              sequences=x, outputs_info=[h0, None])
    xv, h0v = rng.standard_normal((9, 5)), rng.standard_normal(5)
    f = graphc.function([x, h0], [hs, ys], mode=LLVM)
    got = f(xv, h0v)
    ref = graphc.function([x, h0], [hs, ys], mode=PY)(xv, h0v)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-12)
    first = [g.copy() for g in got]
    f(xv * 2, h0v)                           # a second call must not write into the first
    for g, r in zip(got, first):
        np.testing.assert_array_equal(g, r)
    (node,) = scan_nodes(f)
    inner = next(iter(node.op._compiled.values()))
    assert all(c is None or c[0] is None for c in inner.dest_cells)


def test_lent_final_value_buffers_alternate_correctly(rng):
    # a shared variable updated by every step is a final-value state: its new value is
    # written into the holder's spare buffer, then the two buffers swap
    x = T.matrix("x")
    s = graphc.shared(np.zeros(4), name="s")

    def step(x_t):
        return T.tanh(x_t) + s * 0.5, {s: s * 0.5 + T.exp(-x_t * x_t)}
    ys, updates = graphc.scan(step, sequences=x)
    xv = rng.standard_normal((7, 4))
    results = []
    for mode in (LLVM, PY):
        s.set_value(np.zeros(4))
        f = graphc.function([x], ys, updates=updates, mode=mode)
        results.append((f(xv), s.get_value(), f(xv * 2), s.get_value()))
    for got, ref in zip(*results):
        np.testing.assert_allclose(got, ref, rtol=1e-12)

