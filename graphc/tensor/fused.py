"""Fused: a region of elementwise ops (optionally ending in one reduction) as one node.

The fusion pass collapses maximal elementwise regions into a ``Fused`` node: the unit that
a native backend compiles into one kernel.  The op holds a flat typed expression
(autodidax style)::

    eqns   := ((name, param, args, dtype), ...)   name: a scalar primitive of scalar_ops;
                                                 param: the target dtype of 'cast', else None
    args   := (Ref, ...)      Ref := ('in', i) | ('eq', j) | ('const', python_scalar, dtype)
    outs   := (Ref, ...)      one per output (several when the region has several consumers)
    reduce := None | (kind, axes)                 kind of CAReduce; axes of the broadcast shape
    ndim   := the broadcast rank; inputs of lower rank are padded on the left

``perform`` evaluates the eqns with the same numpy references as Elemwise (the oracle for
the backends) and keeps Theano's broadcasting check: a dimension broadcasts only where the
input's type says it has size 1.  ``to_kernel_spec()`` lowers the expression to the
canonical ``KernelSpec`` of graphc.backend.kernel_spec (explicit casts, bool comparisons,
'second' as its second argument).  ``destroy`` lists (output, input) pairs whose input
buffer the output overwrites (chosen by the inplace pass).  Fusion runs after gradients are
taken, so the op has no gradient.
"""
from __future__ import annotations

import numpy as np

from graphc.backend.kernel_spec import COMPARISONS, KernelSpec, const_ref
from graphc.graph.basic import Apply, Op
from graphc.tensor.elemwise import _REDUCE_IMPL, describe, describe_values, shape_error
from graphc.tensor.scalar_ops import SCALAR
from graphc.tensor.type import TensorType, upcast
from graphc.tensor.var import as_tensor_variable


def ref_str(ref):
    if ref[0] == "in":
        return f"i{ref[1]}"
    if ref[0] == "eq":
        return f"t{ref[1]}"
    return repr(ref[1])


