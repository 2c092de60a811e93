"""Readable views of graphs: ``debugprint`` (text), ``pydotprint`` (DOT/SVG), ``pp``,
and the ``Print`` op that prints a value at run time."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import List


from graphc.graph.basic import Apply, Constant, Op, Variable, io_toposort


def _outputs_of(obj):
    """(outputs, fgraph-or-None, profile) for a variable, list, Function or FunctionGraph."""
    from graphc.compile.function import Function
    from graphc.graph.fg import FunctionGraph
    if isinstance(obj, Function):
        return list(obj.maker.fgraph.outputs), obj.maker.fgraph
    if isinstance(obj, FunctionGraph):
        return list(obj.outputs), obj
    if isinstance(obj, Variable):
        return [obj], None
    if isinstance(obj, Apply):
        return list(obj.outputs), None
    if isinstance(obj, (list, tuple)):
        outs = []
        for o in obj:
            outs.extend(_outputs_of(o)[0])
        return outs, None
    raise TypeError(f"debugprint: cannot print {type(obj).__name__}")


def _op_label(node):
    inner = getattr(node.op, "inner_str", None)
    return str(node.op) if inner is None else f"{node.op} [{inner()}]"


def debugprint(obj, depth=-1, print_type=False, file=None, ids="CHAR", done=None,
               stop_on_name=False):
    """Print the graph of ``obj`` as an indented tree; shared subtrees are shown once
    and then referred to by their id.  Fused nodes show their inner expression.
    Returns the text (and writes it to ``file``; ``file='str'`` only returns it)."""
    outputs, fgraph = _outputs_of(obj)
    names = {}
    lines: List[str] = []
    done = set() if done is None else done

    def ident(node):
        if node not in names:
            k = len(names)
            s = ""
            while True:
                s = chr(ord("A") + k % 26) + s
                k = k // 26 - 1
                if k < 0:
                    break
            names[node] = s if ids == "CHAR" else str(len(names))
        return names[node]

    def vlabel(v):
        t = f" <{v.type}>" if print_type else ""
        if isinstance(v, Constant):
            return f"{v}{t}"
        if v.owner is None:
            kind = "shared " if hasattr(v, "container") else ""
            return f"{kind}{v.name or '<unnamed input>'}{t}"
        return None

    def rec(v, prefix, d):
        lab = vlabel(v)
        if lab is not None:
            lines.append(f"{prefix}{lab}")
            return
        node = v.owner
        idx = f".{v.index}" if len(node.outputs) > 1 else ""
        nm = f" '{v.name}'" if v.name else ""
        t = f" <{v.type}>" if print_type else ""
        if node in done:
            lines.append(f"{prefix}{_op_label(node)}{idx} id={ident(node)}{nm}{t} (see above)")
            return
        done.add(node)
        lines.append(f"{prefix}{_op_label(node)}{idx} id={ident(node)}{nm}{t}")
        if d == 1 or (stop_on_name and v.name and prefix):   # depth=1: this node only
            return
        for inp in node.inputs:
            rec(inp, prefix.replace("|", " ").replace("-", " ") + " |", d - 1)

    updates = []
    if fgraph is not None and hasattr(obj, "update_targets"):
        # a compiled function: its outputs, then each update's graph under a header
        updates = list(zip(obj.update_targets, fgraph.outputs[obj.n_out:]))
        outputs = outputs[:obj.n_out]
    for o in outputs:
        rec(o, "", depth)
    for var, upd in updates:
        lines.append(f"update of {var.name or var}:")
        rec(upd, " ", depth)
    text = "\n".join(lines)
    if file == "str":
        return text
    print(text, file=file or sys.stdout)
    return text


def pp(var) -> str:
    """A one-line formula for ``var``."""
    def rec(v, d=0):
        if isinstance(v, Constant):
            return str(v)
        if v.owner is None:
            return v.name or "?"
        if d > 50:
            return "..."
        args = ", ".join(rec(i, d + 1) for i in v.owner.inputs)
        return f"{v.owner.op}({args})"
    return rec(var)


def to_dot(obj) -> str:
    """The graph as Graphviz DOT text: ops are boxes, variables ellipses."""
    outputs, _ = _outputs_of(obj)
    ids = {}

    def vid(x):
        return ids.setdefault(x, f"n{len(ids)}")

    lines = ["digraph graphc {", "  rankdir=TB;", '  node [fontname="Helvetica"];']
    variables = set()
    for node in io_toposort([], outputs):
        lines.append(f'  {vid(node)} [shape=box, style=filled, fillcolor="#cfe2f3", '
                     f'label="{_esc(_op_label(node))}"];')
        for i, v in enumerate(node.inputs):
            variables.add(v)
            lines.append(f"  {vid(v)} -> {vid(node)} [label=\"{i}\"];")
        for o in node.outputs:
            variables.add(o)
            lines.append(f"  {vid(node)} -> {vid(o)};")
    for v in set(outputs) | variables:
        color = "#d9ead3" if v in outputs else ("#fff2cc" if v.owner is None else "white")
        label = str(v) if v.owner is None else (v.name or str(v.type))
        lines.append(f'  {vid(v)} [shape=ellipse, style=filled, fillcolor="{color}", '
                     f'label="{_esc(label)}\\n{_esc(str(v.type))}"];')
    lines.append("}")
    return "\n".join(lines)


def _esc(s):
    return s.replace("\\", "\\\\").replace('"', '\\"')


def pydotprint(fct, outfile=None, format="svg", **kwargs):
    """Write the graph of ``fct`` (function, variable or list) as DOT, SVG or PNG.
    SVG/PNG need Graphviz's ``dot`` program; DOT text needs nothing."""
    dot = to_dot(fct)
    if outfile is None:
        outfile = os.path.join(os.getcwd(), f"graphc_graph.{format}")
    if format == "dot":
        with open(outfile, "w") as f:
            f.write(dot)
        return outfile
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError(f"pydotprint(format={format!r}) needs Graphviz's 'dot' program "
                           f"(apt-get install graphviz); format='dot' writes DOT text without it")
    subprocess.run([exe, f"-T{format}", "-o", outfile], input=dot.encode(), check=True)
    return outfile


class Print(Op):
    """Identity op that prints ``message`` and the value (or its attributes) when run."""

    __props__ = ("message", "attrs")
    view_map = {0: [0]}

    def __init__(self, message="", attrs=("__str__",), global_fn=None):
        self.message = message
        self.attrs = tuple(attrs)

    def make_node(self, x):
        from graphc.tensor.var import as_tensor_variable
        x = as_tensor_variable(x)
        return Apply(self, [x], [x.type()])

    def perform(self, node, inputs, out):
        x = inputs[0]
        for a in self.attrs:
            v = getattr(x, a)
            print(self.message, a, "=", v() if callable(v) else v)
        out[0][0] = x

    def infer_shape(self, node, shapes):
        return shapes

    def L_op(self, inputs, outputs, grads):
        return grads

    def do_constant_folding(self, node):
        return False


def profile_report(fn) -> str:
    """The per-op profile of a function compiled with profile=True."""
    if fn.profile is None:
        raise ValueError("compile the function with profile=True (or GRAPHC_FLAGS=profile=True)")
    return fn.profile.report()
