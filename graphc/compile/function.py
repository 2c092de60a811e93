"""``graphc.function``: from symbolic inputs/outputs/updates to a callable.

The path of a graph: normalize the arguments -> clone the user's graph (applying
``givens``) -> FunctionGraph -> rewrite pipeline of the mode -> linker (backend) ->
``Function``.  Calling the Function checks and converts the arguments, runs the graph,
then applies every update at once, so a call that raises changes no shared variable.
"""
from __future__ import annotations

import contextlib
import gc
import warnings
from collections import OrderedDict
from typing import List, Sequence

import numpy as np

from graphc.compile.mode import get_mode, resolve_linker
from graphc.compile.sharedvalue import SharedVariable
from graphc.configdefaults import config
from graphc.graph.basic import (Constant, Variable, ancestors, clone_replace, fixed_trace,
                                user_trace)
from graphc.graph.fg import FunctionGraph


class UnusedInputError(ValueError):
    pass


class MissingInputError(ValueError):
    pass


class In:
    """An explicit input with a name, a default value, and Theano's flags."""

    def __init__(self, variable, name=None, value=None, update=None, mutable=False,
                 strict=False, allow_downcast=None, borrow=False, implicit=None):
        if not isinstance(variable, Variable):
            raise TypeError(f"In() takes a symbolic variable, got {variable!r}")
        self.variable = variable
        self.name = name if name is not None else variable.name
        self.value = value
        self.has_default = value is not None
        self.update = update
        self.strict = strict
        self.allow_downcast = allow_downcast
        self.mutable = mutable


class Out:
    def __init__(self, variable, borrow=False):
        self.variable = variable
        self.borrow = borrow


def _as_list(x):
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _normalize_updates(updates):
    if updates is None:
        return []
    if isinstance(updates, dict):
        if not isinstance(updates, OrderedDict) and len(updates) > 1 and type(updates) is not dict:
            warnings.warn("updates given as an unordered mapping")
        pairs = list(updates.items())
    else:
        pairs = list(updates)
    from graphc.tensor.var import as_tensor_variable
    out = []
    seen = set()
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"updates must be (shared variable, new value) pairs; got {pair!r}")
        var, val = pair
        if not isinstance(var, SharedVariable):
            raise TypeError(f"update target {var} is not a shared variable "
                            f"(only shared variables can be updated)")
        if var in seen:
            raise ValueError(f"shared variable {var} has more than one update")
        seen.add(var)
        val = as_tensor_variable(val)
        if val.type != var.type:
            if val.dtype != var.dtype or val.ndim != var.ndim:
                raise TypeError(
                    f"an update must have the same type as the shared variable it updates: "
                    f"{var.name or var} is {var.type}, its update {val} is {val.type}. "
                    f"Cast the update (e.g. T.cast(expr, '{var.dtype}')) or check the dtypes "
                    f"of the constants/inputs in it")
            conv = var.type.convert_variable(val)
            if conv is None:
                raise TypeError(f"update of {var.name or var} has incompatible static shape: "
                                f"{var.type} vs {val.type}")
            val = conv
        out.append((var, val))
    return out


def _normalize_givens(givens):
    from graphc.tensor.var import as_tensor_variable
    if givens is None:
        return {}
    pairs = list(givens.items()) if isinstance(givens, dict) else list(givens)
    out = {}
    for old, new in pairs:
        if not isinstance(old, Variable):
            raise TypeError(f"givens keys must be symbolic variables, got {old!r}")
        new = as_tensor_variable(new) if not isinstance(new, Variable) else new
        if old.type != new.type:
            conv = getattr(old.type, "convert_variable", lambda v: None)(new)
            if conv is None:
                if getattr(old.type, "ndim", None) == getattr(new.type, "ndim", None) and \
                        getattr(old.type, "dtype", None) == getattr(new.type, "dtype", None):
                    conv = new
                else:
                    raise TypeError(f"givens: {old} of type {old.type} cannot be replaced by "
                                    f"{new} of type {new.type} (dtype and ndim must match)")
            new = conv
        out[old] = new
    return out


