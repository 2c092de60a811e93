"""Scan on the native backend: the pushout rewrite (loop-invariant matrix products moved
out of the loop, structurally and against the un-rewritten graph) and the step loop's
buffer lending (a step writes its state straight into the scan's buffer)."""
import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.scan_module import Scan
from graphc.tensor.blas import Gemm
from graphc.tensor.math import Dot

from test_scan_store import lstm

NO_PUSHOUT = graphc.Mode(linker="py", optimizer="fast_run").excluding("scan_pushout",
                                                                      "scan_store")


def scan_nodes(f):
    return [n for n in f.maker.fgraph.toposort() if isinstance(n.op, Scan)]


def inner_products(node):
    """Matrix products left in the loop body of a Scan node (its unoptimized inner graph)."""
    from graphc.graph.basic import io_toposort
    return [n for n in io_toposort(node.op.inner_inputs, node.op.inner_outputs)
            if isinstance(n.op, (Dot, Gemm))]


def lstm_loss(x, Wx, Wh, b, H):
    hs, _ = lstm(x, Wx, Wh, b, H)       # the LSTM of test_scan_store.py
    return (hs[-1] ** 2).sum()


def lstm_inputs(rng, steps=5, batch=3, n_in=4, H=3):
    return [rng.standard_normal((steps, batch, n_in)),
            rng.standard_normal((n_in, 4 * H)) / 2, rng.standard_normal((H, 4 * H)) / 2,
            rng.uniform(-0.1, 0.1, 4 * H)]


def lstm_function(mode=None, H=3):
    """loss and its gradients w.r.t. Wx, Wh, b."""
    x, Wx, Wh = T.tensor3("x"), T.matrix("Wx"), T.matrix("Wh")
    b = T.vector("b")
    loss = lstm_loss(x, Wx, Wh, b, H)
    return graphc.function([x, Wx, Wh, b], [loss] + graphc.grad(loss, [Wx, Wh, b]),
                           mode=mode)


# ------------------------------------------------------------------ pushout, structure
def test_lstm_loops_keep_only_the_recurrent_product():
    f = lstm_function(graphc.Mode(optimizer="fast_run").excluding("scan_store"))
    fwd, bwd = sorted(scan_nodes(f), key=lambda n: "grad" in n.op.info.name)
    # forward: x_t @ Wx became one product over all steps; h @ Wh stays in the loop
    assert len(inner_products(fwd)) == 1
    # backward: the recomputed x_t @ Wx and h_{t-1} @ Wh are sequences now, and the
    # weight-gradient accumulators are products after the loop; dz @ Wh.T stays
    assert len(inner_products(bwd)) == 1
    assert bwd.op.info.n_final == 2          # only the two adjoint windows are carried
    # the backward loop's h_{t-1} @ Wh is not recomputed: the forward loop outputs it
    assert fwd.op.info.n_nit == 1
    outer = [n for n in f.maker.fgraph.toposort() if isinstance(n.op, (Dot, Gemm))]
    # x @ Wx, and X.T @ dZ with H.T @ dZ as one product (graphc/rewriting/shared_gemm.py)
    assert len(outer) == 2
    # the forward loop's and the backward loop's x @ Wx were merged into one product
    shared = [n for n in outer if any(v.name == "x" for v in n.inputs[0].owner.inputs)]
    assert len(shared) == 1


def test_pushout_leaves_loops_with_state_dependent_products_alone():
    x, h0, W = T.matrix("x"), T.vector("h0"), T.matrix("W")
    hs, _ = graphc.scan(lambda x_t, h, W: T.tanh(T.dot(h, W) + x_t), sequences=x,
                        outputs_info=h0, non_sequences=W)
    f = graphc.function([x, h0, W], hs)
    (node,) = scan_nodes(f)
    assert node.op.info.n_seqs == 1 and len(inner_products(node)) == 1


# ------------------------------------------------------------------ pushout, values
def test_lstm_gradients_match_the_unrewritten_graph(rng):
    args = lstm_inputs(rng)
    got = lstm_function()(*args)
    ref = lstm_function(NO_PUSHOUT)(*args)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", ["vector", "taps", "backwards", "truncate", "short"])
def test_pushout_variants_match_the_unrewritten_graph(rng, case):
    x, W, U = T.matrix("x"), T.matrix("W"), T.matrix("U")
    h0 = T.vector("h0")
    kw = {}
    if case == "taps":          # two slices of one sequence, each multiplied by W
        seqs = dict(input=x, taps=[-1, 0])
        step = lambda a, b, h, W, U: T.tanh(T.dot(a, W) + T.dot(b, W) + T.dot(h, U))  # noqa
        kw = dict(sequences=seqs)
    else:
        step = lambda x_t, h, W, U: T.tanh(T.dot(x_t, W) + T.dot(h, U))  # noqa
        kw = dict(sequences=x)
    if case == "backwards":
        kw["go_backwards"] = True
    if case == "truncate":
        kw["truncate_gradient"] = 3
    if case == "short":
        kw["n_steps"] = 4
    hs, _ = graphc.scan(step, outputs_info=h0, non_sequences=[W, U], **kw)
    cost = (hs ** 2).sum() + hs[-1].sum()
    outs = [hs] + graphc.grad(cost, [x, W, U, h0])
    vals = [rng.standard_normal((7, 3)), rng.standard_normal((3, 2)),
            rng.standard_normal((2, 2)), rng.standard_normal(2)]
    got = graphc.function([x, W, U, h0], outs)(*vals)
    ref = graphc.function([x, W, U, h0], outs, mode=NO_PUSHOUT)(*vals)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-12)


