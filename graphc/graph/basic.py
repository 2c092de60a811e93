"""graphc's IR: types, variables, apply nodes and ops (Theano's model).

Grammar::

    Variable  := (type: Type, owner: Apply | None, index: int | None, name: str | None)
    Constant  := Variable with owner None and an immutable ``data`` value
    Apply     := (op: Op, inputs: [Variable], outputs: [Variable])   # out.owner is the Apply
    Op        := __props__ (equality/hash), make_node, perform, infer_shape, grad

A graph is the set of variables reachable from some outputs through ``owner.inputs``.
Graphs built by users are never mutated by compilation: ``function()`` clones them first
and rewrites happen on the clone, inside a ``FunctionGraph``.

Every Apply records the user's source line that created it (``node.tag.trace``), so an error
raised while running or checking a node can point at the user's code.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
from typing import Dict, Iterable, List, Optional, Sequence

_GRAPHC_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Scratchpad:
    """Free-form annotations (``tag``) attached to variables and apply nodes."""

    def __repr__(self):
        return f"scratchpad{self.__dict__}"

    def __getstate__(self):
        # entries named with an underscore are caches (e.g. Variable.eval's compiled
        # functions): not copied by clones (_copy_tag), not pickled either. Without any,
        # the dict itself (the graph cache's key pickles one tag per variable and node)
        state = self.__dict__
        if any(k[:1] == "_" for k in state):
            return {k: v for k, v in state.items() if not k.startswith("_")}
        return state


_outside_cache: Dict[str, bool] = {}


def _outside_graphc(fn: str) -> bool:
    r = _outside_cache.get(fn)
    if r is None:
        r = _outside_cache[fn] = not os.path.abspath(fn).startswith(_GRAPHC_DIR + os.sep)
    return r


_fixed = threading.local()


def user_trace(limit: int = 1):
    """The innermost stack frames outside graphc's own package (the user's line)."""
    fixed = getattr(_fixed, "trace", None)
    if fixed is not None and limit == 1:
        return fixed
    frames = []
    f = sys._getframe(1)
    while f is not None and len(frames) < limit:
        fn = f.f_code.co_filename
        if _outside_graphc(fn):
            frames.append((fn, f.f_lineno, f.f_code.co_name))
        f = f.f_back
    return frames


@contextlib.contextmanager
def fixed_trace(trace):
    """Nodes created in this block (by this thread) record ``trace`` without walking the
    stack. Compilation uses it: every frame it runs is graphc's, below the user's call to
    ``function()``, so the walk would find that same line for each of the thousands of
    nodes the rewrites and clones create (and most of them get their trace overwritten
    with the trace of the node they replace anyway)."""
    prev = getattr(_fixed, "trace", None)
    _fixed.trace = trace
    try:
        yield
    finally:
        _fixed.trace = prev


def format_trace(trace) -> str:
    if not trace:
        return "  (no user source line recorded)"
    out = []
    for fn, lineno, func in trace:
        import linecache
        line = linecache.getline(fn, lineno).strip()
        out.append(f'  File "{fn}", line {lineno}, in {func}\n    {line}')
    return "\n".join(out)


class Type:
    """A static description of the values a Variable may take."""

    def filter(self, value, strict=False, allow_downcast=None):
        raise NotImplementedError

    def make_variable(self, name=None):
        return self.variable_type(self, None, None, name)

    def __call__(self, name=None):
        return self.make_variable(name)

    variable_type = None  # set by subclasses


_ids = itertools.count()
_UNSET = object()                          # a slot never assigned (Variable.__getstate__)
_PICKLED_SLOTS: Dict[type, tuple] = {}     # class -> (slots pickled, caches loaded as None)


def _pickled_slots(cls) -> tuple:
    """(slots Variable.__getstate__ keeps, cache slots __setstate__ sets to None) of cls."""
    names = _PICKLED_SLOTS.get(cls)
    if names is None:
        slots = [k for c in reversed(cls.__mro__) for k in c.__dict__.get("__slots__", ())]
        names = _PICKLED_SLOTS[cls] = (
            [k for k in slots if not k.startswith("_") and k != "auto_name"],
            [k for k in slots if k.startswith("_") and k not in ("__weakref__", "__dict__")])
    return names


class Variable:
    """A symbolic value: a graph input when ``owner`` is None, else an Apply's output."""

    __slots__ = ("type", "owner", "index", "name", "tag", "auto_name", "__weakref__")

    def __init__(self, type, owner=None, index=None, name=None):
        self.type = type
        self.owner = owner
        self.index = index
        self.name = name
        self.tag = Scratchpad()
        self.auto_name = f"auto_{next(_ids)}"

    def __getstate__(self):
        # a pickled graph (graphc/compile/graph_cache.py) leaves out auto_name, a
        # per-process creation number (a loaded variable gets a new one), and the caches,
        # slots named with an underscore (Constant._sig), which load as None
        kept, _ = _pickled_slots(type(self))
        state = {}
        for k in kept:
            v = getattr(self, k, _UNSET)
            if v is not _UNSET:
                state[k] = v
        if type(self).__dictoffset__:                   # a subclass without __slots__
            state.update(self.__dict__)
        return state

    def __setstate__(self, state):
        for k in _pickled_slots(type(self))[1]:
            setattr(self, k, None)
        for k, v in state.items():
            setattr(self, k, v)
        self.auto_name = f"auto_{next(_ids)}"

    def __str__(self):
        if self.name is not None:
            return self.name
        if self.owner is not None:
            op = self.owner.op
            return f"{op}.out" if len(self.owner.outputs) == 1 else f"{op}.{self.index}"
        return f"<{self.type}>"

    def __repr__(self):
        return str(self)

    def clone(self):
        cp = self.__class__(self.type, None, None, self.name)
        cp.tag = _copy_tag(self.tag)
        return cp

    def get_parents(self):
        return [self.owner] if self.owner is not None else []

    def eval(self, inputs_to_values=None):
        """Compile and run this variable (cached per input set), as in Theano."""
        from graphc.compile.function import function
        inputs_to_values = inputs_to_values or {}
        key = tuple(inputs_to_values)
        cache = self.tag.__dict__.setdefault("_eval_cache", {})
        if key not in cache:
            cache[key] = function(list(inputs_to_values), self, on_unused_input="ignore")
        return cache[key](*inputs_to_values.values())


