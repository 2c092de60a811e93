"""convnet_step: one SGD step of a LeNet-like convnet on a batch of 128 1x28x28 images.

conv5x5(20) - maxpool2 - tanh - conv5x5(50) - maxpool2 - tanh - dense500 - tanh - dense10, softmax
cross-entropy. Convolutions follow Theano's ``conv2d`` (filter_flip=True: a true convolution), so
the cross-correlating peers (PyTorch, JAX) hold their filters pre-flipped and flip them back
to check.
"""
from __future__ import annotations

import numpy as np

from . import Workload, dense_params, f32, f64, sgd_deltas
from .nn import LR, xent_np

BATCH = 128
PARAMS = ("W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4")
SHAPES = {"x": (BATCH, 1, 28, 28), "W1": (20, 1, 5, 5), "a1": (BATCH, 20, 12, 12),
          "W2": (50, 20, 5, 5)}
CONV_W = ("W1", "W2")


def conv_np(xp, x, W):
    """'valid' true convolution, NCHW * OIHW -> NOHW; also returns the im2col view for backprop."""
    k = W.shape[2]
    cols = xp.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))  # N C Ho Wo k k
    out = xp.tensordot(cols, W[:, :, ::-1, ::-1], axes=([1, 4, 5], [1, 2, 3]))
    return out.transpose(0, 3, 1, 2), cols


def conv_grad_np(xp, cols, W, dout, x_shape=None):
    """d/dW and (if x_shape is given) d/dx of conv_np."""
    k = W.shape[2]
    gW = xp.tensordot(dout, cols, axes=([0, 2, 3], [0, 2, 3]))[:, :, ::-1, ::-1]
    if x_shape is None:
        return gW, None
    dcols = xp.tensordot(dout, W[:, :, ::-1, ::-1], axes=([1], [0]))   # N Ho Wo C k k
    dx = xp.zeros(x_shape, dout.dtype)
    ho, wo = dout.shape[2:]
    for i in range(k):
        for j in range(k):
            dx[:, :, i:i + ho, j:j + wo] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return gW, dx


