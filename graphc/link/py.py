"""The numpy reference backend: each node runs its op's ``perform``.

Every other backend is tested against this one.  ``make_thunk_runner`` returns a closure
that runs the whole graph over preallocated storage cells (one ``[value]`` list per
variable), so the per-node cost is one Python call.
"""
from __future__ import annotations

import time


from graphc.graph.basic import Constant, format_trace
from graphc.tensor.elemwise import ShapeError, describe_values


class RuntimeGraphError(RuntimeError):
    """An op failed while running; the message names the op, its inputs and the user's line."""


class RuntimeValueError(RuntimeGraphError, ValueError):
    """An op's implementation raised a ValueError (mostly mismatched shapes): still a
    ValueError, whichever op (and so whichever mode) ran into it."""


def node_error(node, values, exc):
    if isinstance(exc, (ShapeError, RuntimeGraphError)):
        return exc
    desc = describe_values(values)
    msg = (f"{node.op} failed: {type(exc).__name__}: {exc}\n  inputs: {desc}\n"
           f"  created at:\n{format_trace(getattr(node.tag, 'trace', []))}")
    cls = RuntimeValueError if isinstance(exc, ValueError) else RuntimeGraphError
    return cls(msg)


def make_storage(fgraph, order):
    """One cell ``[value]`` per variable of the graph; constants hold their data."""
    storage = {v: [None] for v in fgraph.inputs}
    for node in order:
        for v in node.inputs:
            if v not in storage:
                storage[v] = [v.data] if isinstance(v, Constant) else [None]
        for o in node.outputs:
            storage[o] = [None]
    for o in fgraph.outputs:
        if o not in storage:
            storage[o] = [o.data] if isinstance(o, Constant) else [None]
    return storage


class PyLinker:
    name = "py"

    def link(self, fgraph, profile=None):
        """Storage cells for every variable and a ``run()`` that computes the outputs."""
        order = fgraph.toposort()
        storage = make_storage(fgraph, order)
        steps = []
        for node in order:
            steps.append((node.op.perform, node, [storage[i] for i in node.inputs],
                          [storage[o] for o in node.outputs]))

        if profile is None:
            def run():
                for perform, node, ins, outs in steps:
                    try:
                        perform(node, [c[0] for c in ins], outs)
                    except Exception as e:
                        raise node_error(node, [c[0] for c in ins], e) from e
        else:
            def run():
                for perform, node, ins, outs in steps:
                    t0 = time.perf_counter()
                    try:
                        perform(node, [c[0] for c in ins], outs)
                    except Exception as e:
                        raise node_error(node, [c[0] for c in ins], e) from e
                    profile.add(node, time.perf_counter() - t0)
        return storage, run


class Profile:
    """Per-op time accumulated over calls (``GRAPHC_FLAGS=profile=True``)."""

    def __init__(self, name):
        self.name = name
        self.calls = 0
        self.by_node = {}

    def add(self, node, dt):
        rec = self.by_node.setdefault(node, [0.0, 0])
        rec[0] += dt
        rec[1] += 1

    def report(self, top=20) -> str:
        total = sum(t for t, _ in self.by_node.values()) or 1e-12
        by_op = {}
        for node, (t, n) in self.by_node.items():
            key = str(node.op)
            r = by_op.setdefault(key, [0.0, 0])
            r[0] += t
            r[1] += n
        lines = [f"Profile of {self.name}: {self.calls} calls, {total * 1e3:.3f} ms in ops",
                 f"{'op':<50} {'total ms':>10} {'%':>6} {'calls':>8}"]
        for key, (t, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]:
            lines.append(f"{key[:50]:<50} {t * 1e3:10.3f} {100 * t / total:6.1f} {n:8d}")
        return "\n".join(lines)