def function(inputs=None, outputs=None, mode=None, updates=None, givens=None,
             no_default_updates=False, accept_inplace=False, name=None, rebuild_strict=True,
             allow_input_downcast=None, profile=None, on_unused_input=None):
    """Compile a callable from symbolic ``inputs`` to ``outputs`` (Theano's signature)."""
    if on_unused_input is None:
        on_unused_input = "raise"
    if on_unused_input not in ("raise", "warn", "ignore"):
        raise ValueError("on_unused_input must be 'raise', 'warn' or 'ignore'")
    if inputs is None:
        inputs = []
    if not isinstance(inputs, (list, tuple)):
        raise TypeError("function(): inputs must be a list or tuple of variables")
    ins = [i if isinstance(i, In) else In(i) for i in inputs]
    for i in ins:
        if isinstance(i.variable, SharedVariable):
            raise TypeError(f"shared variable {i.variable} cannot be an explicit input; "
                            f"use givens= to replace it, or pass its value")
        if isinstance(i.variable, Constant):
            raise TypeError(f"constant {i.variable} cannot be a function input")
    in_vars = [i.variable for i in ins]
    if len(set(in_vars)) != len(in_vars):
        raise ValueError("function(): the same variable is given twice as input")

    single = outputs is not None and not isinstance(outputs, (list, tuple))
    outs = [o.variable if isinstance(o, Out) else o for o in _as_list(outputs)]
    from graphc.tensor.var import as_tensor_variable
    outs = [as_tensor_variable(o) if not isinstance(o, Variable) else o for o in outs]

    upd = _normalize_updates(updates)
    giv = _normalize_givens(givens)

    # default updates (e.g. random streams advance their state) unless disabled
    if not no_default_updates:
        updated = {v for v, _ in upd}
        frontier = outs + [v for _, v in upd]
        while True:
            new = []
            for v in ancestors(frontier, in_vars):
                if isinstance(v, SharedVariable) and v not in updated and \
                        v.default_update is not None:
                    new.append((v, v.default_update))
                    updated.add(v)
            if not new:
                break
            upd.extend(_normalize_updates(new))
            frontier = [u for _, u in new]

    replace = dict(giv)
    for v in in_vars:
        replace.setdefault(v, v)
    with fixed_trace(user_trace()), _gc_paused():
        return _compile(ins, in_vars, outs, upd, replace, single, mode, name, on_unused_input,
                        allow_input_downcast, profile)


@contextlib.contextmanager
def _gc_paused():
    """The cyclic garbage collector off while a function compiles: cloning, rewriting and
    linking allocate many small objects and free few, so its collections would scan the
    growing young generation again and again (5-80 ms per warm-cache compile measured on
    the benchmark graphs) to find almost nothing; what the compile leaves behind is
    collected later as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _compile(ins, in_vars, outs, upd, replace, single, mode, name, on_unused_input,
             allow_input_downcast, profile):
    """function()'s compile proper: clone, check the roots, rewrite, link."""
    cloned = clone_replace(outs + [v for _, v in upd], replace=replace)

    # every root must be an explicit input, a shared variable or a constant
    in_set = set(in_vars)
    shared_inputs = []
    for v in ancestors(cloned, in_set):
        if v in in_set or isinstance(v, Constant) or v.owner is not None:
            continue
        if isinstance(v, SharedVariable):
            shared_inputs.append(v)
            continue
        if type(getattr(v, "type", None)).__name__ == "DisconnectedType":
            continue
        raise MissingInputError(
            f"function(): the graph needs {v} ({v.type}) but it is not in the inputs list "
            f"{[str(i) for i in in_vars]} (pass it as an input, or replace it with givens=)")
    for v, _ in upd:
        if v not in shared_inputs:
            shared_inputs.append(v)
    used = set(ancestors(cloned, in_set))
    for i in in_vars:
        if i not in used:
            msg = (f"function(): input {i} is not used to compute the outputs "
                   f"(pass on_unused_input='ignore' to allow this)")
            if on_unused_input == "raise":
                raise UnusedInputError(msg)
            if on_unused_input == "warn":
                warnings.warn(msg)

    mode_obj = get_mode(mode)
    fgraph = FunctionGraph(in_vars + shared_inputs, cloned, clone=False)
    n_out = len(outs)
    from graphc.compile.graph_cache import optimized
    fgraph = optimized(fgraph, mode_obj, user_trace())   # the rewrite passes, or their result
    if mode_obj.check:
        fgraph.check()
    linker_name = resolve_linker(mode_obj)
    return Function(fgraph, ins, shared_inputs, n_out, [v for v, _ in upd], single,
                    name, allow_input_downcast, linker_name, profile or config.profile, mode_obj)


