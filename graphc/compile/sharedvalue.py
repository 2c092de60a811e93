"""Shared variables: symbolic variables with a value that persists across calls."""
from __future__ import annotations

import numpy as np

from graphc.graph.basic import Variable
from graphc.tensor.type import TensorType
from graphc.tensor.var import _TensorMethods


class SharedVariable(Variable):
    """A graph input whose value lives in ``container`` and is updated by functions."""

    __slots__ = ("container", "default_update")

    def __init__(self, type, value, name=None, strict=False, allow_downcast=None):
        super().__init__(type, None, None, name)
        self.container = [type.filter(value, strict=strict, allow_downcast=allow_downcast)]
        self.default_update = None   # an expression applied as update by every function

    def get_value(self, borrow=False, return_internal_type=False):
        v = self.container[0]
        return v if borrow else v.copy()

    def set_value(self, value, borrow=False):
        try:
            v = self.type.filter(value, allow_downcast=False)
        except TypeError as e:
            raise TypeError(f"set_value of shared variable {self.name or self}: {e}") from None
        if not borrow and v is value:
            v = v.copy()
        self.container[0] = v

    @property
    def value(self):
        return self.get_value()

    def clone(self):
        cp = self.__class__.__new__(self.__class__)
        Variable.__init__(cp, self.type, None, None, self.name)
        cp.container = self.container
        cp.default_update = self.default_update
        cp.tag = self.tag
        return cp

    def zero(self, borrow=False):
        self.container[0] = np.zeros_like(self.container[0])

    def __str__(self):
        return self.name if self.name is not None else f"<shared {self.type}>"


class TensorSharedVariable(_TensorMethods, SharedVariable):
    __slots__ = ()
    __array_priority__ = 1000
    __hash__ = Variable.__hash__

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other


def shared(value, name=None, strict=False, allow_downcast=None, borrow=False,
           broadcastable=None, shape=None, **kwargs):
    """``graphc.shared``: a shared tensor variable initialised with ``value``.

    Its type has the dtype of ``value`` and unknown sizes (so set_value may change them),
    except where ``broadcastable``/``shape`` say otherwise.
    """
    if kwargs:
        raise TypeError(f"shared(): unexpected arguments {sorted(kwargs)}")
    if isinstance(value, Variable):
        raise TypeError("shared() takes a numeric value, not a symbolic variable")
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise TypeError(f"shared(): cannot store a value of type {type(value).__name__}")
    if not borrow:
        arr = arr.copy()
    if shape is None:
        shape = (None,) * arr.ndim if broadcastable is None else \
            tuple(1 if b else None for b in broadcastable)
    ttype = TensorType(arr.dtype, shape=shape)
    return TensorSharedVariable(ttype, arr, name=name, strict=strict, allow_downcast=allow_downcast)
