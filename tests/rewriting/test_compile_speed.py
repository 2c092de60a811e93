"""Compile speed of the FAST_RUN pipeline: measured and printed, never asserted (timings
depend on the machine and its load; run with ``-s`` to see them).

    PYTHONPATH=. python -m pytest -q -s tests/rewriting/test_compile_speed.py
"""
import time

import numpy as np
import pytest

import graphc as theano
import graphc.tensor as T
from graphc.graph.basic import clone_replace, io_toposort
from graphc.graph.fg import FunctionGraph
from graphc.rewriting.pipeline import optimize

PY = theano.Mode(linker="py")


def pipeline_time(inputs, outputs, updates=()):
    """(nodes before, nodes after, seconds) of the FAST_RUN pipeline on the graph."""
    outs = list(outputs) + [u for _, u in updates]
    shared = [v for v in theano.graph.basic.graph_inputs(outs)
              if isinstance(v, theano.SharedVariable)]
    cloned = clone_replace(outs, {i: i for i in inputs})
    fg = FunctionGraph(list(inputs) + shared, cloned, clone=False)
    n = len(fg.apply_nodes)
    t, c = time.perf_counter(), time.process_time()
    optimize(fg, PY)
    return n, len(fg.apply_nodes), time.perf_counter() - t, time.process_time() - c


def report(name, inputs, outputs, updates=()):
    # CPU time is what the pipeline costs; wall time also counts other processes' load
    n, m, dt, dc = pipeline_time(inputs, outputs, updates)
    print(f"\n[compile speed] {name}: {n} nodes -> {m}, FAST_RUN pipeline "
          f"{dt * 1e3:.0f} ms wall, {dc * 1e3:.0f} ms cpu")
    return dt


def random_graph(n_nodes, seed=0):
    """A graph of n_nodes apply nodes mixing the forms the rules look for."""
    rng = np.random.default_rng(seed)
    ins = [T.dmatrix(f"x{i}") for i in range(8)]
    pool, used, seen = list(ins), set(), set()
    while len(seen) < n_nodes or len(io_toposort(ins, _sinks(ins, pool, used))) < n_nodes:
        a = pool[rng.integers(max(0, len(pool) - 50), len(pool))]
        b = pool[rng.integers(0, len(pool))]
        used.update((a, b))
        v = [lambda: a + b, lambda: a * b * 1, lambda: T.tanh(a) - b * 0.5,
             lambda: T.dot(a, b.T), lambda: T.exp(-a * a) + 0,
             lambda: a.sum(axis=1, keepdims=True) + b, lambda: T.log(1 + T.exp(a)),
             lambda: T.maximum(a, b).T.T][rng.integers(0, 8)]()
        pool.append(v)
        stack = [v.owner]
        while stack:                    # count the nodes this expression added
            n = stack.pop()
            if n is not None and n not in seen:
                seen.add(n)
                stack.extend(i.owner for i in n.inputs)
    return ins, _sinks(ins, pool, used)


def _sinks(ins, pool, used):
    return [v for v in pool[len(ins):] if v not in used]     # every sink is an output


def test_compile_speed_10000_node_graph():
    ins, outs = random_graph(10000)
    assert len(io_toposort(ins, outs)) >= 10000
    report("random 10,000-node graph", ins, outs)


def mlp_training(sizes=(784, 1024, 1024, 10)):
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        params += [theano.shared(np.zeros((a, b), "float32"), name="W"),
                   theano.shared(np.zeros(b, "float32"), name="b")]
    x, y = T.fmatrix("x"), T.ivector("y")
    h = x
    for W, b in zip(params[0:-2:2], params[1:-2:2]):
        h = T.tanh(T.dot(h, W) + b)
    loss = T.nnet.categorical_crossentropy(T.nnet.softmax(T.dot(h, params[-2]) + params[-1]),
                                           y).mean()
    grads = theano.grad(loss, params)
    return [x, y], [loss], [(p, p - 0.1 * g) for p, g in zip(params, grads)]