def _copy_tag(tag):
    new = Scratchpad()
    new.__dict__.update({k: v for k, v in tag.__dict__.items() if not k.startswith("_")})
    return new


class Constant(Variable):
    """A variable with a fixed value; two constants with equal type and data are equal."""

    __slots__ = ("data", "_sig")

    def __init__(self, type, data, name=None):
        super().__init__(type, None, None, name)
        self.data = type.filter(data)
        self._sig = None

    def signature(self):
        if self._sig is None:
            self._sig = (self.type, self.type.data_signature(self.data))
        return self._sig

    def clone(self):
        cp = self.__class__(self.type, self.data, self.name)
        cp.tag = _copy_tag(self.tag)
        return cp

    def __str__(self):
        if self.name is not None:
            return self.name
        return self.type.data_str(self.data)


class Apply:
    """One application of an op to input variables, producing output variables."""

    __slots__ = ("op", "inputs", "outputs", "tag")

    def __init__(self, op, inputs: Sequence[Variable], outputs: Sequence[Variable],
                 trace=None):
        self.op = op
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.tag = Scratchpad()
        for i, out in enumerate(self.outputs):
            if out.owner is not None and out.owner is not self:
                raise ValueError(f"output {out} of {op} already has an owner")
            out.owner = self
            out.index = i
        # ``trace``: the user's line, when the caller knows it (a clone keeps its original's)
        self.tag.trace = user_trace() if trace is None else trace

    @property
    def out(self):
        if len(self.outputs) != 1:
            raise AttributeError(f"{self.op} has {len(self.outputs)} outputs; use .outputs")
        return self.outputs[0]

    @property
    def nin(self):
        return len(self.inputs)

    @property
    def nout(self):
        return len(self.outputs)

    def clone_with_new_inputs(self, inputs, strict=True):
        """Apply the same op to new inputs (re-running make_node so types stay consistent)."""
        if not strict or any(a.type != b.type for a, b in zip(inputs, self.inputs)):
            node = self.op.make_node(*inputs)
        else:
            outs = [o.clone() for o in self.outputs]
            node = Apply(self.op, inputs, outs, getattr(self.tag, "trace", []))
        node.tag.trace = getattr(self.tag, "trace", [])
        return node

    def __repr__(self):
        return f"{self.op}({', '.join(map(str, self.inputs))})"

    def location(self) -> str:
        return format_trace(getattr(self.tag, "trace", []))


