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

from graphc import scan_module, ifelse  # noqa: F401  (theano.scan_module, theano.ifelse)
from graphc.scan_module import scan, until  # noqa: F401
# theano.map / reduce / foldl / foldr (these names shadow the builtins in this module only)
from graphc.scan_module import foldl, foldr, map, reduce  # noqa: F401,A004

dot = tensor.dot

# the rewrite pipeline and the default backend load now, not inside the first compile
from graphc.compile.function import preload as _preload  # noqa: E402
_preload()
del _preload
