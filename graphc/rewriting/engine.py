"""The rewrite engine: declarative patterns, indexed dispatch, a bounded worklist.

A rule is a pattern that reads like algebra and a small action::

    Rule("exp_log", P("exp", P("log", "x")), "x")                 # exp(log x) -> x
    Rule("mul_one", P("mul", "x", C(1)), lambda fg, node, b: fit(node.out, b["x"]))

Pattern grammar::

    pattern := str               a variable; the same name twice must be the same variable
                                 ('_' matches anything and binds nothing)
             | C(value)          a constant whose elements all equal value (through DimShuffle)
             | P(op, *patterns, bind=name, when=pred)
                                 (no patterns: any inputs; a trailing ... : a prefix of them)
    op      := 'exp'             an Elemwise whose scalar op has that name
             | OpClass           a node whose op is exactly of that class
             | op_instance       a node whose op equals it
             | (op, op, ...)     any of them

Commutative scalar ops (add, mul, maximum, ...) match their two arguments in either order.
An action gets ``(fgraph, node, bindings)`` and returns None to decline, a variable that
replaces the node's (single) output, a list with one replacement (or None) per output, or a
dict {old variable: new variable}; a string right-hand side names the binding to return.

``run_rules`` applies a RuleSet to a FunctionGraph with a worklist: nodes are visited in
topological order; after a rewrite only the new nodes and the clients of the replaced
variables (two levels up, the depth of our patterns) are visited again, so a node is
re-examined only when its neighbourhood changed (the memo).  The number of rewrites per
pass is bounded (``max_rewrites``), so a pair of rules that undo each other cannot loop.
"""
from __future__ import annotations

import warnings
from collections import deque
from typing import Callable, Dict, List, Optional, Union

import numpy as np

from graphc.configdefaults import config
from graphc.graph.basic import Constant, Variable
from graphc.graph.fg import OUTPUT
from graphc.tensor.elemwise import Elemwise

COMMUTATIVE = frozenset({"add", "mul", "maximum", "minimum", "eq", "neq", "and", "or", "xor"})


class RewriteWarning(UserWarning):
    """A rule raised while rewriting; the rewrite was skipped (tests turn this into an error)."""


class C:
    """Pattern leaf: a constant (possibly broadcast by DimShuffle) with all elements == value."""

    __slots__ = ("value", "bind")

    def __init__(self, value, bind=None):
        self.value, self.bind = value, bind

    def __repr__(self):
        return f"C({self.value})"


class P:
    """Pattern node: ``P(op, *args, bind=None, when=None)`` (see the module docstring)."""

    __slots__ = ("op", "args", "bind", "when", "_keys", "_names", "_classes", "_insts")

    def __init__(self, op, *args, bind: str = None, when: Callable = None):
        self.op, self.args, self.bind, self.when = op, args, bind, when
        ops = op if isinstance(op, tuple) else (op,)
        self._names = frozenset(o for o in ops if isinstance(o, str))
        self._classes = tuple(o for o in ops if isinstance(o, type))
        self._insts = tuple(o for o in ops if not isinstance(o, (str, type)))
        self._keys = tuple(_pattern_key(o) for o in ops)

    def op_matches(self, op) -> bool:
        t = type(op)
        if t is Elemwise and op.scalar_op.name in self._names:
            return True
        return t in self._classes or any(op == i for i in self._insts)

    def __repr__(self):
        name = self.op if isinstance(self.op, str) else getattr(self.op, "__name__", self.op)
        return f"{name}({', '.join(map(repr, self.args))})"


def _pattern_key(o):
    if isinstance(o, str):
        return ("ew", o)
    if isinstance(o, type):
        return o
    return node_key(o)


def node_key(op):
    """Dispatch key of an op: ('ew', scalar name) for Elemwise, else its class."""
    if type(op) is Elemwise:
        return ("ew", op.scalar_op.name)
    return type(op)


# --------------------------------------------------------------------------- matching
def match(pat, var: Variable, b: dict) -> bool:
    if isinstance(pat, str):
        if pat == "_":
            return True
        prev = b.get(pat)
        if prev is None:
            b[pat] = var
            return True
        return prev is var
    if isinstance(pat, C):
        v = const_value(var)
        if v is None or not _equal_value(v, pat.value):
            return False
        if pat.bind:
            b[pat.bind] = var
        return True
    node = var.owner
    if node is None or not pat.op_matches(node.op):
        return False
    args = pat.args
    if args and args[-1] is Ellipsis:       # P(op, first, ...): a prefix of the inputs
        args = args[:-1]
        if len(args) > len(node.inputs):
            return False
        for a, v in zip(args, node.inputs):
            if not match(a, v, b):
                return False
    elif args:
        if len(args) != len(node.inputs):
            return False
        if len(args) == 2 and isinstance(pat.op, str) and pat.op in COMMUTATIVE:
            trial = dict(b)
            if not (match(args[0], node.inputs[0], trial) and match(args[1], node.inputs[1], trial)):
                trial = dict(b)
                if not (match(args[0], node.inputs[1], trial) and
                        match(args[1], node.inputs[0], trial)):
                    return False
            b.clear()
            b.update(trial)
        else:
            for a, v in zip(args, node.inputs):
                if not match(a, v, b):
                    return False
    if pat.bind:
        b[pat.bind] = var
    if pat.when is not None and not pat.when(var, b):
        return False
    return True