def test_second_loop_reuses_the_products_of_the_first(rng):
    # loop 2 reads loop 1's states h[1:] and multiplies them by the U loop 1 used
    x, U, h0 = T.matrix("x"), T.matrix("U"), T.vector("h0")
    hs, _ = graphc.scan(lambda x_t, h, U: T.tanh(T.dot(h, U) + x_t), sequences=x,
                        outputs_info=h0, non_sequences=U)
    ys, _ = graphc.scan(lambda h_t, U: T.dot(h_t, U) * 2, sequences=hs, non_sequences=U)
    f = graphc.function([x, U, h0], ys)
    first, second = scan_nodes(f)
    assert first.op.info.n_nit == 1 and not inner_products(second)
    vals = [rng.standard_normal((5, 3)), rng.standard_normal((3, 3)), rng.standard_normal(3)]
    ref = graphc.function([x, U, h0], ys, mode=NO_PUSHOUT)(*vals)
    np.testing.assert_allclose(f(*vals), ref, rtol=1e-12)


def test_accumulators_of_batched_loop_become_products_after_it(rng):
    # gradient of W through a batched loop: acc + x_t.T @ dz_t and acc + sum(dz_t, 0)
    x, W, b = T.tensor3("x"), T.matrix("W"), T.vector("b")
    h0 = T.zeros((x.shape[1], W.shape[1]), dtype=x.dtype)
    hs, _ = graphc.scan(lambda x_t, h, W, b: T.tanh(T.dot(x_t, W) + b) * h + x_t.sum(),
                        sequences=x, outputs_info=h0, non_sequences=[W, b])
    grads = graphc.grad((hs ** 2).sum(), [W, b])
    f = graphc.function([x, W, b], grads)
    bwd = [n for n in scan_nodes(f) if "grad" in n.op.info.name]
    assert bwd and all(n.op.info.n_final == 1 for n in bwd)     # the adjoint window only
    vals = [rng.standard_normal((6, 4, 3)), rng.standard_normal((3, 2)),
            rng.standard_normal(2)]
    ref = graphc.function([x, W, b], grads, mode=NO_PUSHOUT)(*vals)
    for g, r in zip(f(*vals), ref):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ step loop buffers
LLVM = graphc.Mode(linker="llvm", optimizer="fast_run")
PY = graphc.Mode(linker="py", optimizer="fast_run")


def test_lent_state_rows_hold_every_step(rng):
    x, h0 = T.matrix("x"), T.matrix("h0")
    hs, _ = graphc.scan(lambda x_t, h2, h1: h1 * 0.5 + h2 * 0.25 + x_t, sequences=x,
                        outputs_info=dict(initial=h0, taps=[-2, -1]))
    xv, h0v = rng.standard_normal((9, 5)), rng.standard_normal((2, 5))
    f = graphc.function([x, h0], hs, mode=LLVM)
    got = f(xv, h0v)
    ref = graphc.function([x, h0], hs, mode=PY)(xv, h0v)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    first = got.copy()
    f(xv * 2, h0v)                           # a second call must not write into the first
    np.testing.assert_array_equal(got, first)


def test_inner_function_never_reuses_a_lent_row(rng):
    x = T.matrix("x")
    hs, _ = graphc.scan(lambda x_t, h: h * 0.9 + x_t, sequences=x,
                        outputs_info=T.zeros((4,)))
    f = graphc.function([x], hs, mode=LLVM)
    a = f(rng.standard_normal((5, 4)))
    keep = a.copy()
    (node,) = scan_nodes(f)
    inner = next(iter(node.op._compiled.values()))
    assert all(c is None or c[0] is None for c in inner.dest_cells)
    inner([np.ones(4), np.ones(4)])          # a direct call writes a fresh array
    np.testing.assert_array_equal(a, keep)


def test_fused_fast_path_follows_changing_shapes_and_strides(rng):
    x, y = T.matrix("x"), T.matrix("y")
    f = graphc.function([x, y], T.tanh(x) * y + 1, mode=LLVM)
    for shape in [(3, 4), (3, 4), (2, 5), (3, 4)]:
        a, b = rng.standard_normal(shape), rng.standard_normal(shape)
        np.testing.assert_allclose(f(a, b), np.tanh(a) * b + 1, rtol=1e-12)
    big = rng.standard_normal((6, 8))
    a, b = big[::2, ::2], big[1::2, 1::2]    # same shape, other strides
    np.testing.assert_allclose(f(a, b), np.tanh(a) * b + 1, rtol=1e-12)
