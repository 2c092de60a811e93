"""Framework adapters: what a workload builder needs to know about each framework.

Every adapter has ``name`` (the table column), ``family`` (which ``build_<family>`` a workload
uses), ``setup(device, threads) -> info`` (imports the framework, fixes its thread count; raises
``Skip`` when it cannot run here), ``asarray`` (numpy -> framework array, always a copy),
``to_numpy``, and ``sync`` (wait for asynchronous work before the clock stops).
``setup`` runs inside the framework's own worker subprocess, never in the parent.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import types

import numpy as np

FRAMEWORKS = ("graphc", "numpy", "torch", "torch.compile", "jax.jit", "pytensor")
PEERS = FRAMEWORKS[1:]
ALIASES = {"jax": "jax.jit", "torch_compile": "torch.compile", "inductor": "torch.compile",
           "cupy": "numpy"}
MODULE_OF = {"graphc": "graphc", "numpy": "numpy", "torch": "torch", "torch.compile": "torch",
             "jax.jit": "jax", "pytensor": "pytensor"}


class Skip(Exception):
    """The framework cannot run in this configuration (reported as skipped, not an error)."""


def installed(name: str) -> bool:
    """Is the framework importable? (find_spec only: the parent never imports a peer)."""
    return importlib.util.find_spec(MODULE_OF[name]) is not None


def make(name: str):
    return {"graphc": lambda: TheanoAPI("graphc"), "pytensor": lambda: TheanoAPI("pytensor"),
            "numpy": NumpyFW, "torch": lambda: TorchFW(False),
            "torch.compile": lambda: TorchFW(True), "jax.jit": JaxFW}[name]()


class NumpyFW:
    name, family = "numpy", "numpy"

    def setup(self, device, threads):
        self.xp = np
        if device == "gpu":
            try:
                import cupy
            except ImportError:
                raise Skip("device=gpu needs cupy for the numpy column") from None
            if not cupy.is_available():
                raise Skip("cupy finds no CUDA device")
            self.xp = cupy
            return {"version": f"cupy {cupy.__version__}", "threads": None}
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return {"version": np.__version__, "threads": threads,
                "notes": [f"BLAS {blas.get('name')} {blas.get('version')}, "
                          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}"]}

    def asarray(self, a):
        return self.xp.array(a, copy=True)

    def to_numpy(self, a):
        return self.xp.asnumpy(a) if self.xp is not np else np.asarray(a)

    def sync(self, raw):
        if self.xp is not np:
            self.xp.cuda.runtime.deviceSynchronize()


class TorchFW:
    family = "torch"

    def __init__(self, compiled: bool):
        self.compiled = compiled
        self.name = "torch.compile" if compiled else "torch"

    def setup(self, device, threads):
        import torch
        self.torch = torch
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        self.dev = "cpu"
        notes = ["inductor backend, default mode" if self.compiled else "eager"]
        if device == "gpu":
            if not torch.cuda.is_available():
                raise Skip("torch finds no CUDA device")
            self.dev = "cuda"
            # full float32 like every other column (cuDNN convolutions default to TF32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            notes.append("TF32 off (matmul and cuDNN)")
        return {"version": torch.__version__, "threads": torch.get_num_threads(),
                "interop_threads": torch.get_num_interop_threads(), "device": self.dev,
                "notes": notes}

    def compile(self, fn):
        return self.torch.compile(fn) if self.compiled else fn

    def asarray(self, a):
        return self.torch.tensor(a, device=self.dev)

    def to_numpy(self, a):
        return a.detach().cpu().numpy()

    def sync(self, raw):
        if self.dev == "cuda":
            self.torch.cuda.synchronize()


class JaxFW:
    name, family = "jax.jit", "jax"

    def setup(self, device, threads):
        import jax
        import jax.numpy as jnp
        self.jax, self.jnp = jax, jnp
        backend = jax.default_backend()
        notes = [f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, threads bounded by CPU affinity"]
        if device == "gpu":
            if backend != "gpu":
                raise Skip(f"jax backend is {backend}, not gpu")
            # full float32 like every other column (XLA's default GPU matmul precision is TF32)
            jax.config.update("jax_default_matmul_precision", "highest")
            notes.append("matmul precision 'highest' (no TF32)")
        return {"version": jax.__version__, "backend": backend, "threads": threads,
                "notes": notes}

    def asarray(self, a):
        return self.jnp.array(a, copy=True)

    def to_numpy(self, a):
        return np.asarray(a)

    def sync(self, raw):
        self.jax.block_until_ready(raw)


class TheanoAPI:
    """graphc and PyTensor: one Theano-API builder, ``fw.api = (th, T, nn)``."""
    family = "theano"

    def __init__(self, module: str):
        self.name = module

    def setup(self, device, threads):
        th = importlib.import_module(self.name)
        T = importlib.import_module(self.name + ".tensor")
        self.device = device
        if self.name == "pytensor":
            if device == "gpu":
                raise Skip("PyTensor has no GPU backend")
            nn = PyTensorNN(th, T)
        else:
            nn = GraphcNN(T)
        self.api = types.SimpleNamespace(th=th, T=T, nn=nn)
        cfg = th.config
        keys = ("device", "floatX", "mode", "linker", "compiledir", "base_compiledir",
                "openmp", "blas__ldflags", "cxx")
        flags = {}
        for k in keys:
            try:
                flags[k] = str(getattr(cfg, k))
            except (AttributeError, ValueError):
                pass
        return {"version": getattr(th, "__version__", "dev"), "threads": threads,
                "config": flags, "notes": nn.notes}

    def asarray(self, a):
        return np.array(a, copy=True)

    def to_numpy(self, a):
        return np.asarray(a)

    def sync(self, raw):
        pass


class GraphcNN:
    """graphc's own Theano 1.0 API, looked up at call time (a missing op fails one workload)."""
    notes = []

    def __init__(self, T):
        self.T = T

    def softmax(self, z):
        return self.T.nnet.softmax(z)

    def categorical_crossentropy(self, p, y):
        return self.T.nnet.categorical_crossentropy(p, y)

    def sigmoid(self, x):
        return self.T.nnet.sigmoid(x)

    def conv2d(self, x, W, input_shape, filter_shape):
        return self.T.nnet.conv2d(x, W, input_shape=input_shape, filter_shape=filter_shape)

    def max_pool_2x2(self, x):
        pool = importlib.import_module(self.T.__name__ + ".signal.pool")
        return pool.pool_2d(x, ws=(2, 2), ignore_border=True)


