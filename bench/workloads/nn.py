"""Dense-network workloads: softmax cross-entropy gradient and one SGD step of a tanh MLP."""
from __future__ import annotations

import numpy as np

from . import Workload, dense_params, f32, f64, sgd_deltas

LR = 0.1


def xent_np(xp, z, y):
    """Mean softmax cross-entropy of logits z (n, k) with int labels y, and d loss / d z."""
    n = z.shape[0]
    rows = xp.arange(n)
    m = z.max(axis=1, keepdims=True)
    e = xp.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    loss = (xp.log(s[:, 0]) + m[:, 0] - z[rows, y]).mean()
    g = e / s
    g[rows, y] -= 1
    g /= n
    return loss, g


def mlp_grads_np(xp, params, x, y):
    """Loss and gradients of a tanh MLP with a softmax cross-entropy head (by hand)."""
    hs, acts = [], x
    for W, b in zip(params[0:-2:2], params[1:-2:2]):
        acts = xp.tanh(acts @ W + b)
        hs.append(acts)
    z = acts @ params[-2] + params[-1]
    loss, dz = xent_np(xp, z, y)
    grads = [None] * len(params)
    ins = [x] + hs
    for layer in reversed(range(len(params) // 2)):
        W = params[2 * layer]
        grads[2 * layer] = ins[layer].T @ dz
        grads[2 * layer + 1] = dz.sum(axis=0)
        if layer > 0:
            dz = (dz @ W.T) * (1 - ins[layer] * ins[layer])
    return loss, grads


class SoftmaxXentGrad(Workload):
    name = "softmax_xent_grad"
    family = "nn"
    description = "mean softmax cross-entropy of logits (256,1000) + int labels, and d/d logits"

    def inputs(self, device):
        rng = self.rng()
        return {"z": f32(2 * rng.standard_normal((256, 1000))),
                "y": rng.integers(0, 1000, 256).astype(np.int32)}

    def reference(self, inp):
        loss, g = xent_np(np, f64(inp["z"]), inp["y"])
        return (np.asarray(loss), g)

    def output_names(self):
        return ("loss", "dz")

    def build_numpy(self, inp, fw):
        z, y = fw.asarray(inp["z"]), fw.asarray(inp["y"])
        return (lambda: xent_np(fw.xp, z, y)), (lambda r: tuple(fw.to_numpy(a) for a in r))

    def build_torch(self, inp, fw):
        torch = fw.torch
        z = fw.asarray(inp["z"]).requires_grad_()
        y = fw.asarray(inp["y"]).long()
        loss_fn = fw.compile(lambda z, y: torch.nn.functional.cross_entropy(z, y))

        def step():
            loss = loss_fn(z, y)
            (g,) = torch.autograd.grad(loss, z)
            return loss, g
        return step, (lambda r: tuple(fw.to_numpy(a) for a in r))

    def build_jax(self, inp, fw):
        jax, jnp = fw.jax, fw.jnp
        z, y = fw.asarray(inp["z"]), fw.asarray(inp["y"])

        def loss_fn(z, y):
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1))
        f = jax.jit(jax.value_and_grad(loss_fn))
        return (lambda: f(z, y)), (lambda r: tuple(fw.to_numpy(a) for a in r))

    def build_theano(self, inp, fw):
        th, nn = fw.api.th, fw.api.nn
        z = th.shared(inp["z"], name="z")
        y = th.shared(inp["y"], name="y")
        loss = nn.categorical_crossentropy(nn.softmax(z), y).mean()
        f = th.function([], [loss, th.grad(loss, z)])
        return f, (lambda r: tuple(np.asarray(a) for a in r))


MLP_SIZES = (784, 1024, 1024, 10)
MLP_PARAMS = ("W1", "b1", "W2", "b2", "W3", "b3")


