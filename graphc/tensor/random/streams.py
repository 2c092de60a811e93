"""RandomStreams: Theano's random-variable factory over Philox streams.

Every call (``srng.uniform(...)``, ``srng.normal(...)``, ...) creates a fresh stream: a
shared uint32 state whose ``default_update`` is the advanced state, so every compiled
function that uses the sample moves the stream forward (``function(no_default_updates=True)``
does not).  Stream k of a generator seeded with s starts at ``philox.seed_state(s, k)``, so
the same seed and the same sequence of calls give the same numbers, run after run, on
every backend.  ``seed(n)`` restarts all streams.

Distributions are decompositions into ``RandomUniform`` and ordinary tensor ops, so their
parameters (low/high, avg/std) get pathwise gradients (the reparameterization trick).
"""
from __future__ import annotations

import math

import numpy as np

from graphc.configdefaults import config
from graphc.tensor.random import philox
from graphc.tensor.random.ops import AdvanceState, RandomUniform, argsort
from graphc.tensor.type import is_float, normalize_dtype, upcast


def _T():
    import graphc.tensor as T
    return T


def _param(x):
    from graphc.tensor.var import as_tensor_variable
    return as_tensor_variable(x)


def _is_const(v, value):
    from graphc.graph.basic import Constant
    return isinstance(v, Constant) and np.asarray(v.data).ndim == 0 and v.data == value


def shape_vector(size, ndim=None, params=()):
    """``size`` (None, an int, a tuple of ints/scalars, or an int vector) as an int64 vector
    of known length; None means the broadcast shape of ``params``."""
    from graphc.graph.basic import Variable
    from graphc.tensor import basic as tb
    from graphc.tensor.var import as_tensor_variable, constant
    if size is None:
        if not params or all(p.ndim == 0 for p in params):
            vec = constant(np.zeros(0, dtype=np.int64))
        else:
            b = params[0]
            for p in params[1:]:
                b = tb.second(b, p)
            vec = tb.shape(b)
    elif isinstance(size, (int, np.integer)):
        vec = constant(np.asarray([size], dtype=np.int64))
    elif isinstance(size, (list, tuple)):
        vec = tb.as_shape_vector(list(size)) if size else constant(np.zeros(0, dtype=np.int64))
    else:
        v = as_tensor_variable(size) if not isinstance(size, Variable) else size
        vec = tb.as_shape_vector(v)
        if vec.type.shape[0] is None:
            if ndim is None:
                raise ValueError(f"random size {size} has an unknown length: pass ndim=")
            vec = tb.specify_shape(vec, (ndim,))
    if ndim is not None and vec.type.shape[0] != ndim:
        raise ValueError(f"random size has {vec.type.shape[0]} dimensions but ndim={ndim}")
    return vec


