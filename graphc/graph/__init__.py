from graphc.graph.basic import (Apply, Constant, Op, Type, Variable, ancestors,  # noqa: F401
                                clone_replace, graph_inputs, io_toposort)
from graphc.graph.fg import FunctionGraph  # noqa: F401