def _equal_value(v, target) -> bool:
    try:
        return bool(v == target)
    except Exception:   # pragma: no cover - exotic values
        return False


def const_value(var):
    """The scalar value of a constant whose elements are all equal (looking through
    DimShuffle, which only broadcasts), else None."""
    from graphc.tensor.elemwise import DimShuffle
    while var.owner is not None and isinstance(var.owner.op, DimShuffle):
        var = var.owner.inputs[0]
    if not isinstance(var, Constant):
        return None
    a = np.asarray(var.data)
    if a.size == 0 or a.dtype.kind not in "biuf":
        return None
    first = a.reshape(-1)[0]
    if a.size > 1 and not np.all(a == first):
        return None
    return first.item()


# --------------------------------------------------------------------------- rules
class Rule:
    """A named pattern with an action (or the name of the binding that replaces the node)."""

    __slots__ = ("name", "pattern", "action")

    def __init__(self, name: str, pattern: P, action: Union[str, Callable]):
        self.name, self.pattern, self.action = name, pattern, action

    def keys(self):
        return self.pattern._keys

    def apply(self, fgraph, node):
        b: dict = {}
        if not match(self.pattern, node.outputs[0], b):
            return None
        if isinstance(self.action, str):
            return fit_or_fill(node.outputs[0], b[self.action], node.inputs)
        return self.action(fgraph, node, b)

    def __repr__(self):
        return f"Rule({self.name})"


class NodeRule(Rule):
    """A rule that looks at every node (constant folding): the action alone decides."""

    def __init__(self, name, action):
        super().__init__(name, None, action)

    def keys(self):
        return ("*",)

    def apply(self, fgraph, node):
        return self.action(fgraph, node, {})


class RuleSet:
    """Rules indexed by the op of their root pattern (the cheap reject)."""

    def __init__(self, rules):
        self.rules = list(rules)
        self.index: Dict[object, List[Rule]] = {}
        self.any: List[Rule] = []
        names = set()
        for r in self.rules:
            if r.name in names:
                raise ValueError(f"two rules named {r.name!r}")
            names.add(r.name)
            for k in r.keys():
                (self.any if k == "*" else self.index.setdefault(k, [])).append(r)
        self.index = {k: tuple(v) for k, v in self.index.items()}
        self.any = tuple(self.any)

    def __add__(self, other):
        # the pipeline adds the same rule sets on every compile (canonicalize's as the
        # follow-up of each later pass): the sum is indexed once and kept
        key = (id(self), id(other))
        hit = _SUMS.get(key)
        if hit is not None and hit[0] is self and hit[1] is other and \
                hit[2] == (tuple(self.rules), tuple(other.rules)):
            return hit[3]
        total = RuleSet(self.rules + other.rules)
        if len(_SUMS) >= 64:              # sums of ad-hoc rule sets: keep the cache small
            _SUMS.clear()
        _SUMS[key] = (self, other, (tuple(self.rules), tuple(other.rules)), total)
        return total

    def for_node(self, node):
        found = self.index.get(node_key(node.op), ())
        return found + self.any if self.any else found

    def names(self):
        return [r.name for r in self.rules]


_SUMS: Dict[tuple, tuple] = {}      # (id a, id b) -> (a, b, their rules, a + b)


# --------------------------------------------------------------------------- the worklist
class Stats:
    def __init__(self):
        self.applied: Dict[str, int] = {}
        self.tries = 0

    def total(self):
        return sum(self.applied.values())


def run_rules(fgraph, ruleset: RuleSet, pass_name: str, max_rewrites: Optional[int] = None,
              excluded=frozenset(), followup: Optional[RuleSet] = None) -> Stats:
    """Apply ``ruleset`` to ``fgraph`` until nothing matches or the rewrite budget is spent.

    ``followup`` rules (canonicalize's, in later passes) are tried only on the nodes a
    rewrite of this pass created or touched: the rest of the graph is already canonical."""
    stats = Stats()
    order = fgraph.toposort()
    budget = max_rewrites if max_rewrites is not None else 8 * len(order) + 200
    queue = deque(order)
    queued = set(order)
    touched_rules = ruleset + followup if followup is not None else ruleset
    revisit = set()
    verbose = config.optimizer_verbose
    while queue:
        node = queue.popleft()
        queued.discard(node)
        if node not in fgraph.apply_nodes:
            continue
        rules = touched_rules if node in revisit else ruleset
        for rule in rules.for_node(node):
            if rule.name in excluded:
                continue
            stats.tries += 1
            try:
                result = rule.apply(fgraph, node)
            except Exception as e:   # a broken rule must not break compilation
                if config.debug:
                    raise
                warnings.warn(f"rewrite {rule.name} failed on {node}: {type(e).__name__}: {e}",
                              RewriteWarning, stacklevel=2)
                continue
            if result is None:
                continue
            pairs = _pairs(node, result)
            if not pairs:
                continue
            touched = replace_pairs(fgraph, pairs, f"{pass_name}.{rule.name}", node, verbose)
            if touched is None:
                continue
            stats.applied[rule.name] = stats.applied.get(rule.name, 0) + 1
            for n in touched:
                revisit.add(n)
                if n not in queued:
                    queued.add(n)
                    queue.append(n)
            budget -= 1
            if budget <= 0:
                warnings.warn(f"rewrite pass {pass_name} stopped after its rewrite budget "
                              f"(rules that undo each other?): {stats.applied}", RewriteWarning)
                return stats
            break
    return stats


