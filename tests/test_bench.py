"""The benchmark harness: a tiny end-to-end run (graphc + numpy) and the numpy oracles' gradients.

The end-to-end test runs ``python -m bench`` exactly as a user would, in a subprocess, on the
cheapest workload; the gradient tests check the hand-written numpy backward passes (which are
also the float64 references every framework is checked against) by finite differences.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.workloads import conv, nn, rnn  # noqa: E402


def test_quick_dispatch_graphc_vs_numpy(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "dispatch", "--peers", "numpy",
         "--reps", "3", "--threads", "1", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["schema"] == 1 and rec["quick"] is True and rec["threads"] == 1
    assert rec["machine"]["cores"] >= 1 and rec["machine"]["cpu"]
    assert rec["frameworks"]["graphc"]["status"] == "ok"
    assert rec["frameworks"]["numpy"]["status"] == "ok"
    assert rec["frameworks"]["torch"]["status"] in ("not selected", "not installed")
    assert list(rec["workloads"]) == ["dispatch"]
    w = rec["workloads"]["dispatch"]
    for fw in ("graphc", "numpy"):
        r = w["results"][fw]
        assert r["status"] == "ok", r
        assert r["check"]["ran"] and r["check"]["ok"] and r["check"]["max_err"] <= r["check"]["tol"]
        assert r["ms"] > 0 and r["first_call_s"] > 0 and 1 <= r["reps"] <= 3
        assert r["rate"][1] == "µs/op"
    assert w["graphc_over_best"]["steady"]["best_peer"] == "numpy"
    assert rec["graphc_failures"] == []
    assert "| dispatch |" in proc.stdout and "graphc/best" in proc.stdout


def _fd_check(loss_fn, grads, params, rng, n_probe=3, eps=1e-6):
    """Directional finite differences of loss_fn against the analytic gradients (float64).
    Unit-norm directions keep each element's step tiny, so max-pool switches are unlikely."""
    for _ in range(n_probe):
        dirs = [rng.standard_normal(p.shape) for p in params]
        norm = np.sqrt(sum(float(np.sum(d * d)) for d in dirs))
        dirs = [d / norm for d in dirs]
        plus = loss_fn([p + eps * d for p, d in zip(params, dirs)])
        minus = loss_fn([p - eps * d for p, d in zip(params, dirs)])
        numeric = (plus - minus) / (2 * eps)
        analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, dirs))
        assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-8)


def test_xent_and_mlp_gradients():
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((5, 7)), rng.integers(0, 7, 5)
    _, g = nn.xent_np(np, z.copy(), y)
    _fd_check(lambda ps: nn.xent_np(np, ps[0], y)[0], [g], [z], rng)
    params = [rng.standard_normal(s) * 0.5 for s in [(6, 5), (5,), (5, 4), (4,), (4, 3), (3,)]]
    x, y = rng.standard_normal((7, 6)), rng.integers(0, 3, 7)
    _, grads = nn.mlp_grads_np(np, params, x, y)
    _fd_check(lambda ps: nn.mlp_grads_np(np, ps, x, y)[0], grads, params, rng)


def test_lstm_gradients():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5))
    params = [rng.standard_normal((5, 8)) * 0.5, rng.standard_normal((2, 8)) * 0.5,
              rng.standard_normal(8) * 0.1]
    _, *grads = rnn.lstm_np(np, x, *params)
    _fd_check(lambda ps: rnn.lstm_np(np, x, *ps)[0], grads, params, rng)


def test_convnet_gradients():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((2, 1, 28, 28)), rng.integers(0, 10, 2)
    shapes = [(20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (800, 500), (500,), (500, 10), (10,)]
    params = [rng.standard_normal(s) / np.sqrt(np.prod(s[1:]) if len(s) > 1 else 10)
              for s in shapes]
    _, grads = conv.convnet_grads_np(np, params, x, y)
    _fd_check(lambda ps: conv.convnet_grads_np(np, ps, x, y)[0], grads, params, rng, n_probe=2)


def test_conv_is_a_true_convolution():
    """conv_np flips the filter (Theano's conv2d, filter_flip=True)."""
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 1.0
    W = np.arange(9.0).reshape(1, 1, 3, 3)
    out, _ = conv.conv_np(np, x, W)
    np.testing.assert_array_equal(out[0, 0], W[0, 0])   # a delta reproduces the kernel