class Op:
    """Base class of operations. Subclasses set ``__props__`` (the fields that define
    equality) and implement ``make_node`` and ``perform``; differentiable ops implement
    ``grad`` (or ``L_op``), and ops whose output shape is computable from the input
    shapes implement ``infer_shape``.  Theano's signatures are kept so that
    Theano-era custom ops run unchanged."""

    __props__: tuple = ()
    default_output = None
    view_map: Dict[int, List[int]] = {}
    destroy_map: Dict[int, List[int]] = {}

    def _props(self):
        return tuple(getattr(self, p) for p in self.__props__)

    def __eq__(self, other):
        return type(self) is type(other) and self._props() == other._props()

    def __hash__(self):
        return hash((type(self), self._props()))

    def __str__(self):
        if self.__props__:
            args = ", ".join(f"{p}={getattr(self, p)}" for p in self.__props__)
            return f"{type(self).__name__}{{{args}}}"
        return type(self).__name__

    __repr__ = __str__

    def make_node(self, *inputs) -> Apply:
        raise NotImplementedError(f"{type(self).__name__}.make_node")

    def __call__(self, *inputs, **kwargs):
        node = self.make_node(*inputs, **kwargs)
        if self.default_output is not None:
            return node.outputs[self.default_output]
        if len(node.outputs) == 1:
            return node.outputs[0]
        return node.outputs

    def perform(self, node, inputs, output_storage):
        raise NotImplementedError(f"{type(self).__name__} has no perform()")

    def L_op(self, inputs, outputs, output_grads):
        return self.grad(inputs, output_grads)

    def grad(self, inputs, output_grads):
        from graphc.gradient import grad_not_implemented
        return [grad_not_implemented(self, i, x) for i, x in enumerate(inputs)]

    def connection_pattern(self, node):
        """[[input i connected to output j]]: default all connected."""
        return [[True] * len(node.outputs) for _ in node.inputs]

    def do_constant_folding(self, node):
        return True


# --------------------------------------------------------------------------- graph walks

def io_toposort(inputs: Iterable[Variable], outputs: Iterable[Variable]) -> List[Apply]:
    """Apply nodes between ``inputs`` and ``outputs`` in topological order (iterative DFS)."""
    stop = set(inputs)
    return post_order(outputs, lambda v: v.owner is None or v in stop)


def post_order(outputs: Iterable[Variable], is_leaf) -> List[Apply]:
    """Producers of ``outputs`` in topological order, not entering variables for which
    ``is_leaf(v)`` holds (graph inputs, or nodes already known to the caller)."""
    order: List[Apply] = []
    seen = set()
    for out in outputs:
        if is_leaf(out) or out.owner in seen:
            continue
        stack = [(out.owner, 0)]
        seen.add(out.owner)
        while stack:
            node, i = stack[-1]
            if i < len(node.inputs):
                stack[-1] = (node, i + 1)
                v = node.inputs[i]
                if not is_leaf(v) and v.owner not in seen:
                    seen.add(v.owner)
                    stack.append((v.owner, 0))
            else:
                stack.pop()
                order.append(node)
    return order