class RandomStreams:
    """``graphc.tensor.shared_randomstreams.RandomStreams(seed)`` (Theano's API)."""

    def __init__(self, seed=None):
        self.default_instance_seed = config.seed if seed is None else int(seed)
        self.state_updates = []        # [(state shared variable, its default update)]

    # ------------------------------------------------------------------ streams
    def seed(self, seed=None):
        """Restart every stream of this generator from ``seed`` (default: the seed it was
        created with)."""
        if seed is not None:
            self.default_instance_seed = int(seed)
        for k, (state, _) in enumerate(self.state_updates):
            state.set_value(philox.seed_state(self.default_instance_seed, k))

    def updates(self):
        return list(self.state_updates)

    def uniform01(self, size, dtype):
        """Numbers in (0, 1) from a new stream (the primitive every distribution uses)."""
        from graphc.compile.sharedvalue import shared
        k = len(self.state_updates)
        state = shared(philox.seed_state(self.default_instance_seed, k), name=f"rng_state{k}")
        u = RandomUniform(dtype)(state, size)
        state.default_update = AdvanceState(dtype)(state, size)
        self.state_updates.append((state, state.default_update))
        return u

    def _prepend(self, n, vec):
        from graphc.tensor import basic as tb
        from graphc.tensor.var import constant
        return tb.join(0, constant(np.asarray([n], dtype=np.int64)), vec)

    # ------------------------------------------------------------------ distributions
    def uniform(self, size=None, low=0.0, high=1.0, ndim=None, dtype=None):
        """Uniform on [low, high) (in fact (low, high) up to rounding)."""
        T = _T()
        low, high = _param(low), _param(high)
        dtype = normalize_dtype(dtype or upcast(config.floatX, low.dtype, high.dtype))
        u = self.uniform01(shape_vector(size, ndim, [low, high]), dtype)
        if _is_const(low, 0) and _is_const(high, 1):
            return u
        low, high = T.cast(low, dtype), T.cast(high, dtype)
        return low + (high - low) * u

    def _standard_normal(self, vec, dtype):
        T = _T()
        u = self.uniform01(self._prepend(2, vec), dtype)
        two_pi = np.asarray(2 * math.pi, dtype=dtype)
        return T.sqrt(-2.0 * T.log(u[0])) * T.cos(two_pi * u[1]), u

    def normal(self, size=None, avg=0.0, std=1.0, ndim=None, dtype=None):
        """Normal(avg, std) by the Box-Muller transform of two uniforms per number."""
        T = _T()
        avg, std = _param(avg), _param(std)
        dtype = normalize_dtype(dtype or upcast(config.floatX, avg.dtype, std.dtype))
        z, _ = self._standard_normal(shape_vector(size, ndim, [avg, std]), dtype)
        if _is_const(avg, 0) and _is_const(std, 1):
            return z
        return T.cast(avg, dtype) + T.cast(std, dtype) * z

    def binomial(self, size=None, n=1, p=0.5, ndim=None, dtype="int64"):
        """Number of successes in ``n`` (a Python int) trials of probability ``p``."""
        T = _T()
        p = _param(p)
        n = _static_int(n, "binomial: n")
        vec = shape_vector(size, ndim, [p])
        udt = p.dtype if is_float(p.dtype) else config.floatX
        if n == 1:
            return T.cast(T.lt(self.uniform01(vec, udt), p), dtype)
        u = self.uniform01(self._prepend(n, vec), udt)
        return T.cast(T.sum(T.lt(u, p), axis=0), dtype)

    def random_integers(self, size=None, low=0, high=1, ndim=None, dtype="int64"):
        """Integers uniformly distributed in [low, high] (both included)."""
        T = _T()
        low, high = _param(low), _param(high)
        u = self.uniform01(shape_vector(size, ndim, [low, high]), "float64")
        lo, hi = T.cast(low, "float64"), T.cast(high, "float64")
        return T.cast(T.minimum(lo + T.floor(u * (hi - lo + 1)), hi), dtype)

    def permutation(self, size=None, n=1, ndim=None, dtype="int64"):
        """Random permutations of range(n): one per entry of ``size`` (shape size + (n,))."""
        T = _T()
        vec = shape_vector(size, ndim)
        n_var = T.cast(_param(n), "int64")
        keys = self.uniform01(T.join(0, vec, T.stack([n_var])), "float64")
        return T.cast(argsort(keys), dtype)

    def shuffle_row_elements(self, input):
        """``input`` with its rows (first axis) in a random order."""
        return input[self.permutation(n=input.shape[0])]

    def choice(self, size=None, a=2, replace=True, p=None, ndim=None, dtype="int64"):
        """Samples from ``a`` (a vector, or an int meaning range(a)), with probabilities
        ``p`` (default uniform), with or without replacement (numpy.random.choice)."""
        T = _T()
        a = _param(a)
        if a.ndim > 1:
            raise TypeError(f"choice: a must be an int or a vector, got {a.type}")
        n = T.cast(a, "int64") if a.ndim == 0 else T.cast(a.shape[0], "int64")
        vec = shape_vector(size, ndim)
        if replace:
            if p is None:
                u = self.uniform01(vec, "float64")
                idx = T.minimum(T.floor(u * T.cast(n, "float64")), T.cast(n - 1, "float64"))
                idx = T.cast(idx, "int64")
            else:
                idx = self._categorical(vec, _param(p))
        else:
            k = T.prod(vec) if vec.type.shape[0] else _param(np.int64(1))
            u = self.uniform01(T.stack([n]), "float64")
            # Efraimidis-Spirakis: the k largest log(u)/p are a weighted sample without
            # replacement; with uniform weights, a prefix of a random permutation
            keys = -u if p is None else -T.log(u) / T.cast(_param(p), "float64")
            idx = T.reshape(argsort(keys)[:k], vec, vec.type.shape[0])
        out = idx if a.ndim == 0 else a[idx]
        return T.cast(out, dtype)

    def _categorical(self, vec, p):
        """Indices drawn with probabilities ``p`` (last axis) for each entry of ``vec``."""
        T = _T()
        cdf = T.cumsum(T.cast(p, "float64"), axis=-1)
        u = self.uniform01(vec, "float64")
        v = u * cdf[..., -1]
        return T.sum(T.ge(v.dimshuffle(list(range(v.ndim)) + ["x"]), cdf[..., :-1]),
                     axis=-1, dtype="int64")

    def multinomial(self, size=None, n=1, pvals=None, ndim=None, dtype="int64"):
        """Counts of ``n`` (a Python int) draws among the categories of ``pvals`` (last
        axis); the result has shape size + (k,), or pvals' shape when size is None."""
        T = _T()
        if pvals is None:
            pvals = [0.5, 0.5]
        pvals = _param(pvals)
        n = _static_int(n, "multinomial: n")
        if pvals.ndim == 0:
            raise TypeError("multinomial: pvals must have at least one dimension")
        k = pvals.shape[-1]
        batch = shape_vector(size, ndim, [pvals[..., 0]]) if size is not None else \
            T.shape(pvals)[:-1]
        if batch.type.shape[0] is None:
            batch = shape_vector(batch, pvals.ndim - 1)
        cdf = T.cumsum(T.cast(pvals, "float64"), axis=-1)
        u = self.uniform01(self._prepend(n, batch), "float64")
        v = u * cdf[..., -1]
        idx = T.sum(T.ge(v.dimshuffle(list(range(v.ndim)) + ["x"]), cdf[..., :-1]),
                    axis=-1, dtype="int64")
        hits = T.eq(idx.dimshuffle(list(range(idx.ndim)) + ["x"]), T.arange(k))
        return T.cast(T.sum(hits, axis=0), dtype)


def _static_int(n, what):
    from graphc.graph.basic import Constant, Variable
    if isinstance(n, Constant):
        n = n.data
    if isinstance(n, Variable) or int(n) != n or int(n) < 0:
        raise TypeError(f"{what} must be a non-negative Python int, got {n!r}")
    return int(n)