def test_compile_speed_mlp_training_graph():
    ins, outs, upd = mlp_training()
    report("MLP 784-1024-1024-10 training step", ins, outs, upd)
    t = time.perf_counter()
    theano.function(ins, outs, updates=upd, mode=PY)
    print(f"[compile speed] MLP: theano.function total {(time.perf_counter() - t) * 1e3:.0f} ms")


def test_compile_speed_lstm_training_graph():
    pytest.importorskip("graphc.scan_module")
    H, B = 32, 8
    x = theano.shared(np.zeros((10, B, 16), "float32"), name="x")
    params = [theano.shared(np.zeros(s, "float32"), name=n)
              for n, s in (("Wx", (16, 4 * H)), ("Wh", (H, 4 * H)), ("b", (4 * H,)))]

    def cell(x_t, h, c, Wx, Wh, b):
        z = T.dot(x_t, Wx) + T.dot(h, Wh) + b
        i, f = T.nnet.sigmoid(z[:, :H]), T.nnet.sigmoid(z[:, H:2 * H])
        g, o = T.tanh(z[:, 2 * H:3 * H]), T.nnet.sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        return o * T.tanh(c), c
    h0 = T.zeros((B, H), dtype="float32")
    (hs, _), _ = theano.scan(cell, sequences=x, outputs_info=[h0, h0], non_sequences=params)
    loss = (hs[-1] * hs[-1]).sum()
    outs = [loss] + list(theano.grad(loss, params))
    report("LSTM (scan) loss + gradients, outer graph", [], outs)
    t = time.perf_counter()
    f = theano.function([], outs, mode=PY)
    t1 = time.perf_counter()
    f()                                 # the loop bodies are compiled on the first call
    t2 = time.perf_counter()
    f()
    t3 = time.perf_counter()
    print(f"[compile speed] LSTM: theano.function {(t1 - t) * 1e3:.0f} ms, first call minus "
          f"second (inner graphs) {((t2 - t1) - (t3 - t2)) * 1e3:.0f} ms")


def test_compile_speed_convnet_training_graph():
    conv2d = pytest.importorskip("graphc.tensor.nnet.conv").conv2d
    pool = pytest.importorskip("graphc.tensor.signal.pool")
    shapes = {"W1": (20, 1, 5, 5), "W2": (50, 20, 5, 5), "W3": (800, 500), "W4": (500, 10)}
    params = []
    for k in ("W1", "W2", "W3", "W4"):
        params += [theano.shared(np.zeros(shapes[k], "float32"), name=k),
                   theano.shared(np.zeros(shapes[k][0] if k in ("W1", "W2") else shapes[k][1],
                                          "float32"), name="b" + k[1])]
    W1, b1, W2, b2, W3, b3, W4, b4 = params
    x, y = T.tensor4("x", dtype="float32"), T.ivector("y")
    c1 = conv2d(x, W1, input_shape=(64, 1, 28, 28), filter_shape=shapes["W1"])
    a1 = T.tanh(pool.pool_2d(c1 + b1.dimshuffle("x", 0, "x", "x"), ws=(2, 2), ignore_border=True))
    c2 = conv2d(a1, W2, input_shape=(64, 20, 12, 12), filter_shape=shapes["W2"])
    a2 = T.tanh(pool.pool_2d(c2 + b2.dimshuffle("x", 0, "x", "x"), ws=(2, 2), ignore_border=True))
    h = T.tanh(T.dot(a2.reshape((64, 800)), W3) + b3)
    loss = T.nnet.categorical_crossentropy(T.nnet.softmax(T.dot(h, W4) + b4), y).mean()
    grads = theano.grad(loss, params)
    report("convnet (LeNet) training step", [x, y], [loss],
           [(p, p - 0.1 * g) for p, g in zip(params, grads)])
