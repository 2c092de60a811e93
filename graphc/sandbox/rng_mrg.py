"""``theano.sandbox.rng_mrg.MRG_RandomStreams`` at Theano's path.

Theano's MRG31k3p generator is not reproduced: the streams are graphc's Philox4x32-10
(``graphc.tensor.random``), which give identical numbers on CPU and GPU.  What is kept is
MRG_RandomStreams' API: its signatures and defaults, ``nstreams`` (accepted, unused: a
counter-based generator needs no stream count), ``normal(truncate=True)``,
``truncated_normal``, and its ``multinomial``/``choice`` over rows of a probability matrix.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from graphc.tensor.random.ops import argsort
from graphc.tensor.random.streams import RandomStreams, _param, _T, shape_vector
from graphc.tensor.type import normalize_dtype, upcast
from graphc.configdefaults import config

__all__ = ["MRG_RandomStreams"]


def _fold_seed(seed):
    """MRG seeds may be an int or a list of 6 ints; fold them into one integer."""
    if isinstance(seed, (list, tuple, np.ndarray)):
        out = 0
        for s in seed:
            out = (out * 1000003 + int(s)) % (1 << 64)
        return out
    return int(seed)


class MRG_RandomStreams(RandomStreams):
    """Theano's ``MRG_RandomStreams(seed=12345)`` signatures over Philox streams."""

    def __init__(self, seed=12345):
        super().__init__(_fold_seed(seed))

    def seed(self, seed=None):
        super().seed(None if seed is None else _fold_seed(seed))

    def uniform(self, size, low=0.0, high=1.0, ndim=None, dtype=None, nstreams=None, **kwargs):
        return super().uniform(size, low, high, ndim, dtype)

    def normal(self, size, avg=0.0, std=1.0, ndim=None, dtype=None, nstreams=None,
               truncate=False, **kwargs):
        """Normal(avg, std); with ``truncate`` values beyond 2 std are redrawn the way
        Theano did: the Box-Muller radius is redrawn from [0, 2], the angle kept."""
        if not truncate:
            return super().normal(size, avg, std, ndim, dtype)
        T = _T()
        avg, std = _param(avg), _param(std)
        dtype = normalize_dtype(dtype or upcast(config.floatX, avg.dtype, std.dtype))
        vec = shape_vector(size, ndim, [avg, std])
        z, u = self._standard_normal(vec, dtype)
        lower = np.asarray(math.exp(-2.0), dtype=dtype)
        u_fix = lower + (1 - lower) * self.uniform01(vec, dtype)
        z_fix = T.sqrt(-2.0 * T.log(u_fix)) * T.cos(np.asarray(2 * math.pi, dtype=dtype) * u[1])
        z = T.switch(T.gt(abs(z), 2.0), z_fix, z)
        return T.cast(avg, dtype) + T.cast(std, dtype) * z

    def truncated_normal(self, size, avg=0.0, std=1.0, ndim=None, dtype=None, nstreams=None,
                         **kwargs):
        """Normal truncated at 2 std, rescaled so that ``std`` is the result's std."""
        std = _param(std) / 0.87962566103423978   # scipy.stats.truncnorm.std(-2, 2)
        return self.normal(size, avg, std, ndim, dtype, truncate=True)

    def binomial(self, size=None, n=1, p=None, ndim=None, dtype="int64", nstreams=None,
                 **kwargs):
        if p is None:
            raise TypeError("MRG_RandomStreams.binomial: p must be given")
        return super().binomial(size, n, p, ndim, dtype)

    def multinomial(self, size=None, n=1, pvals=None, ndim=None, dtype="int64", nstreams=None,
                    **kwargs):
        """One row of counts per row of the probability matrix ``pvals`` (batch, k)."""
        if pvals is None:
            raise TypeError("MRG_RandomStreams.multinomial: pvals must be given")
        if size is not None:
            raise ValueError("MRG_RandomStreams.multinomial: size must be None; the result "
                             "has the shape of pvals")
        return super().multinomial(None, n, pvals, ndim, dtype)

    def choice(self, size=1, a=None, replace=True, p=None, ndim=None, dtype="int64",
               nstreams=None, **kwargs):
        """``size`` distinct category indices per row of the probability matrix ``p``
        (batch, k), drawn without replacement (Theano's only supported case)."""
        if replace:
            raise NotImplementedError("MRG_RandomStreams.choice only samples without "
                                      "replacement (replace=False), as in Theano")
        if a is not None:
            raise TypeError("MRG_RandomStreams.choice: a must be None; the samples are "
                            "indices in [0, p.shape[1])")
        if p is None:
            raise TypeError("MRG_RandomStreams.choice: p must be given")
        T = _T()
        p = _param(p)
        if p.ndim != 2:
            raise NotImplementedError("MRG_RandomStreams.choice needs p.ndim == 2")
        u = self.uniform01(T.shape(p), "float64")
        keys = -T.log(u) / T.cast(p, "float64")      # Efraimidis-Spirakis, per row
        return T.cast(argsort(keys)[:, :size], dtype)

    def multinomial_wo_replacement(self, size=None, n=1, pvals=None, ndim=None,
                                   dtype="int64", nstreams=None, **kwargs):
        warnings.warn("MRG_RandomStreams.multinomial_wo_replacement() is deprecated; use "
                      "choice(size=n, replace=False, p=pvals)", DeprecationWarning)
        if size is not None:
            raise ValueError("multinomial_wo_replacement: size must be None")
        return self.choice(size=n, a=None, replace=False, p=pvals, dtype=dtype)