def _pairs(node, result):
    if isinstance(result, Variable):
        if len(node.outputs) != 1:
            raise ValueError(f"a rule returned one variable for {len(node.outputs)}-output {node}")
        return [(node.outputs[0], result)] if result is not node.outputs[0] else []
    if isinstance(result, dict):
        return [(o, n) for o, n in result.items() if n is not None and o is not n]
    return [(o, n) for o, n in zip(node.outputs, result) if n is not None and o is not n]


def replace_pairs(fgraph, pairs, reason, node=None, verbose=False):
    """Replace each (old, new); returns the nodes to revisit, or None when a replacement
    would not type-check (the rewrite is then skipped, leaving the graph as it was)."""
    fixed = []
    for old, new in pairs:
        if old not in fgraph.variables:
            continue
        new = fit(old, new)
        if new is None:
            return None
        fixed.append((old, new))
    if not fixed:
        return None
    touched = []
    trace = getattr(node.tag, "trace", None) if node is not None else None
    for old, new in fixed:
        if verbose:
            from graphc.printing import pp
            print(f"rewrite {reason}: {_short(pp(old))}  ->  {_short(pp(new))}")
        fresh = fgraph.new_nodes(new)
        if trace is not None:       # errors in new nodes point at the user's line
            for n in fresh:
                n.tag.trace = trace
        fgraph.replace(old, new, reason)
        touched.extend(fresh)
    # the clients of the new variables (and theirs) may match now
    for _, new in fixed:
        for c, _i in fgraph.clients.get(new, ()):
            if c != OUTPUT:
                touched.append(c)
                for o in c.outputs:
                    touched.extend(cc for cc, _ in fgraph.clients.get(o, ()) if cc != OUTPUT)
    return touched


def _short(s, n=160):
    return s if len(s) <= n else s[:n - 3] + "..."


# --------------------------------------------------------------------------- helpers for actions
def fit(old: Variable, new: Variable) -> Optional[Variable]:
    """``new`` adjusted to stand in for ``old``: cast to old's dtype, padded to old's ndim;
    None when new could be smaller than old (a broadcast dimension where old has none)."""
    from graphc.tensor.basic import cast
    from graphc.tensor.type import TensorType
    if new is old or new.type == old.type:
        return new
    if not isinstance(new.type, TensorType) or not isinstance(old.type, TensorType):
        return None
    if new.ndim > old.ndim:
        return None
    if new.dtype != old.dtype:
        new = cast(new, old.dtype)
    if new.ndim < old.ndim:
        new = new.dimshuffle(["x"] * (old.ndim - new.ndim) + list(range(new.ndim)))
    for so, sn in zip(old.type.shape, new.type.shape):
        if sn == 1 and so != 1:
            return None
        if so is not None and sn is not None and so != sn:
            return None
    return new


def in_dtype_of(node, x: Variable) -> Variable:
    """x cast to the output dtype of ``node``, so that a rewrite computes in the dtype the
    node it replaces computed in (uint8 * -1 is int16 [-1, -2]: neg in uint8 then a cast
    would give [255, 254]).  fit() only casts the result, which is too late for ints."""
    from graphc.tensor.basic import cast
    dtype = node.outputs[0].dtype
    return x if x.dtype == dtype else cast(x, dtype)


def fit_or_fill(old: Variable, new: Variable, shape_refs=()) -> Optional[Variable]:
    """fit(old, new), or when new is smaller (broadcast), new filled to the shape of one of
    ``shape_refs`` (an operand of the replaced node that gives it its shape)."""
    r = fit(old, new)
    if r is not None:
        return r
    from graphc.tensor.basic import second
    for ref in shape_refs:
        if ref is not new and ref.ndim == old.ndim and \
                ref.type.broadcastable == old.type.broadcastable:
            return fit(old, second(ref, new))
    return None


def scalar_of(var) -> Optional[Variable]:
    """A 0-d variable equal to ``var`` when var is a broadcast scalar (all dims size 1)."""
    from graphc.tensor.elemwise import DimShuffle
    from graphc.tensor.var import constant
    if var.ndim == 0:
        return var
    if not all(var.type.broadcastable):
        return None
    if isinstance(var, Constant):
        return constant(np.asarray(var.data).reshape(()))
    node = var.owner
    if node is not None and isinstance(node.op, DimShuffle) and node.inputs[0].ndim == 0:
        return node.inputs[0]
    return None