class PyTensorNN:
    """PyTensor 2.x/3.x dropped ``tensor.nnet`` and NN convolutions: the same maths from its
    primitives."""

    def __init__(self, th, T):
        self.T = T
        self.nnet = getattr(T, "nnet", None)
        self.notes = [] if self.nnet else [
            "no tensor.nnet: softmax from tensor.special, xent as -log p[arange, y], conv2d as "
            "im2col (stacked slices + dot), maxpool2 as reshape + max"]

    def softmax(self, z):
        if self.nnet:
            return self.nnet.softmax(z)
        from pytensor.tensor.special import softmax
        return softmax(z, axis=-1)

    def categorical_crossentropy(self, p, y):
        if self.nnet:
            return self.nnet.categorical_crossentropy(p, y)
        return -self.T.log(p[self.T.arange(y.shape[0]), y])

    def sigmoid(self, x):
        return self.T.sigmoid(x)

    def conv2d(self, x, W, input_shape, filter_shape):
        """'valid' true convolution (Theano's filter_flip=True) as im2col + one matrix product."""
        T = self.T
        n, c, h, w = input_shape
        o, _, k, _ = filter_shape
        ho, wo = h - k + 1, w - k + 1
        cols = T.stack([x[:, :, i:i + ho, j:j + wo] for i in range(k) for j in range(k)], axis=2)
        cols = cols.dimshuffle(0, 3, 4, 1, 2).reshape((n * ho * wo, c * k * k))
        filters = W[:, :, ::-1, ::-1].reshape((o, c * k * k))
        return T.dot(cols, filters.T).reshape((n, ho, wo, o)).dimshuffle(0, 3, 1, 2)

    def max_pool_2x2(self, x):
        s = x.shape
        return x.reshape((s[0], s[1], s[2] // 2, 2, s[3] // 2, 2)).max(axis=(3, 5))
