"""TensorType: dtype + static shape (an int where known, None where not).

``broadcastable`` (Theano's notion) is derived: a dimension is broadcastable when it is
statically known to be 1.  ``TensorType('float32', (False, True))`` is accepted as in Theano.
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence, Tuple

import numpy as np

from graphc.graph.basic import Type

FLOAT_DTYPES = ("float16", "float32", "float64")
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
ALL_DTYPES = ("bool",) + INT_DTYPES + FLOAT_DTYPES
DISCRETE_DTYPES = ("bool",) + INT_DTYPES


def is_float(dtype) -> bool:
    return str(dtype) in FLOAT_DTYPES


def is_int(dtype) -> bool:
    return str(dtype) in DISCRETE_DTYPES


_upcast_memo: dict = {}


def upcast(*dtypes) -> str:
    key = tuple(str(d) for d in dtypes)
    r = _upcast_memo.get(key)
    if r is None:               # numpy's result_type and dtype names are slow: memoized
        r = _upcast_memo[key] = str(np.result_type(*[np.dtype(d) for d in dtypes]))
    return r


def normalize_dtype(dtype) -> str:
    if dtype is None:
        from graphc.configdefaults import config
        return config.floatX
    if dtype == "floatX":
        from graphc.configdefaults import config
        return config.floatX
    if isinstance(dtype, str) and dtype in ALL_DTYPES:
        return dtype            # the common case, without numpy's slow dtype names
    d = _dtype_names.get(dtype) if isinstance(dtype, np.dtype) else None
    if d is None:
        d = str(np.dtype(dtype))
        if d not in ALL_DTYPES:
            raise TypeError(f"graphc does not support dtype {d!r}; supported: {ALL_DTYPES}")
        if isinstance(dtype, np.dtype) and dtype.isbuiltin == 1 and len(_dtype_names) < 64:
            _dtype_names[dtype] = d         # numpy's own dtypes (arrays' .dtype): memoized
    return d


_dtype_names: dict = {}
_np_dtypes: dict = {}


class TensorType(Type):
    def __init__(self, dtype, broadcastable: Optional[Sequence[bool]] = None,
                 shape: Optional[Sequence[Optional[int]]] = None, name=None):
        self.dtype = normalize_dtype(dtype)
        if shape is None:
            if broadcastable is None:
                raise TypeError("TensorType needs broadcastable or shape")
            shape = tuple(1 if b else None for b in broadcastable)
        self.shape: Tuple[Optional[int], ...] = tuple(
            None if s is None else int(s) for s in shape)
        self.name = name
        # derived, cached: read on every call of the reference backend
        self.broadcastable: Tuple[bool, ...] = tuple(s == 1 for s in self.shape)
        self.ndim = len(self.shape)
        dt = _np_dtypes.get(self.dtype)
        if dt is None:
            dt = _np_dtypes[self.dtype] = np.dtype(self.dtype)
        self.numpy_dtype = dt

    def clone(self, dtype=None, shape=None, broadcastable=None):
        if shape is None and broadcastable is not None:
            shape = tuple(1 if b else None for b in broadcastable)
        return TensorType(self.dtype if dtype is None else dtype,
                          shape=self.shape if shape is None else shape)

    def __eq__(self, other):
        return type(other) is type(self) and other.dtype == self.dtype and other.shape == self.shape

    def __hash__(self):
        return hash((TensorType, self.dtype, self.shape))

    def __str__(self):
        if self.name:
            return self.name
        shp = ", ".join("?" if s is None else str(s) for s in self.shape)
        return f"Tensor{{{self.dtype}, ({shp})}}" if self.ndim else f"Scalar{{{self.dtype}}}"

    __repr__ = __str__

    def is_super(self, other) -> bool:
        """True when every value of ``other`` is a value of self."""
        return (isinstance(other, TensorType) and other.dtype == self.dtype
                and other.ndim == self.ndim
                and all(s is None or s == o for s, o in zip(self.shape, other.shape)))

    def convert_variable(self, var):
        """var itself when its type is at least as specific as self; else None."""
        if self.is_super(var.type):
            return var
        if (isinstance(var.type, TensorType) and var.type.dtype == self.dtype
                and var.type.ndim == self.ndim
                and all(o is None or s is None or s == o for s, o in zip(self.shape, var.type.shape))):
            from graphc.tensor.basic import specify_broadcast
            return specify_broadcast(var, self.shape)
        return None

    def filter(self, data, strict=False, allow_downcast=None):
        """Check/convert a runtime value to this type; raise TypeError when it cannot."""
        if isinstance(data, np.ndarray) and data.dtype == self.numpy_dtype:
            # a subclass becomes a plain ndarray (no copy): np.matrix would keep its 2-d
            # semantics inside ops (sum over an axis of a matrix is still a matrix)
            arr = data if type(data) is np.ndarray else np.asarray(data)
        elif strict:
            raise TypeError(f"expected a numpy array of dtype {self.dtype}, got "
                            f"{type(data).__name__}{getattr(data, 'dtype', '')}")
        else:
            arr = np.asarray(data)
            if arr.dtype != self.numpy_dtype:
                if allow_downcast or _safe_cast(arr, self.dtype) or (
                        allow_downcast is None and isinstance(data, (float, int, bool, list, tuple))
                        and self.dtype in ("float32", "float16") and arr.dtype.kind in "fiub"):
                    arr = arr.astype(self.dtype)
                else:
                    raise TypeError(
                        f"cannot convert a value of dtype {arr.dtype} to {self.dtype} without "
                        f"losing precision (pass allow_input_downcast=True to function(), or cast "
                        f"the value with numpy first)")
        if arr.ndim != self.ndim:
            raise TypeError(f"expected a {self.ndim}-d array ({self}), got a {arr.ndim}-d "
                            f"array of shape {arr.shape}")
        for i, (s, a) in enumerate(zip(self.shape, arr.shape)):
            if s is not None and s != a:
                raise TypeError(f"expected shape {self.shape_str()} ({self}), got {arr.shape}: "
                                f"dimension {i} must be {s}")
        return arr

    def shape_str(self):
        return "(" + ", ".join("?" if s is None else str(s) for s in self.shape) + ")"

    def data_signature(self, data):
        a = np.asarray(data)
        if a.size <= 16:
            return (a.shape, a.dtype.str, a.tobytes())
        # a content hash, not hash(): the same in every process (pickled graphs keep it)
        return (a.shape, a.dtype.str, hashlib.blake2b(a.tobytes(), digest_size=16).digest())

    def data_str(self, data):
        a = np.asarray(data)
        if a.ndim == 0:
            return repr(a.item())
        if a.size <= 8:
            return np.array2string(a, separator=",").replace("\n", "")
        return f"Constant{{{self.dtype}, shape={a.shape}}}"

    def value_zeros(self, shape):
        return np.zeros(shape, dtype=self.dtype)

    def make_variable(self, name=None):
        from graphc.tensor.var import TensorVariable
        if self.dtype == "float64":
            _check_float64(name)
        return TensorVariable(self, None, None, name)


def _check_float64(name):
    """``warn_float64``: Theano's guard against float64 sneaking into float32 (GPU) graphs."""
    from graphc.configdefaults import config
    policy = config.warn_float64
    if policy == "ignore":
        return
    from graphc.graph.basic import format_trace, user_trace
    msg = (f"a float64 variable{' ' + repr(name) if name else ''} was created "
           f"(warn_float64={policy}):\n{format_trace(user_trace())}")
    if policy == "raise":
        raise TypeError(msg)
    import warnings
    warnings.warn(msg, stacklevel=3)


def _safe_cast(arr, dtype) -> bool:
    """Value-based: an int array whose values fit, or a dtype that is a safe cast."""
    if np.can_cast(arr.dtype, dtype, casting="safe"):
        return True
    if arr.dtype.kind in "iub" and np.dtype(dtype).kind in "iuf" and arr.size:
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
        if info is None:
            return bool(np.all(np.abs(arr.astype(np.float64)) < 2 ** np.finfo(dtype).nmant))
        return bool(arr.min() >= info.min and arr.max() <= info.max)
    return False
