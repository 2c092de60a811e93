"""graphc: a symbolic autodiff compiler with Theano's API.

    import graphc as theano
    import graphc.tensor as T
"""
__version__ = "0.1.0"

from graphc.configdefaults import config, change_flags  # noqa: F401
from graphc.graph.basic import Apply, Constant, Op, Variable  # noqa: F401
from graphc.graph.fg import FunctionGraph  # noqa: F401
from graphc.compile.function import Function, In, Out, function  # noqa: F401
from graphc.compile.mode import Mode  # noqa: F401
from graphc.compile.sharedvalue import SharedVariable, shared  # noqa: F401
from graphc import gradient  # noqa: F401
from graphc.gradient import grad, disconnected_grad, zero_grad, grad_clip  # noqa: F401
from graphc import tensor, printing  # noqa: F401
from graphc.printing import debugprint, pp  # noqa: F401

try:  # control flow lands with the neural-net op set
    from graphc.scan_module import scan  # noqa: F401
except ImportError:  # pragma: no cover
    pass

dot = tensor.dot
