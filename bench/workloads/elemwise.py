"""elemwise: tanh(a*x+b)*sigmoid(x)+exp(-x*x) over a large float32 vector (memory bound)."""
from __future__ import annotations

import numpy as np

from . import Workload, f32, f64

A, B = 0.7, 0.3
N_CPU, N_GPU = 2 ** 22, 2 ** 26


def elemwise_np(xp, x):
    """The hand-written numpy version (also the float64 reference)."""
    return xp.tanh(A * x + B) * (1.0 / (1.0 + xp.exp(-x))) + xp.exp(-x * x)


class Elemwise(Workload):
    name = "elemwise"
    family = "elemwise"
    description = "tanh(a*x+b)*sigmoid(x)+exp(-x*x), x float32 of 2^22 (GPU: 2^26) elements"
    tol = 1e-4
    bound = "bandwidth"
    gpu_only_sizes = {"n": N_GPU}

    def inputs(self, device):
        n = N_GPU if device == "gpu" else N_CPU
        return {"x": f32(self.rng().uniform(-3, 3, n))}

    def reference(self, inp):
        return (elemwise_np(np, f64(inp["x"])),)

    def output_names(self):
        return ("y",)

    def work(self, inp):
        # one float32 read + one float32 write per element
        return {"bytes": 8 * inp["x"].size}

    def build_numpy(self, inp, fw):
        x = fw.asarray(inp["x"])
        return (lambda: elemwise_np(fw.xp, x)), (lambda r: (fw.to_numpy(r),))

    def build_torch(self, inp, fw):
        torch = fw.torch
        x = fw.asarray(inp["x"])

        def f(x):
            return torch.tanh(A * x + B) * torch.sigmoid(x) + torch.exp(-x * x)

        f = fw.compile(f)
        return (lambda: f(x)), (lambda r: (fw.to_numpy(r),))

    def build_jax(self, inp, fw):
        jnp = fw.jnp
        x = fw.asarray(inp["x"])
        f = fw.jax.jit(lambda x: jnp.tanh(A * x + B) * fw.jax.nn.sigmoid(x) + jnp.exp(-x * x))
        return (lambda: f(x)), (lambda r: (fw.to_numpy(r),))

    def build_theano(self, inp, fw):
        th, T, nn = fw.api.th, fw.api.T, fw.api.nn
        x = th.shared(inp["x"], name="x")
        y = T.tanh(A * x + B) * nn.sigmoid(x) + T.exp(-x * x)
        if fw.device == "gpu":
            # keep the result on the device, as the GPU peers do
            out = th.shared(np.zeros_like(inp["x"]), name="y")
            f = th.function([], [], updates=[(out, y)])
            return f, (lambda r: (np.asarray(out.get_value()),))
        f = th.function([], y)
        return f, (lambda r: (np.asarray(r),))
