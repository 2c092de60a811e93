"""Shared helpers of the rewrite tests: compile with/without the optimizer, look at ops."""
import numpy as np

import graphc as theano
from graphc.tensor.elemwise import Elemwise

REF = theano.Mode(linker="py", optimizer=None)
FAST = theano.Mode(linker="py", optimizer="fast_run")


def compile_both(inputs, outputs, **kw):
    return (theano.function(inputs, outputs, mode=FAST, **kw),
            theano.function(inputs, outputs, mode=REF, **kw))


def ops(f):
    """The ops of a compiled function's optimized graph, in topological order."""
    return [n.op for n in f.maker.fgraph.toposort()]


def op_names(f):
    return [type(op).__name__ for op in ops(f)]


def count(f, cls):
    return sum(isinstance(op, cls) for op in ops(f))


def elemwise_names(f):
    return [op.scalar_op.name for op in ops(f) if type(op) is Elemwise]


def assert_same(f, g, *args, rtol=1e-7, atol=1e-12):
    a, b = f(*args), g(*args)
    if not isinstance(a, list):
        a, b = [a], [b]
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)
