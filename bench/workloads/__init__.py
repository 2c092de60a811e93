"""The benchmark workloads: one class per workload, one file per family.

A workload is the same computation written once per framework family:

    inputs(device)      -> dict of float32 / int32 numpy arrays, deterministic (seeded by name)
    reference(inp)      -> tuple of float64 numpy arrays: the oracle all frameworks are checked on
    build_<family>(inp, fw) -> (step, collect)
        step()          one timed call; returns the framework's raw result
        collect(raw)    -> tuple of numpy arrays comparable with reference() (called once, after
                           the first call; for SGD steps it reads the updated parameters)

Families are ``numpy`` (numpy, or cupy on the GPU), ``torch`` (eager and torch.compile),
``jax`` (jax.jit) and ``theano`` (graphc and PyTensor share one builder through ``fw.api``).
The numpy builders run the same hand-written code as the float64 reference, in float32.
"""
from __future__ import annotations

import zlib

import numpy as np


class Workload:
    name = ""
    family = ""          # the file it lives in
    description = ""
    tol = 1e-3           # max |out - ref| / max |ref|, per output
    reps_scale = 1.0     # < 1 for slow workloads: fewer repetitions
    bound = None         # 'bandwidth' (work['bytes'] at copy speed), 'sgemm' (work['flops'])
    gpu_only_sizes = {}  # documentation of sizes that change on the GPU

    def inputs(self, device: str) -> dict:
        raise NotImplementedError

    def reference(self, inp: dict) -> tuple:
        raise NotImplementedError

    def work(self, inp: dict) -> dict:
        """What one call does: {'bytes': .., 'flops': .., 'per': (count, 'step')}, any subset."""
        return {}

    def compare_form(self, outs: tuple, inp: dict) -> tuple:
        """Map collected outputs to the form of reference() (e.g. parameters -> SGD deltas)."""
        return outs

    def output_names(self) -> tuple:
        return ()

    def variants(self, fw) -> list:
        """Extra named versions timed (and checked) alongside the main one, e.g. 'hand loop'."""
        return []

    def build(self, fw, inp, variant=None):
        builder = getattr(self, "build_" + fw.family, None)
        if builder is None:
            raise NotImplementedError(f"{self.name} has no {fw.family} version")
        return builder(inp, fw) if variant is None else builder(inp, fw, variant=variant)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(zlib.crc32(self.name.encode()))


def f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def dense_params(rng, sizes) -> list:
    """[W1, b1, W2, b2, ...] float32, W scaled by 1/sqrt(fan_in)."""
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params.append(f32(rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)))
        params.append(f32(rng.uniform(-0.1, 0.1, fan_out)))
    return params


def sgd_deltas(outs, inp, names) -> tuple:
    """(loss, new_p0, new_p1, ...) -> (loss, new_p0 - p0, ...), in float64."""
    loss, *new = outs
    return (f64(loss),) + tuple(f64(n) - f64(inp[k]) for n, k in zip(new, names))


def all_workloads() -> list:
    """The fixed suite, in table order."""
    from . import conv, elemwise, nn, overhead, rnn
    return [elemwise.Elemwise(), nn.SoftmaxXentGrad(), nn.MlpStep(), rnn.LstmStep(),
            conv.ConvnetStep(), overhead.Dispatch(), overhead.ScanOverhead()]


def by_name() -> dict:
    return {w.name: w for w in all_workloads()}
