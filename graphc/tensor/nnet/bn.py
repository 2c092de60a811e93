"""Batch normalization (Theano 1.0's ``theano.tensor.nnet.bn``), as graphs of primitives.

    out = (x - mean) * (gamma * invstd) + beta,   invstd = 1 / sqrt(var + epsilon)

``batch_normalization_train`` takes mean and var over ``axes`` of the batch (the variance is
the two-pass mean((x - mean)**2), which stays accurate when |mean| >> std) and optionally
updates running averages; ``batch_normalization_test`` uses given statistics.  No new op is
needed: the gradients (w.r.t. x, gamma and beta, and through the returned mean and invstd)
come from the primitives, and the optimizer fuses the elementwise parts.

``axes``: 'per-activation' = (0,), 'spatial' = (0, 2, 3, ...), or a tuple of ints.
gamma, beta (and mean/var/running statistics) either have the input's ndim with size 1 on
the normalized axes, or omit those axes altogether; the returned statistics follow the same
convention as gamma.
"""
from __future__ import annotations

import numpy as np

from graphc.tensor import math as M
from graphc.tensor.basic import addbroadcast, cast, shape_i
from graphc.tensor.type import is_float
from graphc.tensor.var import as_tensor_variable


def _prepare_axes(axes, ndim):
    """(normalized axes, kept axes) as sorted tuples."""
    if axes == "per-activation":
        axes = (0,)
    elif axes == "spatial":
        axes = (0,) + tuple(range(2, ndim))
    elif isinstance(axes, (tuple, list, np.ndarray)):
        axes = tuple(int(a) for a in axes)
    else:
        raise ValueError(f"batch_normalization: invalid axes {axes!r}; use 'per-activation', "
                         f"'spatial' or a tuple of ints")
    axes = tuple(sorted(set(axes)))
    if not axes:
        raise ValueError("batch_normalization: there should be at least one normalization axis")
    if min(axes) < 0 or max(axes) >= ndim:
        raise ValueError(f"batch_normalization: axes should be less than ndim (<{ndim}), "
                         f"but {axes} given")
    return axes, tuple(d for d in range(ndim) if d not in axes)


class _Params:
    """Brings per-channel parameters to the input's ndim and back (Theano's two layouts)."""

    def __init__(self, ndim, axes, kept, first):
        self.ndim, self.axes, self.kept = ndim, axes, kept
        self.full = first.ndim == ndim
        self.params_ndim = ndim if self.full else len(kept)

    def check(self, name, p):
        if p.ndim != self.params_ndim:
            raise ValueError(f"batch_normalization: {name} has {p.ndim} dims; parameters need "
                             f"the number of non-normalized axes ({len(self.kept)}) or the "
                             f"input's number of dims ({self.ndim})")

    def expand(self, p, dtype):
        p = as_tensor_variable(p)
        if is_float(dtype) and p.dtype != dtype:
            p = cast(p, dtype)
        if self.full:
            return addbroadcast(p, *self.axes)
        pattern = ["x"] * self.ndim
        for i, d in enumerate(self.kept):
            pattern[d] = i
        return p.dimshuffle(pattern)

    def shrink(self, v):
        return v if self.full else v.dimshuffle(list(self.kept))


def _float_input(inputs):
    x = as_tensor_variable(inputs)
    if not is_float(x.dtype):
        from graphc.configdefaults import config
        x = cast(x, config.floatX)
    return x


def _check_epsilon(epsilon):
    epsilon = float(epsilon)
    if epsilon < 1e-5:  # Theano's bound (cuDNN's); a smaller one was always rejected
        raise ValueError(f"batch_normalization: epsilon must be at least 1e-5, got {epsilon}")
    return epsilon


def batch_normalization_train(inputs, gamma, beta, axes="per-activation", epsilon=1e-4,
                              running_average_factor=0.1, running_mean=None, running_var=None):
    """Normalize with the batch statistics over ``axes``.

    Returns (out, mean, invstd), plus (new_running_mean, new_running_var) when both running
    statistics are given; new_running_var uses the unbiased batch variance, as in Theano:
    ``running * (1 - factor) + var * m / (m - 1) * factor`` with m the number of values
    averaged per statistic.
    """
    x = _float_input(inputs)
    axes, kept = _prepare_axes(axes, x.ndim)
    gamma, beta = as_tensor_variable(gamma), as_tensor_variable(beta)
    params = _Params(x.ndim, axes, kept, gamma)
    params.check("gamma", gamma)
    params.check("beta", beta)
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_normalization_train: running_mean and running_var must either "
                         "both be given or both be None")
    epsilon = _check_epsilon(epsilon)
    g, b = params.expand(gamma, x.dtype), params.expand(beta, x.dtype)

    mean = M.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    var = M.mean(M.sqr(centered), axis=axes, keepdims=True)
    invstd = M.reciprocal(M.sqrt(var + epsilon))
    out = centered * (g * invstd) + b
    results = [out, params.shrink(mean), params.shrink(invstd)]

    if running_mean is not None:
        running_mean = as_tensor_variable(running_mean)
        running_var = as_tensor_variable(running_var)
        params.check("running_mean", running_mean)
        params.check("running_var", running_var)
        factor = running_average_factor
        if not isinstance(factor, (int, float)):  # symbolic: keep the input's precision
            factor = cast(as_tensor_variable(factor), x.dtype)
        m = None
        for a in axes:
            m = shape_i(x, a) if m is None else m * shape_i(x, a)
        m = cast(m, x.dtype)
        rm, rv = params.expand(running_mean, x.dtype), params.expand(running_var, x.dtype)
        new_mean = rm * (1.0 - factor) + mean * factor
        new_var = rv * (1.0 - factor) + (m / (m - 1.0)) * var * factor
        results += [params.shrink(new_mean), params.shrink(new_var)]
    return tuple(results)


def batch_normalization_test(inputs, gamma, beta, mean, var, axes="per-activation",
                             epsilon=1e-4):
    """Normalize with given statistics: (x - mean) * (gamma / sqrt(var + epsilon)) + beta."""
    x = _float_input(inputs)
    axes, kept = _prepare_axes(axes, x.ndim)
    gamma = as_tensor_variable(gamma)
    params = _Params(x.ndim, axes, kept, gamma)
    parts = []
    for name, p in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        p = as_tensor_variable(p)
        params.check(name, p)
        parts.append(params.expand(p, x.dtype))
    g, b, mu, v = parts
    epsilon = _check_epsilon(epsilon)
    return (x - mu) * (g / M.sqrt(v + epsilon)) + b


def batch_normalization(inputs, gamma, beta, mean, std, mode="low_mem"):
    """Theano's older elementwise form: (inputs - mean) * (gamma / std) + beta, with the
    usual broadcasting.  ``mode`` ('low_mem' or 'high_mem') chose an implementation in
    Theano; both give the same values, and graphc's fusion makes them the same graph."""
    if mode not in ("low_mem", "high_mem"):
        raise ValueError('batch_normalization: mode must be either "low_mem" or "high_mem"')
    x = as_tensor_variable(inputs)
    return (x - mean) * (gamma / std) + beta