def ancestors(outputs: Iterable[Variable], blockers: Iterable[Variable] = ()) -> List[Variable]:
    block = set(blockers)
    seen, out, stack = set(), [], list(outputs)
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        out.append(v)
        if v.owner is not None and v not in block:
            stack.extend(reversed(v.owner.inputs))
    return out


def graph_inputs(outputs: Iterable[Variable], blockers: Iterable[Variable] = ()) -> List[Variable]:
    block = set(blockers)
    return [v for v in ancestors(outputs, block) if v.owner is None or v in block]


def variables_between(inputs, outputs) -> List[Variable]:
    nodes = io_toposort(inputs, outputs)
    seen = list(inputs)
    for n in nodes:
        seen.extend(n.inputs)
        seen.extend(n.outputs)
    return list(dict.fromkeys(seen))


def stands_in(old: Variable, new: Variable) -> bool:
    """Can ``new`` replace ``old`` as an input without changing what make_node would build
    on it? True for old itself and for another graph input of the same class and type (a
    root variable carries nothing else a make_node could read; a constant carries data)."""
    return new is old or (new.owner is None and old.owner is None and
                          type(new) is type(old) and not isinstance(old, Constant) and
                          new.type == old.type)


def rebuild(node: Apply, new_inputs, exact: set) -> Apply:
    """``node`` applied to ``new_inputs``. ``exact``: the variables known to stand for
    their originals unchanged (see stands_in); when every new input is one, the node is
    copied as it is (its outputs join ``exact``), else make_node runs again on the new
    inputs, which may infer other output types from them. Copying skips make_node's type
    inference, the bulk of cloning a large graph."""
    if all(a in exact for a in new_inputs):
        new = Apply(node.op, new_inputs, [o.clone() for o in node.outputs],
                    getattr(node.tag, "trace", []))
        exact.update(new.outputs)
        return new
    return node.clone_with_new_inputs(new_inputs, strict=False)


def clone_replace(outputs: Sequence[Variable], replace: Optional[dict] = None,
                  copy_inputs: bool = False) -> List[Variable]:
    """Clone the graph of ``outputs``, substituting ``replace`` (old var -> new var).

    Inputs (and constants) are shared with the original unless ``copy_inputs``.
    Returns the cloned outputs; the original graph is untouched.
    """
    memo: Dict[Variable, Variable] = {}
    for old, new in (replace or {}).items():
        memo[old] = new
    blockers = list(memo)
    exact = {new for old, new in memo.items() if stands_in(old, new)}
    for node in io_toposort(blockers, outputs):
        for v in node.inputs:
            if v not in memo:
                memo[v] = v.clone() if (copy_inputs and not isinstance(v, Constant)) else v
                exact.add(memo[v])
        new_node = rebuild(node, [memo[v] for v in node.inputs], exact)
        for old, new in zip(node.outputs, new_node.outputs):
            if new.name is None:
                new.name = old.name
            memo.setdefault(old, new)
    result = []
    for o in outputs:
        if o not in memo:
            memo[o] = o.clone() if (copy_inputs and o.owner is None and not isinstance(o, Constant)) else o
        result.append(memo[o])
    return result


def clone_get_equiv(outputs, replace=None):
    """Like clone_replace but also return the memo (old -> new) of every variable."""
    memo: Dict[Variable, Variable] = dict(replace or {})
    exact = {new for old, new in memo.items() if stands_in(old, new)}
    for node in io_toposort(list(memo), outputs):
        ins = []
        for v in node.inputs:
            nv = memo.get(v)
            if nv is None:              # outside the replaced part: shared as it is
                nv = v
                exact.add(v)
            ins.append(nv)
        new_node = rebuild(node, ins, exact)
        for old, new in zip(node.outputs, new_node.outputs):
            if new.name is None:
                new.name = old.name
            memo[old] = new
    return [memo.get(o, o) for o in outputs], memo


def is_in_ancestors(node_or_var, target) -> bool:
    return target in ancestors([node_or_var])