def pool_np(xp, a):
    n, c, h, w = a.shape
    blocks = a.reshape(n, c, h // 2, 2, w // 2, 2)
    return blocks.max(axis=(3, 5)), blocks


def pool_grad_np(blocks, m, dm):
    mask = blocks == m[:, :, :, None, :, None]
    return (mask * dm[:, :, :, None, :, None]).reshape(blocks.shape[0], blocks.shape[1], -1,
                                                       blocks.shape[4] * 2)


def convnet_grads_np(xp, params, x, y):
    W1, b1, W2, b2, W3, b3, W4, b4 = params
    c1, cols1 = conv_np(xp, x, W1)
    p1, blk1 = pool_np(xp, c1 + b1[:, None, None])
    a1 = xp.tanh(p1)
    c2, cols2 = conv_np(xp, a1, W2)
    p2, blk2 = pool_np(xp, c2 + b2[:, None, None])
    a2 = xp.tanh(p2)
    flat = a2.reshape(a2.shape[0], -1)
    h = xp.tanh(flat @ W3 + b3)
    loss, dz = xent_np(xp, h @ W4 + b4, y)
    gW4, gb4 = h.T @ dz, dz.sum(axis=0)
    dh = (dz @ W4.T) * (1 - h * h)
    gW3, gb3 = flat.T @ dh, dh.sum(axis=0)
    dp2 = (dh @ W3.T).reshape(a2.shape) * (1 - a2 * a2)
    dc2 = pool_grad_np(blk2, p2, dp2)
    gW2, da1 = conv_grad_np(xp, cols2, W2, dc2, a1.shape)
    dc1 = pool_grad_np(blk1, p1, da1 * (1 - a1 * a1))
    gW1, _ = conv_grad_np(xp, cols1, W1, dc1)
    return loss, [gW1, dc1.sum(axis=(0, 2, 3)), gW2, dc2.sum(axis=(0, 2, 3)),
                  gW3, gb3, gW4, gb4]


def _flip(a):
    return a[:, :, ::-1, ::-1].copy()


class ConvnetStep(Workload):
    name = "convnet_step"
    family = "conv"
    description = ("SGD step of a LeNet-like convnet, batch 128 of 1x28x28: conv5x5(20)-pool2-"
                   "tanh-conv5x5(50)-pool2-tanh-dense500-tanh-dense10, softmax xent")
    reps_scale = 0.5
    bound = "sgemm"

    def inputs(self, device):
        rng = self.rng()
        inp = {}
        for name, b in (("W1", "b1"), ("W2", "b2")):
            shape = SHAPES[name]
            inp[name] = f32(rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:])))
            inp[b] = f32(rng.uniform(-0.1, 0.1, shape[0]))
        inp.update(zip(PARAMS[4:], dense_params(rng, (800, 500, 10))))
        inp["x"] = f32(rng.standard_normal(SHAPES["x"]))
        inp["y"] = rng.integers(0, 10, BATCH).astype(np.int32)
        return inp

    def reference(self, inp):
        loss, grads = convnet_grads_np(np, [f64(inp[k]) for k in PARAMS], f64(inp["x"]), inp["y"])
        return (np.asarray(loss),) + tuple(-LR * g for g in grads)

    def output_names(self):
        return ("loss",) + tuple("d" + k for k in PARAMS)

    def compare_form(self, outs, inp):
        return sgd_deltas(outs, inp, PARAMS)

    def work(self, inp):
        def conv(x_shape, w_shape):
            n, c, h, w = x_shape
            o, _, k, _ = w_shape
            return 2 * n * o * c * k * k * (h - k + 1) * (w - k + 1)
        c1 = conv(SHAPES["x"], SHAPES["W1"])
        c2 = conv(SHAPES["a1"], SHAPES["W2"])
        dense = 2 * BATCH * (800 * 500 + 500 * 10)
        # forward + weight gradients + input gradients (none for the images)
        return {"flops": 2 * (c1 + c2 + dense) + c2 + dense}

    def build_numpy(self, inp, fw):
        xp = fw.xp
        params = [fw.asarray(inp[k]) for k in PARAMS]
        x, y = fw.asarray(inp["x"]), fw.asarray(inp["y"])

        def step():
            loss, grads = convnet_grads_np(xp, params, x, y)
            for p, g in zip(params, grads):
                p -= LR * g
            return loss
        return step, (lambda r: tuple(fw.to_numpy(a) for a in [r] + params))

    def _peer_params(self, inp, fw):
        """Framework arrays of the parameters, conv filters pre-flipped (cross-correlation)."""
        return [fw.asarray(_flip(inp[k]) if k in CONV_W else inp[k]) for k in PARAMS]

    def _collect(self, fw, loss, params):
        outs = [fw.to_numpy(loss)] + [fw.to_numpy(p) for p in params]
        return tuple(_flip(o) if k in CONV_W else o for k, o in zip(("loss",) + PARAMS, outs))

    def build_torch(self, inp, fw):
        torch = fw.torch
        F = torch.nn.functional
        params = [p.requires_grad_() for p in self._peer_params(inp, fw)]
        x, y = fw.asarray(inp["x"]), fw.asarray(inp["y"]).long()

        def loss_fn(x, y, W1, b1, W2, b2, W3, b3, W4, b4):
            a = torch.tanh(F.max_pool2d(F.conv2d(x, W1, b1), 2))
            a = torch.tanh(F.max_pool2d(F.conv2d(a, W2, b2), 2))
            h = torch.tanh(a.flatten(1) @ W3 + b3)
            return F.cross_entropy(h @ W4 + b4, y)
        loss_fn = fw.compile(loss_fn)
        opt = torch.optim.SGD(params, lr=LR, foreach=True)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(x, y, *params)
            loss.backward()
            opt.step()
            return loss
        return step, (lambda r: self._collect(fw, r, params))

    def build_jax(self, inp, fw):
        jax, jnp, lax = fw.jax, fw.jnp, fw.jax.lax
        state = [self._peer_params(inp, fw)]
        x, y = fw.asarray(inp["x"]), fw.asarray(inp["y"])

        def conv_pool_tanh(a, W, b):
            c = lax.conv_general_dilated(a, W, (1, 1), "VALID",
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
            c = c + b[None, :, None, None]
            return jnp.tanh(lax.reduce_window(c, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2),
                                              "VALID"))

        def loss_fn(params, x, y):
            W1, b1, W2, b2, W3, b3, W4, b4 = params
            a = conv_pool_tanh(conv_pool_tanh(x, W1, b1), W2, b2)
            h = jnp.tanh(a.reshape(a.shape[0], -1) @ W3 + b3)
            logp = jax.nn.log_softmax(h @ W4 + b4)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        def sgd(params, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            return [p - LR * g for p, g in zip(params, grads)], loss
        sgd = jax.jit(sgd, donate_argnums=0)

        def step():
            state[0], loss = sgd(state[0], x, y)
            return loss
        return step, (lambda r: self._collect(fw, r, state[0]))

    def build_theano(self, inp, fw):
        th, T, nn = fw.api.th, fw.api.T, fw.api.nn
        params = [th.shared(inp[k], name=k) for k in PARAMS]
        W1, b1, W2, b2, W3, b3, W4, b4 = params
        x = th.shared(inp["x"], name="x")
        y = th.shared(inp["y"], name="y")
        c1 = nn.conv2d(x, W1, input_shape=SHAPES["x"], filter_shape=SHAPES["W1"])
        a1 = T.tanh(nn.max_pool_2x2(c1 + b1.dimshuffle("x", 0, "x", "x")))
        c2 = nn.conv2d(a1, W2, input_shape=SHAPES["a1"], filter_shape=SHAPES["W2"])
        a2 = T.tanh(nn.max_pool_2x2(c2 + b2.dimshuffle("x", 0, "x", "x")))
        h = T.tanh(T.dot(a2.reshape((BATCH, 800)), W3) + b3)
        loss = nn.categorical_crossentropy(nn.softmax(T.dot(h, W4) + b4), y).mean()
        grads = th.grad(loss, params)
        f = th.function([], loss, updates=[(p, p - LR * g) for p, g in zip(params, grads)])
        return f, (lambda r: (np.asarray(r),) + tuple(np.asarray(p.get_value()) for p in params))