def preload() -> None:
    """Import what the first ``function()`` call of a process would otherwise import inside
    its own compile: the rewrite pipeline, the scan rewrites and the default CPU backend
    with its native step makers (~45 ms of module loading, more than the rest of a small
    graph's warm-cache compile), and hash graphc's sources for the graph cache (~3 ms); on a
    cold compile dir, start loading LLVM on a thread (jit.warm_up). ``import graphc`` calls
    this once, after its own imports."""
    import graphc.rewriting.pipeline  # noqa: F401
    import graphc.scan_module.rewrites  # noqa: F401
    import graphc.scan_module.store  # noqa: F401
    import graphc.scan_module.grad  # noqa: F401
    from graphc.compile import graph_cache
    graph_cache.preload()
    if config.device in ("gpu", "cuda") or config.linker not in ("auto", "llvm"):
        return
    try:
        import graphc.link.llvm  # noqa: F401
        import graphc.backend.llvm.softmax  # noqa: F401
        import graphc.backend.llvm.col2im  # noqa: F401
        import graphc.backend.llvm.maxpool  # noqa: F401
        from graphc.backend.llvm import jit
    except ImportError:         # no llvmlite: resolve_linker falls back to the Python linker
        return
    jit.warm_up()               # a cold compile dir: LLVM loads on a thread from now on


def _get_linker(name):
    if name == "py":
        from graphc.link.py import PyLinker
        return PyLinker()
    if name == "llvm":
        try:
            from graphc.link.llvm import LLVMLinker
        except ImportError:
            from graphc.link.py import PyLinker
            return PyLinker()
        return LLVMLinker()
    if name == "cuda":
        raise NotImplementedError("the CUDA backend (device=gpu) is not built yet; "
                                  "use device=cpu")
    raise ValueError(f"unknown linker {name!r}")


class FunctionMaker:
    """What Theano users reach through ``f.maker``: the optimized graph and the mode."""

    def __init__(self, fgraph, mode, linker_name):
        self.fgraph = fgraph
        self.mode = mode
        self.linker = linker_name


