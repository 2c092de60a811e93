"""lstm_step: gradients of an LSTM over 50 steps (theano.scan, nn.LSTM, a hand loop, lax.scan)."""
from __future__ import annotations

import numpy as np

from . import Workload, f32, f64

STEPS, BATCH, N_IN, N_HID = 50, 32, 128, 256
PARAMS = ("Wx", "Wh", "b")     # gates stacked along columns in the order i, f, g, o


def _sigmoid(xp, z):
    return 1.0 / (1.0 + xp.exp(-z))


def lstm_np(xp, x, Wx, Wh, b):
    """loss = sum(h_T^2) and its gradients w.r.t. (Wx, Wh, b), by hand-written BPTT."""
    H = Wh.shape[0]
    h = xp.zeros((x.shape[1], H), x.dtype)
    c = xp.zeros_like(h)
    tape = []
    for t in range(x.shape[0]):
        z = x[t] @ Wx + h @ Wh + b
        i, f = _sigmoid(xp, z[:, :H]), _sigmoid(xp, z[:, H:2 * H])
        g, o = xp.tanh(z[:, 2 * H:3 * H]), _sigmoid(xp, z[:, 3 * H:])
        tape.append((h, c, i, f, g, o))
        c = f * c + i * g
        h = o * xp.tanh(c)
    loss = (h * h).sum()
    dh, dc = 2 * h, xp.zeros_like(c)
    gWx, gWh, gb = xp.zeros_like(Wx), xp.zeros_like(Wh), xp.zeros_like(b)
    for t in reversed(range(x.shape[0])):
        h_prev, c_prev, i, f, g, o = tape[t]
        tc = xp.tanh(f * c_prev + i * g)
        dc = dc + dh * o * (1 - tc * tc)
        dz = xp.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                             dc * i * (1 - g * g), dh * tc * o * (1 - o)], axis=1)
        gWx += x[t].T @ dz
        gWh += h_prev.T @ dz
        gb += dz.sum(axis=0)
        dh, dc = dz @ Wh.T, dc * f
    return loss, gWx, gWh, gb


class LstmStep(Workload):
    name = "lstm_step"
    family = "rnn"
    description = ("LSTM batch 32, 50 steps, input 128, hidden 256; loss = sum(h_T^2), "
                   "gradients w.r.t. all weights")
    reps_scale = 0.5
    bound = "sgemm"

    def inputs(self, device):
        rng = self.rng()
        return {"x": f32(rng.standard_normal((STEPS, BATCH, N_IN))),
                "Wx": f32(rng.standard_normal((N_IN, 4 * N_HID)) / np.sqrt(N_IN)),
                "Wh": f32(rng.standard_normal((N_HID, 4 * N_HID)) / np.sqrt(N_HID)),
                "b": f32(rng.uniform(-0.1, 0.1, 4 * N_HID))}

    def reference(self, inp):
        loss, *grads = lstm_np(np, *(f64(inp[k]) for k in ("x",) + PARAMS))
        return (np.asarray(loss), *grads)

    def output_names(self):
        return ("loss", "dWx", "dWh", "db")

    def work(self, inp):
        mat = 2 * BATCH * (N_IN + N_HID) * 4 * N_HID         # z = [x h] @ [Wx; Wh]
        dh = 2 * BATCH * 4 * N_HID * N_HID                     # dz @ Wh.T
        return {"flops": STEPS * (2 * mat + dh)}

    def variants(self, fw):
        return ["hand loop"] if fw.name == "torch" else []

    def build_numpy(self, inp, fw):
        args = [fw.asarray(inp[k]) for k in ("x",) + PARAMS]
        return (lambda: lstm_np(fw.xp, *args)), (lambda r: tuple(fw.to_numpy(a) for a in r))

    def build_torch(self, inp, fw, variant=None):
        torch = fw.torch
        x = fw.asarray(inp["x"])
        collect = (lambda r: tuple(fw.to_numpy(a) for a in r))
        if fw.compiled or variant == "hand loop":
            params = [fw.asarray(inp[k]).requires_grad_() for k in PARAMS]

            def loss_fn(x, Wx, Wh, b):
                h = x.new_zeros((x.shape[1], Wh.shape[0]))
                c = torch.zeros_like(h)
                for t in range(x.shape[0]):
                    i, f, g, o = (x[t] @ Wx + h @ Wh + b).chunk(4, dim=1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                return (h * h).sum()
            loss_fn = fw.compile(loss_fn)

            def step():
                loss = loss_fn(x, *params)
                return (loss,) + torch.autograd.grad(loss, params)
            return step, collect
        # eager: the library LSTM with the same weights (PyTorch stores them transposed)
        lstm = torch.nn.LSTM(N_IN, N_HID).to(fw.dev)
        with torch.no_grad():
            lstm.weight_ih_l0.copy_(fw.asarray(inp["Wx"]).T)
            lstm.weight_hh_l0.copy_(fw.asarray(inp["Wh"]).T)
            lstm.bias_ih_l0.copy_(fw.asarray(inp["b"]))
            lstm.bias_hh_l0.zero_()
        params = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0]

        def step():
            _, (h, _) = lstm(x)
            loss = (h * h).sum()
            gi, gh, gb = torch.autograd.grad(loss, params)
            return loss, gi.T, gh.T, gb
        return step, collect

    def build_jax(self, inp, fw):
        jax, jnp = fw.jax, fw.jnp
        x = fw.asarray(inp["x"])
        params = [fw.asarray(inp[k]) for k in PARAMS]

        def loss_fn(params, x):
            Wx, Wh, b = params

            def cell(carry, x_t):
                h, c = carry
                i, f, g, o = jnp.split(x_t @ Wx + h @ Wh + b, 4, axis=1)
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                return (jax.nn.sigmoid(o) * jnp.tanh(c), c), None
            h0 = jnp.zeros((x.shape[1], Wh.shape[0]), x.dtype)
            (h, _), _ = jax.lax.scan(cell, (h0, h0), x)
            return jnp.sum(h * h)
        f = jax.jit(jax.value_and_grad(loss_fn))
        return (lambda: f(params, x)), (lambda r: tuple(fw.to_numpy(a) for a in [r[0], *r[1]]))

    def build_theano(self, inp, fw):
        th, T, nn = fw.api.th, fw.api.T, fw.api.nn
        H = N_HID
        x = th.shared(inp["x"], name="x")
        params = [th.shared(inp[k], name=k) for k in PARAMS]

        def cell(x_t, h, c, Wx, Wh, b):
            z = T.dot(x_t, Wx) + T.dot(h, Wh) + b
            i, f = nn.sigmoid(z[:, :H]), nn.sigmoid(z[:, H:2 * H])
            g, o = T.tanh(z[:, 2 * H:3 * H]), nn.sigmoid(z[:, 3 * H:])
            c = f * c + i * g
            return o * T.tanh(c), c
        h0 = T.zeros((BATCH, H), dtype="float32")
        (hs, _), _ = th.scan(cell, sequences=x, outputs_info=[h0, h0], non_sequences=params)
        loss = (hs[-1] * hs[-1]).sum()
        f = th.function([], [loss] + list(th.grad(loss, params)))
        return f, (lambda r: tuple(np.asarray(a) for a in r))