class Fused(Op):
    __props__ = ("in_dtypes", "eqns", "outs", "reduce", "ndim", "destroy")

    def __init__(self, in_dtypes, eqns, outs, reduce=None, ndim=0, destroy=()):
        self.in_dtypes = tuple(in_dtypes)
        self.eqns = tuple((n, p, tuple(a), d) for n, p, a, d in eqns)
        self.outs = tuple(outs)
        self.reduce = None if reduce is None else (reduce[0], tuple(reduce[1]))
        self.ndim = int(ndim)
        self.destroy = tuple(destroy)
        self.destroy_map = {k: [j] for k, j in self.destroy}
        if self.reduce is not None and len(self.outs) != 1:
            raise ValueError("Fused: a reduction needs exactly one output")
        self._consts = {}

    def __str__(self):
        red = f", reduce={self.reduce[0]}" if self.reduce else ""
        inpl = ", inplace" if self.destroy else ""
        return f"Fused{{{len(self.eqns)} ops{red}{inpl}}}"

    def ref_dtype(self, ref):
        if ref[0] == "in":
            return self.in_dtypes[ref[1]]
        if ref[0] == "eq":
            return self.eqns[ref[1]][3]
        return ref[2]

    # ----------------------------------------------------------------- graph building
    def make_node(self, *inputs):
        inputs = [as_tensor_variable(x) for x in inputs]
        if tuple(x.dtype for x in inputs) != self.in_dtypes:
            raise TypeError(f"{self}: input dtypes {[x.dtype for x in inputs]} differ from "
                            f"{list(self.in_dtypes)}")
        shape = []
        for d in range(self.ndim):
            sizes = set()
            for x in inputs:
                off = self.ndim - x.ndim
                if off < 0:
                    raise TypeError(f"{self}: input {x.type} has more than {self.ndim} dims")
                sizes.add(x.type.shape[d - off] if d >= off else 1)
            sizes.discard(1)
            known = sizes - {None}
            if len(known) > 1:
                raise shape_error(self, describe(inputs), f"incompatible sizes {sorted(known)} "
                                  f"in dimension {d}")
            shape.append(known.pop() if known else (None if sizes else 1))
        if self.reduce is not None:
            shape = [s for d, s in enumerate(shape) if d not in self.reduce[1]]
        outs = [TensorType(self.ref_dtype(r), shape=tuple(shape))() for r in self.outs]
        return Apply(self, inputs, outs)

    def infer_shape(self, node, shapes):
        out = []
        for d in range(self.ndim):
            pick = 1
            for x, s in zip(node.inputs, shapes):
                off = self.ndim - x.ndim
                if d >= off and not x.type.broadcastable[d - off]:
                    pick = s[d - off]
                    break
            out.append(pick)
        if self.reduce is not None:
            out = [s for d, s in enumerate(out) if d not in self.reduce[1]]
        return [tuple(out)] * len(self.outs)

    def L_op(self, inputs, outputs, output_grads):
        raise NotImplementedError(f"{self} has no gradient: fusion runs after gradients are "
                                  f"taken; differentiate the unoptimized graph instead")

    # ----------------------------------------------------------------- the numpy reference
    def _const(self, ref):
        c = self._consts.get(ref)
        if c is None:
            c = self._consts[ref] = np.asarray(ref[1], dtype=ref[2])
        return c

    def _broadcast_shape(self, node, inputs):
        shape, fixed = [1] * self.ndim, [False] * self.ndim
        for x, v, in zip(node.inputs, inputs):
            off = self.ndim - v.ndim
            for d, (b, s) in enumerate(zip(x.type.broadcastable, v.shape)):
                if b:
                    continue
                if not fixed[d + off]:
                    shape[d + off], fixed[d + off] = s, True
                elif shape[d + off] != s:
                    raise shape_error(
                        self, describe_values(inputs),
                        f"input shapes do not match in dimension {d + off} ({s} vs "
                        f"{shape[d + off]}); graphc (like Theano) broadcasts only dimensions "
                        f"declared broadcastable", getattr(node.tag, "trace", []))
        return tuple(shape)

    def perform(self, node, inputs, output_storage):
        inputs = [np.asarray(v) for v in inputs]
        shape = self._broadcast_shape(node, inputs)
        vals = []

        def get(ref):
            if ref[0] == "in":
                return inputs[ref[1]]
            if ref[0] == "eq":
                return vals[ref[1]]
            return self._const(ref)

        last = len(self.eqns) - 1
        dest = {self.outs[k]: inputs[j] for k, j in self.destroy} if self.reduce is None else {}
        for j, (name, param, args, dtype) in enumerate(self.eqns):
            a = [get(r) for r in args]
            buf = dest.get(("eq", j)) if j == last else None
            if name == "cast":
                r = a[0].astype(dtype)
            else:
                sop = SCALAR[name]
                impl = sop.impl
                if sop.rule == "float" and dtype[0] == "f":
                    # as Elemwise: ints are upgraded first (numpy's exp(int8) is float16)
                    a = [x if x.dtype == dtype else x.astype(dtype) for x in a]
                if buf is not None and isinstance(impl, np.ufunc) and \
                        all(getattr(x, "dtype", None) == buf.dtype for x in a):
                    r = impl(*a, out=buf)
                else:
                    r = np.asarray(impl(*a))
                    if r.dtype != dtype:
                        r = r.astype(dtype)
            vals.append(r)
        for k, ref in enumerate(self.outs):
            r = get(ref)
            dt = node.outputs[k].type.numpy_dtype
            if self.reduce is not None:
                kind, axes = self.reduce
                r = np.broadcast_to(r, shape)
                try:
                    r = np.asarray(_REDUCE_IMPL[kind](r, axis=axes), dtype=dt)
                except ValueError as e:
                    raise shape_error(self, describe_values(inputs), str(e),
                                      getattr(node.tag, "trace", [])) from None
            elif k in self.destroy_map:
                buf = inputs[self.destroy_map[k][0]]
                if r is not buf:
                    np.copyto(buf, np.broadcast_to(r, shape), casting="unsafe")
                r = buf
            elif r.shape != shape or not r.flags.writeable or not r.flags.owndata or \
                    any(r is x for x in inputs):
                # outputs are fresh, writable, full-shape arrays: in-place ops may reuse them
                r = np.array(np.broadcast_to(r, shape), dtype=dt)
            output_storage[k][0] = r

    # ----------------------------------------------------------------- lowering and printing
    def to_kernel_spec(self) -> KernelSpec:
        """The canonical KernelSpec of this region (explicit casts, bool comparisons)."""
        eqns, mapped, casts = [], [], {}

        def dt(ref):
            if ref[0] == "in":
                return self.in_dtypes[ref[1]]
            if ref[0] == "eq":
                return eqns[ref[1]][2]
            return ref[2]

        def typed(ref, dtype):
            if dt(ref) == dtype:
                return ref
            if ref[0] == "const":
                return const_ref(np.asarray(ref[1]).astype(dtype).item(), dtype)
            key = (ref, dtype)
            if key not in casts:
                eqns.append(("cast", (ref,), dtype))
                casts[key] = ("eq", len(eqns) - 1)
            return casts[key]

        def emit(op, args, dtype):
            eqns.append((op, tuple(args), dtype))
            return ("eq", len(eqns) - 1)

        def m(ref):
            return mapped[ref[1]] if ref[0] == "eq" else ref

        for name, param, args, dtype in self.eqns:
            a = [m(r) for r in args]
            if name == "cast":
                mapped.append(a[0] if dt(a[0]) == dtype else emit("cast", a, dtype))
            elif name in ("second", "identity"):
                mapped.append(typed(a[-1], dtype))
            elif name in COMPARISONS:
                common = upcast(dt(a[0]), dt(a[1]))
                mapped.append(emit(name, [typed(x, common) for x in a], "bool"))
            elif name == "switch":
                mapped.append(emit("switch", [typed(a[0], "bool"), typed(a[1], dtype),
                                              typed(a[2], dtype)], dtype))
            else:
                mapped.append(emit(name, [typed(x, dtype) for x in a], dtype))
        return KernelSpec(in_dtypes=self.in_dtypes, eqns=tuple(eqns),
                          outputs=tuple(m(r) for r in self.outs), reduce=self.reduce)

    def inner_str(self) -> str:
        """The region as formulas: inputs i0.., shared temporaries t0.., outputs o0.."""
        uses = {}
        for _, _, args, _ in self.eqns:
            for r in args:
                uses[r] = uses.get(r, 0) + 1
        for r in self.outs:
            uses[r] = uses.get(r, 0) + 1
        text, lines = {}, []
        for j, (name, param, args, dtype) in enumerate(self.eqns):
            a = ", ".join(text.get(r, ref_str(r)) for r in args)
            s = f"cast{{{param}}}({a})" if name == "cast" else f"{name}({a})"
            if uses.get(("eq", j), 0) > 1 and ("eq", j) not in self.outs:
                lines.append(f"t{j} = {s}")
            else:
                text[("eq", j)] = s
        for k, r in enumerate(self.outs):
            s = text.get(r, ref_str(r))
            if self.reduce is not None:
                s = f"{self.reduce[0]}_over{self.reduce[1]}({s})"
            lines.append(f"o{k} = {s}")
        return "; ".join(lines)