class Function:
    def __init__(self, fgraph, ins, shared_inputs, n_out, update_targets, single, name,
                 allow_input_downcast, linker_name, profile, mode):
        from graphc.link.py import Profile
        self.maker = FunctionMaker(fgraph, mode, linker_name)
        self.name = name
        self.input_specs = ins
        self.shared_inputs = shared_inputs
        self.n_out = n_out
        self.single = single
        self.update_targets = update_targets
        self.allow_input_downcast = allow_input_downcast
        self.profile = Profile(name or "function") if profile else None
        linker = _get_linker(linker_name)
        self.storage, self._run = linker.link(fgraph, self.profile)
        n_in = len(ins)
        self._in_cells = [self.storage[v] for v in fgraph.inputs[:n_in]]
        self._shared_cells = [(self.storage[v], v.container) for v in fgraph.inputs[n_in:]]
        self._out_cells = [self.storage[v] for v in fgraph.outputs]
        self._names = {i.name: k for k, i in enumerate(ins) if i.name is not None}
        self._types = [i.variable.type for i in ins]
        self._copy = _outputs_needing_copy(fgraph, n_in)
        # per input: the (dtype, ndim) an array may have to skip conversion, if its type
        # constrains no size (the common case); None means always go through filter()
        self._fast = [(t.numpy_dtype, t.ndim) if all(s is None for s in t.shape) else None
                      for t in self._types]
        # numpy's floating-point warnings are silenced only when numpy runs some node
        self._errstate = getattr(self._run, "uses_numpy", True)
        self._run_call = _quiet(self._run) if self._errstate else self._run
        # one output returned as is: no copy, no update, no profile (the short way out)
        self._plain = single and n_out == 1 and not update_targets and not self._copy and \
            self.profile is None
        self.trust_input = False

    @property
    def inputs(self):
        return self.input_specs

    def _convert(self, k, value):
        spec = self.input_specs[k]
        t = self._types[k]
        if self.trust_input:
            return value
        if type(value) is np.ndarray and value.dtype == t.numpy_dtype and value.ndim == t.ndim \
                and all(s is None for s in t.shape):
            return value        # subclasses (np.matrix) go through filter(), which drops them
        allow = spec.allow_downcast if spec.allow_downcast is not None else \
            self.allow_input_downcast
        try:
            return t.filter(value, strict=spec.strict, allow_downcast=allow)
        except TypeError as e:
            label = spec.name or str(spec.variable)
            raise TypeError(f"Bad input argument {label!r} (position {k}) to function "
                            f"{self.name or ''}: {e}") from None

    def _bind(self, args, kwargs):
        """Positional + keyword arguments + defaults -> one value per input, or TypeError."""
        n_in = len(self.input_specs)
        if len(args) > n_in:
            raise TypeError(f"function {self.name or ''} takes {n_in} inputs, got {len(args)}")
        values = list(args) + [_MISSING] * (n_in - len(args))
        for key, val in kwargs.items():
            k = self._names.get(key)
            if k is None:
                raise TypeError(f"function {self.name or ''} has no input named {key!r}; inputs: "
                                f"{[i.name for i in self.input_specs]}")
            if values[k] is not _MISSING:
                raise TypeError(f"input {key!r} given both by position and by name")
            values[k] = val
        for k, v in enumerate(values):
            if v is _MISSING:
                spec = self.input_specs[k]
                if not spec.has_default:
                    raise TypeError(f"missing argument {spec.name or spec.variable!s} (position {k}) "
                                    f"to function {self.name or ''}")
                values[k] = spec.value
        return values

    def __call__(self, *args, **kwargs):
        # the per-call path: kept flat, it is most of the cost of a small graph
        cells = self._in_cells
        if kwargs or len(args) != len(cells):
            args = self._bind(args, kwargs)
        fast = self._fast
        k = 0
        for v in args:
            f = fast[k]
            if f is None or type(v) is not np.ndarray or \
                    (v.dtype is not f[0] and v.dtype != f[0]) or v.ndim != f[1]:
                v = self._convert(k, v)
            cells[k][0] = v
            k += 1
        for cell, container in self._shared_cells:
            cell[0] = container[0]
        plain = self._plain
        try:
            self._run_call()
            # read before the input cells are cleared: an output may be an input's cell
            # (never in the plain case, whose output needs no copy)
            results = None if plain else [c[0] for c in self._out_cells]
        finally:
            for cell in cells:              # don't keep the caller's arrays alive
                cell[0] = None
            if after_call:
                _after_call()
        if plain:
            r = self._out_cells[0][0]
            if type(r) is np.ndarray:
                return r
            results = [r]
        return self._finish(results)

    def _finish(self, results):
        """Copies, updates and conversions of the raw outputs of the call that just ran."""
        if self.profile is not None:
            self.profile.calls += 1
        for k in self._copy:
            results[k] = np.array(results[k], copy=True)
        # updates last, all together: a call that raised above changed nothing
        n_out = self.n_out
        if self.update_targets:
            for var, val in zip(self.update_targets, results[n_out:]):
                var.container[0] = val
            del results[n_out:]
        for k, r in enumerate(results):
            if type(r) is not np.ndarray:
                results[k] = np.asarray(r)
        if self.single:
            return results[0]
        return results


# work to start once a call has returned (the LLVM backend's deferred background compiles,
# graphc.backend.llvm.jit.in_background): each runs once
after_call: list = []


def _after_call():
    jobs, after_call[:] = list(after_call), []
    for job in jobs:
        job()


def _quiet(run):
    """``run`` with numpy's floating-point warnings silenced (graphs where numpy runs nodes)."""
    def run_quiet():
        with np.errstate(all="ignore"):
            run()
    return run_quiet


_MISSING = object()


def _outputs_needing_copy(fgraph, n_in) -> List[int]:
    """Outputs that may share memory with an input, a shared value, a constant or another
    output: they are copied so the caller never aliases graphc's or its own buffers."""
    def root(v):
        seen = 0
        while v.owner is not None and seen < 10000:
            vm = getattr(v.owner.op, "view_map", {}) or {}
            if v.index in vm:
                v = v.owner.inputs[vm[v.index][0]]
                seen += 1
            else:
                return v
        return v

    need = []
    seen_roots = {}
    for k, o in enumerate(fgraph.outputs):
        r = root(o)
        if r.owner is None or r in seen_roots:
            need.append(k)
        seen_roots.setdefault(r, k)
    return need
