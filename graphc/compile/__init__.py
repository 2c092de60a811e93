from graphc.compile.function import Function, In, Out, function  # noqa: F401
from graphc.compile.mode import Mode, get_mode  # noqa: F401
from graphc.compile.sharedvalue import SharedVariable, shared  # noqa: F401
