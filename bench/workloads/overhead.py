"""Overhead workloads on tiny (10,) vectors: per-op dispatch and per-step scan cost."""
from __future__ import annotations

import numpy as np

from . import Workload, f32, f64

N_ITER = 100            # dispatch: x*1.0001+0.0001 repeated, 2 ops each
SCAN_STEPS = 10_000     # scan_overhead: h = h*0.9 + x_t


def dispatch_np(x):
    for _ in range(N_ITER):
        x = x * 1.0001 + 0.0001
    return x


class Dispatch(Workload):
    name = "dispatch"
    family = "overhead"
    description = (f"{2 * N_ITER} tiny elementwise ops (x*1.0001+0.0001, {N_ITER} times) "
                   "on a (10,) vector")
    tol = 1e-4

    def inputs(self, device):
        return {"x": f32(self.rng().uniform(-1, 1, 10))}

    def reference(self, inp):
        return (dispatch_np(f64(inp["x"])),)

    def output_names(self):
        return ("y",)

    def work(self, inp):
        return {"per": (2 * N_ITER, "op")}

    def build_numpy(self, inp, fw):
        x = fw.asarray(inp["x"])
        return (lambda: dispatch_np(x)), (lambda r: (fw.to_numpy(r),))

    def build_torch(self, inp, fw):
        x = fw.asarray(inp["x"])
        f = fw.compile(dispatch_np)
        return (lambda: f(x)), (lambda r: (fw.to_numpy(r),))

    def build_jax(self, inp, fw):
        x = fw.asarray(inp["x"])
        f = fw.jax.jit(dispatch_np)
        return (lambda: f(x)), (lambda r: (fw.to_numpy(r),))

    def build_theano(self, inp, fw):
        th = fw.api.th
        x = th.shared(inp["x"], name="x")
        f = th.function([], dispatch_np(x))
        return f, (lambda r: (np.asarray(r),))


class ScanOverhead(Workload):
    name = "scan_overhead"
    family = "overhead"
    description = f"{SCAN_STEPS:,} steps of h = h*0.9 + x_t on a (10,) vector"
    tol = 1e-4

    def inputs(self, device):
        return {"x": f32(self.rng().uniform(-1, 1, (SCAN_STEPS, 10)))}

    def reference(self, inp):
        h = np.zeros(10)
        for x_t in f64(inp["x"]):
            h = h * 0.9 + x_t
        return (h,)

    def output_names(self):
        return ("h_T",)

    def work(self, inp):
        return {"per": (SCAN_STEPS, "step")}

    def build_numpy(self, inp, fw):
        xs = fw.asarray(inp["x"])
        h0 = fw.xp.zeros(10, np.float32)

        def step():
            h = h0
            for x_t in xs:
                h = h * 0.9 + x_t
            return h
        return step, (lambda r: (fw.to_numpy(r),))

    def build_torch(self, inp, fw):
        # no stable scan primitive: a Python loop (torch.compile compiles the step function)
        xs = fw.asarray(inp["x"])
        h0 = xs.new_zeros(10)
        cell = fw.compile(lambda h, x_t: h * 0.9 + x_t)

        def step():
            h = h0
            for x_t in xs:
                h = cell(h, x_t)
            return h
        return step, (lambda r: (fw.to_numpy(r),))

    def build_jax(self, inp, fw):
        jax = fw.jax
        xs = fw.asarray(inp["x"])

        def run(xs):
            h0 = fw.jnp.zeros(10, xs.dtype)
            h, _ = jax.lax.scan(lambda h, x_t: (h * 0.9 + x_t, None), h0, xs)
            return h
        f = jax.jit(run)
        return (lambda: f(xs)), (lambda r: (fw.to_numpy(r),))

    def build_theano(self, inp, fw):
        th, T = fw.api.th, fw.api.T
        xs = th.shared(inp["x"], name="x")
        hs, _ = th.scan(lambda x_t, h: h * 0.9 + x_t, sequences=xs,
                        outputs_info=T.zeros((10,), dtype="float32"))
        f = th.function([], hs[-1])
        return f, (lambda r: (np.asarray(r),))
