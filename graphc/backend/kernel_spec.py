"""The contract between the optimizer's fused nodes and the native backends.

A fused elementwise region is lowered to a ``KernelSpec``: a flat, typed list of
scalar equations (autodidax style), optionally followed by one reduction.

Grammar::

    KernelSpec := in_dtypes: (dtype, ...)          # one per kernel input array
                  eqns:      (Eqn, ...)            # in evaluation order
                  outputs:   (Ref, ...)            # one per kernel output array
                  reduce:    None | Reduce         # only when len(outputs) == 1
    Eqn        := (op: str, args: (Ref, ...), dtype: str)
    Ref        := ('in', i) | ('eq', j) | ('const', python_scalar, dtype)
                  (a float python_scalar is an ExactFloat: see const_ref)
    Reduce     := (kind in REDUCE_KINDS, axes: (int, ...))   # axes of the broadcast shape

Typing is canonical, so a renderer never has to guess:
- arithmetic eqns: every arg already has the eqn's dtype (explicit 'cast' eqns are inserted);
- comparisons (lt gt le ge eq neq): args share one dtype, the eqn's dtype is 'bool';
- switch: arg0 is bool, arg1/arg2 have the eqn's dtype;
- cast: one arg of any dtype, converted to the eqn's dtype with numpy's ``astype`` semantics.

Semantics of each op is the numpy function in ``SCALAR_OPS`` (the reference).
Inputs broadcast numpy-style against each other; the output shape is their broadcast shape
(reduced over ``reduce.axes`` when there is a reduction, keepdims=False).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional, Tuple

DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "float32", "float64")

# name -> arity.  The closed set of scalar primitives every backend renders.
SCALAR_OPS = {
    # unary
    "neg": 1, "exp": 1, "log": 1, "log1p": 1, "expm1": 1, "sqrt": 1, "sqr": 1, "abs": 1,
    "sgn": 1, "tanh": 1, "sin": 1, "cos": 1, "erf": 1, "floor": 1, "ceil": 1, "round": 1,
    "sigmoid": 1, "softplus": 1, "invert": 1, "identity": 1, "reciprocal": 1, "cast": 1,
    # binary
    "add": 2, "sub": 2, "mul": 2, "true_div": 2, "int_div": 2, "mod": 2, "pow": 2,
    "maximum": 2, "minimum": 2, "lt": 2, "gt": 2, "le": 2, "ge": 2, "eq": 2, "neq": 2,
    "and": 2, "or": 2, "xor": 2,
    # ternary
    "switch": 3, "clip": 3,
}
COMPARISONS = frozenset({"lt", "gt", "le", "ge", "eq", "neq"})
REDUCE_KINDS = ("add", "mul", "max", "min", "and", "or")


class ExactFloat(float):
    """The float of a ('const', value, dtype) ref: equal to another float only bit for bit.
    Specs and fused ops are compared and hashed (merged, memoized, cached): with plain floats
    ``x / -0.0`` and ``x / 0.0`` made one kernel (-0.0 == 0.0), while 1 / -0.0 is -inf; a NaN
    equals the same NaN here, so equal regions still merge."""

    __slots__ = ()

    def __eq__(self, other):
        if isinstance(other, float):
            return struct.pack("<d", self) == struct.pack("<d", other)
        return float.__eq__(self, other)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(struct.pack("<d", self))

    def __repr__(self):
        return float.__repr__(self)

    def __reduce__(self):
        return ExactFloat, (float(self),)


def const_ref(value, dtype: str) -> tuple:
    """('const', value, dtype), a float value exact in comparisons (ExactFloat)."""
    if isinstance(value, float):
        value = ExactFloat(value)
    return ("const", value, dtype)


@dataclass(frozen=True)
class KernelSpec:
    in_dtypes: Tuple[str, ...]
    eqns: Tuple[tuple, ...]
    outputs: Tuple[tuple, ...]
    reduce: Optional[Tuple[str, Tuple[int, ...]]] = None

    @property
    def out_dtypes(self) -> Tuple[str, ...]:
        return tuple(self.ref_dtype(r) for r in self.outputs)

    def ref_dtype(self, ref) -> str:
        if ref[0] == "in":
            return self.in_dtypes[ref[1]]
        if ref[0] == "eq":
            return self.eqns[ref[1]][2]
        return ref[2]

    def check(self) -> None:
        """Spec pass: raise ValueError when the spec breaks the grammar above."""
        for j, (op, args, dtype) in enumerate(self.eqns):
            if op not in SCALAR_OPS:
                raise ValueError(f"eqn {j}: unknown scalar op {op!r}")
            if len(args) != SCALAR_OPS[op]:
                raise ValueError(f"eqn {j}: {op} takes {SCALAR_OPS[op]} args, got {len(args)}")
            if dtype not in DTYPES:
                raise ValueError(f"eqn {j}: unknown dtype {dtype!r}")
            for a in args:
                if a[0] == "eq" and a[1] >= j:
                    raise ValueError(f"eqn {j}: refers to later eqn {a[1]}")
                if a[0] == "in" and a[1] >= len(self.in_dtypes):
                    raise ValueError(f"eqn {j}: refers to missing input {a[1]}")
            adt = [self.ref_dtype(a) for a in args]
            if op in COMPARISONS:
                ok = dtype == "bool" and adt[0] == adt[1]
            elif op == "switch":
                ok = adt[0] == "bool" and adt[1] == adt[2] == dtype
            elif op == "cast":
                ok = True
            else:
                ok = all(d == dtype for d in adt)
            if not ok:
                raise ValueError(f"eqn {j}: {op} with arg dtypes {adt} -> {dtype} is not canonical")
        if self.reduce is not None:
            if len(self.outputs) != 1 or self.reduce[0] not in REDUCE_KINDS:
                raise ValueError(f"bad reduce {self.reduce!r}")
