"""Theano's variable constructors: T.scalar, T.matrix, T.fmatrix, T.ivector, ..."""
from graphc.tensor.type import TensorType, normalize_dtype

__all__ = ["scalar", "vector", "row", "col", "matrix", "tensor3", "tensor4", "tensor5",
           "tensor"]

_KINDS = {"scalar": (), "vector": (False,), "row": (True, False), "col": (False, True),
          "matrix": (False, False), "tensor3": (False,) * 3, "tensor4": (False,) * 4,
          "tensor5": (False,) * 5}
_PREFIX = {"b": "int8", "w": "int16", "i": "int32", "l": "int64", "f": "float32",
           "d": "float64", "c": None}


def _maker(kind, fixed_dtype=None):
    bcast = _KINDS[kind]

    def make(name=None, dtype=None):
        dt = normalize_dtype(fixed_dtype if fixed_dtype is not None else dtype)
        return TensorType(dt, bcast)(name)

    make.__name__ = kind
    make.__doc__ = f"A symbolic {kind} ({'dtype ' + fixed_dtype if fixed_dtype else 'floatX'})."
    return make


def tensor(dtype=None, broadcastable=None, name=None, shape=None):
    """``T.tensor(dtype, broadcastable, name)``; graphc also takes a static ``shape``."""
    return TensorType(normalize_dtype(dtype), broadcastable, shape=shape)(name)


for _kind in _KINDS:
    globals()[_kind] = _maker(_kind)
    for _p, _dt in _PREFIX.items():
        if _dt is None:
            continue
        globals()[_p + _kind] = _maker(_kind, _dt)
        __all__.append(_p + _kind)
for _p, _dt in _PREFIX.items():
    if _dt is not None:
        globals()[_p + "tensor"] = lambda name=None, broadcastable=None, _dt=_dt: \
            TensorType(_dt, broadcastable)(name)
# vectors of several: T.scalars('a', 'b'), T.matrices('x y')


def _plural(single):
    def many(*names):
        if len(names) == 1 and isinstance(names[0], str) and (" " in names[0] or "," in names[0]):
            names = names[0].replace(",", " ").split()
        if len(names) == 1 and isinstance(names[0], int):
            names = [None] * names[0]
        return [single(n) for n in names]
    return many


for _kind, _pl in (("scalar", "scalars"), ("vector", "vectors"), ("matrix", "matrices"),
                   ("tensor3", "tensor3s"), ("tensor4", "tensor4s"), ("row", "rows"),
                   ("col", "cols")):
    globals()[_pl] = _plural(globals()[_kind])
    __all__.append(_pl)
    for _p, _dt in _PREFIX.items():
        if _dt is not None:
            globals()[_p + _pl] = _plural(globals()[_p + _kind])
            __all__.append(_p + _pl)
