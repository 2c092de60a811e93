"""The persistent cache of optimized graphs (graphc/compile/graph_cache.py): a hit loads the
graph the passes made, in this process and in another one (other string hash seed); a changed
graph, flag or mode misses; a damaged entry is rebuilt; shared variables stay the caller's
own; loops (scan) and their inner graphs are cached too; errors still name the user's line."""
import glob
import hashlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc.backend.llvm import jit
from graphc.compile import graph_cache
from graphc.graph.basic import Variable, ancestors
from graphc.scan_module.op import Scan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cachedir(tmp_path):
    old = jit._compiledir_override
    jit.set_compiledir(tmp_path)
    yield tmp_path
    jit.set_compiledir(old)


def _delta(before):
    return {k: graph_cache.stats[k] - before[k] for k in before}


def _function(*args, **kwargs):
    """graphc.function from this one line (the call site, recorded on the nodes a compile
    creates, is part of the key): returns the function and the change of the cache stats."""
    before = dict(graph_cache.stats)
    f = graphc.function(*args, **kwargs)
    return f, _delta(before)


def _graphs(d):
    return glob.glob(os.path.join(str(d), "*.graph"))


def _ops(f):
    return [str(n.op) for n in f.maker.fgraph.toposort()]


def test_a_second_compile_loads_the_optimized_graph(cachedir):
    x = T.fvector("x")
    y = T.tanh(x * 2 + 1) * T.exp(-x)
    f1, d = _function([x], y)
    assert d["misses"] == 1 and d["stored"] == 1
    f2, d = _function([x], y)
    assert d["hits"] == 1 and d["misses"] == 0 and d["stored"] == 0
    assert _ops(f1) == _ops(f2) and len(_graphs(cachedir)) == 1
    xv = np.linspace(-2, 2, 11, dtype="float32")
    for f in (f1, f2):
        np.testing.assert_allclose(f(xv), np.tanh(xv * 2 + 1) * np.exp(-xv), rtol=1e-5)


def test_a_different_graph_flag_or_mode_misses(cachedir):
    x, xd = T.fvector("x"), T.dvector("x")
    y = x * 2 + 1
    _function([x], y)
    changed = [_function([x], x * 3 + 1),                   # another constant
               _function([x], x * 2 - 1),                   # another op
               _function([xd], xd * 2 + 1),                 # another input type
               _function([x], y, mode=graphc.Mode(optimizer="fast_compile"))]
    with graphc.config.change_flags(optimizer_excluding="fusion"):
        changed.append(_function([x], y))                  # another flag
    assert not any("Fused" in op for op in _ops(changed[-1][0]))
    assert all(d["hits"] == 0 and d["misses"] == 1 for _, d in changed)
    assert _function([x], y)[1]["hits"] == 1
    # the nodes record the line that made them (errors name it): built elsewhere, a miss
    assert _function([x], x * 2 + 1)[1]["misses"] == 1
    before = dict(graph_cache.stats)
    graphc.function([x], y)                 # another call site of function(): a miss
    assert _delta(before)["misses"] == 1 and len(_graphs(cachedir)) == 8


def test_nothing_is_cached_when_off_or_when_the_passes_must_run(cachedir, capsys):
    x = T.fvector("x")
    before = dict(graph_cache.stats)
    with graphc.config.change_flags(graph_cache=False):
        _function([x], x * 2 + 1)
    with graphc.config.change_flags(optimizer_verbose=True):
        _function([x], x * 2 + 1)
        _function([x], x * 2 + 1)
    capsys.readouterr()                 # what verbose printed (tested elsewhere)
    assert _delta(before) == {k: 0 for k in before} and not _graphs(cachedir)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "not a graph"])
