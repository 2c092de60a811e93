"""``graphc.tensor`` (``import graphc.tensor as T``): Theano's tensor API."""
from graphc.tensor.type import TensorType  # noqa: F401
from graphc.tensor.var import TensorConstant, TensorVariable, as_tensor_variable, constant  # noqa: F401
from graphc.tensor.constructors import *  # noqa: F401,F403
from graphc.tensor.basic import (  # noqa: F401
    Alloc, ARange, Eye, Join, MakeVector, Reshape, Shape, SpecifyShape, addbroadcast, alloc,
    arange, cast, concatenate, eye, fill, flatten, horizontal_stack, identity_like, join,
    ones, ones_like, patternbroadcast, reshape, second, shape, shape_i, specify_shape, stack,
    tile, transpose, unbroadcast, vertical_stack, zeros, zeros_like)
from graphc.tensor.basic import identity as tensor_copy  # noqa: F401
from graphc.tensor.elemwise import CAReduce, DimShuffle, Elemwise, ShapeError  # noqa: F401
from graphc.tensor.math import (  # noqa: F401
    abs_, add, all, and_, any, argmax, argmin, batched_dot, bitwise_and, bitwise_not,
    bitwise_or, bitwise_xor, ceil, clip, cos, cosh, dot, eq, equal, erf, exp, exp2, expm1,
    floor, floor_div, ge, greater, greater_equal, gt, int_div, inv, invert, iround, isinf,
    isnan, le, less, less_equal, log, log1p, log2, log10, logsumexp, lt, max, max_and_argmax,
    maximum, mean, min, minimum, mod, mul, neg, neq, not_equal, or_, outer, pow, prod,
    reciprocal, round, sgn, sigmoid, sin, sinh, softplus, sqr, sqrt, std, sub, sum, switch,
    tan, tanh, tensordot, true_div, var, where, xor)
from graphc.tensor.subtensor import inc_subtensor, set_subtensor, take  # noqa: F401
from graphc.tensor.extra_ops import cumprod, cumsum, diff, repeat, squeeze, to_one_hot  # noqa: F401
from graphc.tensor import nnet, extra_ops  # noqa: F401
from graphc.tensor import basic as basic_ops  # noqa: F401

abs = abs_

# theano.tensor.grad & co., as the tutorials write them (T.grad(cost, wrt))
from graphc.gradient import grad, hessian, jacobian  # noqa: F401,E402
