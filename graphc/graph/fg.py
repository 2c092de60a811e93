"""FunctionGraph: a mutable container of one graph, for rewriting and linking.

It owns the set of apply nodes between ``inputs`` and ``outputs``, keeps ``clients`` (who
uses each variable), replaces variables, drops nodes that no output needs any more, and
gives a cached topological order.  Rewrites only ever go through ``replace``.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

from graphc.graph.basic import Apply, Variable, clone_get_equiv, io_toposort, post_order

OUTPUT = "output"   # the client "node" of a graph output


class FunctionGraph:
    def __init__(self, inputs: Sequence[Variable], outputs: Sequence[Variable], clone: bool = True):
        if clone:
            outs, memo = clone_get_equiv(list(outputs), {i: i.clone() for i in inputs})
            inputs = [memo[i] for i in inputs]
            outputs = outs
            self.equiv = memo
        else:
            self.equiv = None
        self.inputs: List[Variable] = list(inputs)
        self.outputs: List[Variable] = list(outputs)
        self.apply_nodes = set()
        self.variables = set()
        self.clients: Dict[Variable, List[Tuple[object, int]]] = {}
        self.version = 0
        self._order = None
        self._listeners: List[Callable] = []
        self._input_set = set(self.inputs)
        # extra "run b before a" constraints {a: {b, ...}} (the destroy handler's: every
        # reader of a buffer runs before the in-place op that overwrites it)
        self.orderings: Dict[Apply, set] = {}
        for v in self.inputs:
            self._add_var(v)
        for i, out in enumerate(self.outputs):
            self._import(out)
            self.clients[out].append((OUTPUT, i))

    # ----------------------------------------------------------------- bookkeeping
    def _add_var(self, v):
        if v not in self.variables:
            self.variables.add(v)
            self.clients.setdefault(v, [])

    def _import(self, var):
        # walk up only through nodes not yet in the graph: a rewrite that adds a few nodes
        # costs a few steps, not a walk of the whole graph
        for node in self.new_nodes(var):
            self.apply_nodes.add(node)
            for o in node.outputs:
                self._add_var(o)
            for i, inp in enumerate(node.inputs):
                self._add_var(inp)
                self.clients[inp].append((node, i))
        self._add_var(var)

    def new_nodes(self, var):
        """Producers of var not in the graph yet, in topological order (what replacing a
        variable by var would add)."""
        def known(v):
            return v.owner is None or v.owner in self.apply_nodes or v in self._input_set
        return post_order([var], known)

    def _prune(self, var):
        """Remove var's producer (recursively) if nothing uses its outputs any more."""
        stack = [var]
        while stack:
            v = stack.pop()
            node = v.owner
            if node is None or node not in self.apply_nodes or v in self.inputs:
                if not self.clients.get(v) and v.owner is None and v not in self.inputs:
                    self.variables.discard(v)
                    self.clients.pop(v, None)
                continue
            if any(self.clients.get(o) for o in node.outputs):
                continue
            self.apply_nodes.discard(node)
            for o in node.outputs:
                self.variables.discard(o)
                self.clients.pop(o, None)
            for i, inp in enumerate(node.inputs):
                cl = self.clients.get(inp)
                if cl is not None:
                    try:
                        cl.remove((node, i))
                    except ValueError:
                        pass
                stack.append(inp)

    def _changed(self):
        self.version += 1
        self._order = None

    # ----------------------------------------------------------------- public API
    def add_listener(self, fn: Callable):
        """fn(event, *args) is called on 'replace' (var, new_var, reason)."""
        self._listeners.append(fn)

    def replace(self, var: Variable, new_var: Variable, reason: str = None, verbose=False):
        if var is new_var:
            return
        if var.type != new_var.type:
            new_var = _filter_type(var, new_var, reason)
        if var not in self.variables:
            return
        self._import(new_var)
        for client, i in list(self.clients.get(var, [])):
            if client == OUTPUT:
                self.outputs[i] = new_var
            else:
                client.inputs[i] = new_var
            self.clients[new_var].append((client, i))
        self.clients[var] = []
        for fn in self._listeners:
            fn("replace", var, new_var, reason)
        self._prune(var)
        self._changed()

    def replace_all(self, pairs, reason=None):
        for var, new in pairs:
            self.replace(var, new, reason)

    def change_input(self, node, i, new_var, reason=None):
        if node == OUTPUT:
            old = self.outputs[i]
            self.outputs[i] = new_var
        else:
            old = node.inputs[i]
            node.inputs[i] = new_var
        self._import(new_var)
        self.clients[old].remove((node, i))
        self.clients[new_var].append((node, i))
        self._prune(old)
        self._changed()

    def toposort(self) -> List[Apply]:
        if self._order is None:
            self._order = io_toposort(self.inputs, self.outputs)
            if self.orderings:
                self._order = _constrained_order(self._order, self.orderings)
            # nodes can only have been pruned or added through replace(); keep the set exact
            self.apply_nodes = set(self._order)
        return self._order

    def clone(self):
        return FunctionGraph(self.inputs, self.outputs, clone=True)

    def check(self):
        """Consistency check of the bookkeeping (used in debug mode and tests)."""
        order = io_toposort(self.inputs, self.outputs)
        assert set(order) <= self.apply_nodes | set(order)
        for node in order:
            for i, v in enumerate(node.inputs):
                assert (node, i) in self.clients[v], f"missing client {node} of {v}"
                if v.owner is None and v not in self.inputs and not _is_constant(v):
                    raise ValueError(f"graph has an unlisted input {v}")

    def __str__(self):
        return f"FunctionGraph({', '.join(map(str, self.outputs))})"


def _constrained_order(order, extra):
    """A topological order of ``order``'s nodes that also runs extra[n] before n."""
    pos = set(order)
    done, out = set(), []
    for start in order:
        if start in done:
            continue
        stack = [(start, None)]
        active = {start}
        while stack:
            node, it = stack[-1]
            if it is None:
                deps = [v.owner for v in node.inputs if v.owner in pos]
                deps += [d for d in extra.get(node, ()) if d in pos]
                it = iter(deps)
                stack[-1] = (node, it)
            for d in it:
                if d not in done:
                    if d in active:
                        raise ValueError(f"ordering constraints form a cycle through {d}")
                    active.add(d)
                    stack.append((d, None))
                    break
            else:
                stack.pop()
                active.discard(node)
                done.add(node)
                out.append(node)
    return out


def _is_constant(v):
    from graphc.graph.basic import Constant
    return isinstance(v, Constant)


def _filter_type(var, new_var, reason):
    """Allow a replacement whose type is compatible (same dtype/ndim, more static info)."""
    conv = getattr(var.type, "convert_variable", None)
    if conv is not None:
        out = conv(new_var)
        if out is not None:
            return out
    raise TypeError(f"rewrite {reason!r} tried to replace {var} of type {var.type} "
                    f"by {new_var} of type {new_var.type}")