def test_a_damaged_entry_is_rebuilt(cachedir, damage):
    x = T.fmatrix("x")
    y = T.exp(x).sum(axis=1) + 1
    _function([x], y)
    (path,) = _graphs(cachedir)
    with open(path, "rb") as f:
        blob = bytearray(f.read())
    if damage == "flipped byte":
        blob[-5] ^= 0xFF
    elif damage == "truncated":
        blob = blob[:len(blob) // 2]
    else:       # a sound header around a payload that is not a graph of these inputs
        payload = pickle.dumps(("nodes", "not a FunctionGraph"))
        blob = graph_cache._HEADER.pack(graph_cache._MAGIC, len(payload),
                                        hashlib.sha256(payload).digest()) + payload
    with open(path, "wb") as f:
        f.write(blob)
    f, d = _function([x], y)
    assert d["rebuilt_corrupt"] == 1 and d["stored"] == 1 and d["hits"] == 0
    xv = np.arange(6, dtype="float32").reshape(2, 3) / 6
    np.testing.assert_allclose(f(xv), np.exp(xv).sum(axis=1) + 1, rtol=1e-5)
    assert _function([x], y)[1]["hits"] == 1


def test_shared_variables_and_updates_stay_the_callers(cachedir):
    w = graphc.shared(np.array([1.0, -2.0, 0.5], "float32"), name="w")
    x = T.fvector("x")
    cost = ((w * x) ** 2).sum()
    upd = [(w, w - 0.1 * graphc.grad(cost, w))]
    f1, _ = _function([x], cost, updates=upd)
    f2, d = _function([x], cost, updates=upd)
    assert d["hits"] == 1
    assert any(v is w for v in f2.maker.fgraph.inputs)
    xv = np.array([1.0, 2.0, 3.0], "float32")
    for f in (f2, f1, f2):                  # both functions read and update the same w
        w0 = w.get_value().copy()
        np.testing.assert_allclose(f(xv), ((w0 * xv) ** 2).sum(), rtol=1e-6)
        np.testing.assert_allclose(w.get_value(), w0 - 0.1 * 2 * w0 * xv ** 2, rtol=1e-6)


def test_errors_of_a_loaded_graph_name_the_users_line(cachedir):
    x, y = T.fmatrix("x"), T.fmatrix("y")
    z = x + y
    _function([x, y], z)
    f, d = _function([x, y], z)
    assert d["hits"] == 1
    with pytest.raises(ValueError) as e:
        f(np.ones((2, 3), "float32"), np.ones((3, 2), "float32"))
    assert "test_graph_cache.py" in str(e.value) and "z = x + y" in str(e.value)


def test_a_loaded_variable_gets_a_number_of_this_process():
    v = T.fvector("v")
    w = pickle.loads(pickle.dumps(v))
    assert w.name == "v" and w.type == v.type and w.auto_name != v.auto_name
    assert int(w.auto_name[5:]) > int(v.auto_name[5:])


def test_a_constant_loads_without_its_cached_signature_in_a_fresh_process():
    script = ("import pickle, sys; import graphc; "
              "c = pickle.loads(sys.stdin.buffer.read()); print(c.signature() is not None)")
    c = T.constant(np.arange(40, dtype="float32"))
    sig = c.signature()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get(
        "PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(c), env=env,
                       capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == b"True", r.stderr[-2000:]
    assert pickle.loads(pickle.dumps(c)).signature() == sig    # content hash: same everywhere


_SCRIPT = r"""
import json, sys
import numpy as np
import graphc, graphc.tensor as T
from graphc.backend.llvm import jit
from graphc.compile import graph_cache
jit.set_compiledir(sys.argv[1])
rng = np.random.default_rng(0)
W = graphc.shared((rng.standard_normal((4, 4)) * 0.5).astype("float32"), name="W")
xs, h0 = T.ftensor3("xs"), T.fmatrix("h0")
hs, _ = graphc.scan(lambda x, h: T.tanh(T.dot(x, W) + T.dot(h, W)), sequences=xs,
                    outputs_info=h0)
cost = (hs[-1] ** 2).sum() + T.constant(np.arange(40, dtype="float32")).sum() * 0
g = graphc.grad(cost, W)
f = graphc.function([xs, h0], [cost, g], updates=[(W, W - 0.01 * g)])
xv = rng.standard_normal((5, 2, 4)).astype("float32")
c, gv = f(xv, np.zeros((2, 4), "float32"))
print(json.dumps({"stats": graph_cache.stats, "cost": float(c), "g": np.asarray(gv).tolist(),
                  "W": W.get_value().tolist(), "xs": xv.tolist()}))
"""


def test_another_process_hits_for_the_loop_and_its_inner_graphs(tmp_path):
    """Two processes with different string hash seeds: the second one loads every graph
    the first one optimized (the outer graph and the scan's inner forward and backward
    graphs) and computes the same numbers, which match numpy."""
    runs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed,
                   PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
        r = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    first, second = runs
    n = first["stats"]["stored"]
    assert n >= 2 and first["stats"]["hits"] == 0
    assert second["stats"]["hits"] == n and second["stats"]["misses"] == 0
    assert second["stats"]["stored"] == 0 and second["stats"]["rebuilt_corrupt"] == 0
    # the inner graphs' keys derive from the loaded outer graph's (no pickle of their own)
    assert first["stats"]["derived"] == second["stats"]["derived"] == n - 1
    for k in ("cost", "g", "W"):
        np.testing.assert_allclose(second[k], first[k], rtol=1e-6)
    # numpy: h_t = tanh(x_t W + h_{t-1} W), cost = sum(h_T^2)
    W0 = (np.random.default_rng(0).standard_normal((4, 4)) * 0.5).astype("float32")
    h = np.zeros((2, 4))
    for x in np.asarray(first["xs"]):
        h = np.tanh(x @ W0 + h @ W0)
    np.testing.assert_allclose(first["cost"], (h ** 2).sum(), rtol=1e-4)
    np.testing.assert_allclose(first["W"], W0 - 0.01 * np.asarray(first["g"]), rtol=1e-5)


def test_scan_op_round_trip_keeps_equality_and_hash():
    xs = T.fmatrix("xs")
    hs, _ = graphc.scan(lambda x, h: h + x, sequences=xs, outputs_info=T.zeros((3,)))
    (op,) = {v.owner.op for v in ancestors([hs])
             if v.owner is not None and isinstance(v.owner.op, Scan)}
    op.__dict__["_compiled"] = {"forward": object()}        # compiled state is not pickled
    copy = pickle.loads(pickle.dumps(op))
    assert copy == op and hash(copy) == hash(op) and "_compiled" not in copy.__dict__
    del op.__dict__["_compiled"]
    assert isinstance(copy.inner_outputs[0], Variable)


def test_clear_cache_removes_the_graphs(cachedir):
    x = T.fvector("x")
    _function([x], x * 2 + 1)
    assert _graphs(cachedir)
    jit.clear_cache()
    assert not _graphs(cachedir)
    assert _function([x], x * 2 + 1)[1]["misses"] == 1


def test_inner_graph_keys_derive_from_the_loaded_loop(cachedir):
    """A loop loaded from the cache names its inner graph by where it came from: a second
    compile of the same graph hits for the inner graph without pickling it, two loops of one
    graph get different inner keys, and both compiles compute the numpy results."""
    xs = T.fmatrix("xs")
    a, _ = graphc.scan(lambda x, h: h * 0.5 + x, sequences=xs, outputs_info=T.zeros((3,)))
    b, _ = graphc.scan(lambda x, h: T.tanh(h + x), sequences=xs, outputs_info=T.zeros((3,)))
    xv = np.linspace(-1, 1, 12, dtype="float32").reshape(4, 3)
    ha, hb = np.zeros(3), np.zeros(3)
    want_a, want_b = [], []
    for x in xv:
        ha, hb = ha * 0.5 + x, np.tanh(hb + x)
        want_a.append(ha)
        want_b.append(hb)
    deltas = []
    for _ in range(2):
        before = dict(graph_cache.stats)
        f = graphc.function([xs], [a, b])
        ra, rb = f(xv)                      # the inner graphs compile at the first call
        deltas.append(_delta(before))
        np.testing.assert_allclose(ra, want_a, rtol=1e-5)
        np.testing.assert_allclose(rb, want_b, rtol=1e-5)
        origins = [n.op._cache_origin for n in f.maker.fgraph.toposort()
                   if isinstance(n.op, Scan)]
        assert len(origins) == 2 and origins[0] != origins[1] and None not in origins
    first, second = deltas
    assert first["misses"] == 3 and first["stored"] == 3 and first["derived"] == 2
    assert second["hits"] == 3 and second["misses"] == 0 and second["derived"] == 2
    assert len(_graphs(cachedir)) == 3


def test_ifelse_branches_load_with_derived_keys(cachedir):
    from graphc.ifelse import ifelse
    c, x = T.fscalar("c"), T.fvector("x")
    y = ifelse(T.gt(c, 0), T.exp(x) * 2, T.log1p(x * x))
    xv = np.linspace(0, 2, 5, dtype="float32")
    for _ in range(2):
        before = dict(graph_cache.stats)
        f = graphc.function([c, x], y)
        np.testing.assert_allclose(f(np.float32(1), xv), np.exp(xv) * 2, rtol=1e-5)
        np.testing.assert_allclose(f(np.float32(-1), xv), np.log1p(xv * xv), rtol=1e-5)
        d = _delta(before)
        assert d["derived"] == 2 and d["hits"] + d["misses"] == 3
    assert d["hits"] == 3


def test_generated_code_is_compiled_once_and_loaded_from_the_compile_dir(cachedir, monkeypatch):
    """compile_source: the linker's and scan's generated Python, kept as marshalled code; a
    fresh process (emptied memo) loads it, a damaged entry is compiled again."""
    src = "def f(a):\n    return a * 3 + 1\n"
    compiled = []
    real = compile

    def counting(*a, **k):
        compiled.append(a[1])
        return real(*a, **k)
    monkeypatch.setattr("builtins.compile", counting)
    ns = {}
    exec(graph_cache.compile_source(src, "<test code>"), ns)
    assert ns["f"](2) == 7 and compiled == ["<test code>"]
    entries = glob.glob(os.path.join(str(cachedir), "*.pycode"))
    assert len(entries) == 1
    monkeypatch.setattr(graph_cache, "_code", {})           # as in a fresh process
    ns = {}
    exec(graph_cache.compile_source(src, "<test code>"), ns)
    assert ns["f"](2) == 7 and len(compiled) == 1
    with open(entries[0], "r+b") as f:                      # damage the payload
        f.seek(-3, 2)
        f.write(b"\xff\xff\xff")
    monkeypatch.setattr(graph_cache, "_code", {})
    ns = {}
    exec(graph_cache.compile_source(src, "<test code>"), ns)
    assert ns["f"](2) == 7 and len(compiled) == 2
    # another file name (it shows in tracebacks) is another entry
    graph_cache.compile_source(src, "<other>")
    assert len(glob.glob(os.path.join(str(cachedir), "*.pycode"))) == 2 and len(compiled) == 3
    jit.clear_cache()
    assert not glob.glob(os.path.join(str(cachedir), "*.pycode"))