class MlpStep(Workload):
    name = "mlp_step"
    family = "nn"
    description = "one SGD step of a tanh MLP 784-1024-1024-10, softmax xent, batch 256"
    bound = "sgemm"

    def inputs(self, device):
        rng = self.rng()
        inp = dict(zip(MLP_PARAMS, dense_params(rng, MLP_SIZES)))
        inp["x"] = f32(rng.standard_normal((256, 784)))
        inp["y"] = rng.integers(0, 10, 256).astype(np.int32)
        return inp

    def reference(self, inp):
        params = [f64(inp[k]) for k in MLP_PARAMS]
        loss, grads = mlp_grads_np(np, params, f64(inp["x"]), inp["y"])
        return (np.asarray(loss),) + tuple(-LR * g for g in grads)

    def output_names(self):
        return ("loss",) + tuple("d" + k for k in MLP_PARAMS)

    def compare_form(self, outs, inp):
        return sgd_deltas(outs, inp, MLP_PARAMS)

    def work(self, inp):
        b = inp["x"].shape[0]
        mats = list(zip(MLP_SIZES[:-1], MLP_SIZES[1:]))
        fwd = sum(2 * b * i * o for i, o in mats)
        back_inputs = sum(2 * b * i * o for i, o in mats[1:])   # no d/dx for the data
        return {"flops": 2 * fwd + back_inputs}

    def build_numpy(self, inp, fw):
        xp = fw.xp
        params = [fw.asarray(inp[k]) for k in MLP_PARAMS]
        x, y = fw.asarray(inp["x"]), fw.asarray(inp["y"])

        def step():
            loss, grads = mlp_grads_np(xp, params, x, y)
            for p, g in zip(params, grads):
                p -= LR * g
            return loss
        return step, (lambda r: tuple(fw.to_numpy(a) for a in [r] + params))

    def build_torch(self, inp, fw):
        torch = fw.torch
        params = [fw.asarray(inp[k]).requires_grad_() for k in MLP_PARAMS]
        x, y = fw.asarray(inp["x"]), fw.asarray(inp["y"]).long()

        def loss_fn(x, y, W1, b1, W2, b2, W3, b3):
            h1 = torch.tanh(x @ W1 + b1)
            h2 = torch.tanh(h1 @ W2 + b2)
            return torch.nn.functional.cross_entropy(h2 @ W3 + b3, y)
        loss_fn = fw.compile(loss_fn)
        opt = torch.optim.SGD(params, lr=LR, foreach=True)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(x, y, *params)
            loss.backward()
            opt.step()
            return loss
        return step, (lambda r: tuple(fw.to_numpy(a) for a in [r] + params))

    def build_jax(self, inp, fw):
        jax, jnp = fw.jax, fw.jnp
        state = [[fw.asarray(inp[k]) for k in MLP_PARAMS]]
        x, y = fw.asarray(inp["x"]), fw.asarray(inp["y"])

        def loss_fn(params, x, y):
            W1, b1, W2, b2, W3, b3 = params
            h1 = jnp.tanh(x @ W1 + b1)
            h2 = jnp.tanh(h1 @ W2 + b2)
            logp = jax.nn.log_softmax(h2 @ W3 + b3)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        def sgd(params, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            return [p - LR * g for p, g in zip(params, grads)], loss
        sgd = jax.jit(sgd, donate_argnums=0)

        def step():
            state[0], loss = sgd(state[0], x, y)
            return loss
        return step, (lambda r: tuple(fw.to_numpy(a) for a in [r] + state[0]))

    def build_theano(self, inp, fw):
        th, T, nn = fw.api.th, fw.api.T, fw.api.nn
        params = [th.shared(inp[k], name=k) for k in MLP_PARAMS]
        W1, b1, W2, b2, W3, b3 = params
        x = th.shared(inp["x"], name="x")
        y = th.shared(inp["y"], name="y")
        h1 = T.tanh(T.dot(x, W1) + b1)
        h2 = T.tanh(T.dot(h1, W2) + b2)
        loss = nn.categorical_crossentropy(nn.softmax(T.dot(h2, W3) + b3), y).mean()
        grads = th.grad(loss, params)
        f = th.function([], loss, updates=[(p, p - LR * g) for p, g in zip(params, grads)])
        return f, (lambda r: (np.asarray(r),) + tuple(np.asarray(p.get_value()) for p in params))
