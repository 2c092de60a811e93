"""graphc.config (GRAPHC_FLAGS, change_flags, errors listing the choices, docs/flags.md in
sync) and graphc.printing (debugprint, pp, DOT/SVG export, Print, profiles)."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import graphc
import graphc.tensor as T
from graphc import config
from graphc.configdefaults import FLAGS
from graphc.printing import Print, debugprint, pp, profile_report, pydotprint, to_dot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_python(code, flags):
    env = dict(os.environ, GRAPHC_FLAGS=flags, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, cwd=REPO, timeout=120)


# --------------------------------------------------------------------------- config
def test_unknown_flag_lists_the_valid_flags():
    with pytest.raises(ValueError, match=r"unknown graphc flag 'floatx'.*floatX"):
        config.floatx
    with pytest.raises(ValueError, match="valid flags"):
        config.change_flags(no_such_flag=1).__enter__()


def test_bad_value_lists_the_choices():
    with pytest.raises(ValueError, match=r"floatX='float16'.*\['float64', 'float32'\]"):
        config.floatX = "float16"
    with pytest.raises(ValueError, match="choose one of"):
        with config.change_flags(mode="FASTEST"):
            pass
    with pytest.raises(ValueError, match="cannot parse as bool"):
        config.parse("profile=maybe")
    with pytest.raises(ValueError, match="name=value"):
        config.parse("floatX")


def test_change_flags_is_scoped_and_restores_on_errors():
    before = config.floatX
    with config.change_flags(floatX="float32"):
        assert config.floatX == "float32"
        assert T.vector().dtype == "float32"
        with graphc.change_flags(floatX="float64"):
            assert T.vector().dtype == "float64"
        assert config.floatX == "float32"
    assert config.floatX == before
    with pytest.raises(RuntimeError):
        with config.change_flags(floatX="float32", seed=7):
            raise RuntimeError()
    assert config.floatX == before and config.seed == 1234


def test_flags_are_typed():
    with config.change_flags(profile="true", seed="42", debug="1"):
        assert config.profile is True and config.seed == 42 and config.debug == 1
    assert isinstance(config.describe(), str) and "floatX" in config.describe()


def test_graphc_flags_environment_variable_is_parsed_at_import():
    code = ("import graphc, graphc.tensor as T; c = graphc.config; "
            "print(c.floatX, c.mode, c.linker, c.profile, c.seed, T.matrix().dtype)")
    r = _run_python(code, "floatX=float32, mode=FAST_COMPILE,linker=py,profile=yes,seed=9")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["float32", "FAST_COMPILE", "py", "True", "9", "float32"]


def test_bad_graphc_flags_fail_at_import_with_the_choices():
    r = _run_python("import graphc", "device=tpu")
    assert r.returncode != 0
    assert "device='tpu'" in r.stderr and "['cpu', 'gpu', 'cuda']" in r.stderr
    r = _run_python("import graphc", "floatx=float32")
    assert r.returncode != 0 and "unknown graphc flag 'floatx'" in r.stderr


def test_every_flag_is_documented_in_docs_flags_md():
    with open(os.path.join(REPO, "docs", "flags.md")) as f:
        text = f.read()
    documented = set(re.findall(r"^### `(\w+)`", text, flags=re.M))
    names = {f.name for f in FLAGS}
    assert names - documented == set(), f"flags missing from docs/flags.md: {names - documented}"
    assert documented - names == set(), f"docs/flags.md lists unknown flags: {documented - names}"
    for f in FLAGS:
        section = text.split(f"### `{f.name}`", 1)[1].split("\n### ", 1)[0]
        default = repr(f.default).replace(os.path.expanduser("~"), "~")
        assert f"default: `{default}`" in section, f"docs/flags.md: wrong default of {f.name}"
        for choice in f.choices or ():
            assert str(choice) in section, f"docs/flags.md: {f.name} choice {choice} missing"


# --------------------------------------------------------------------------- printing
def test_debugprint_of_a_variable():
    x = T.dmatrix("x")
    y = T.dvector("y")
    z = T.tanh(x + y).sum(axis=1)
    z.name = "z"
    text = debugprint(z, file="str")
    assert "Reduce{add, axis=1}" in text and "'z'" in text
    assert "Elemwise{tanh}" in text and "Elemwise{add}" in text
    assert "\n" in text and " |x" in text and "DimShuffle" in text
    typed = debugprint(z, file="str", print_type=True)
    assert "Tensor{float64, (?, ?)}" in typed
    shallow = debugprint(z, file="str", depth=1)
    assert "tanh" not in shallow


def test_debugprint_shows_shared_subgraphs_once():
    x = T.dvector("x")
    e = T.exp(x)
    text = debugprint([e + e * 2], file="str")
    assert text.count("Elemwise{exp}") == 2 and "(see above)" in text


@pytest.mark.parametrize("mode", [None, "FAST_COMPILE"], ids=["default", "fast_compile"])
def test_debugprint_of_a_compiled_function(mode, capsys):
    x = T.dmatrix("x")
    w = graphc.shared(np.ones((2, 2)), name="w")
    f = graphc.function([x], T.dot(x, w).sum(), updates=[(w, w - 0.1)], mode=mode)
    text = debugprint(f)
    assert text in capsys.readouterr().out
    assert "x" in text and "w" in text
    assert "update of w" in text


def test_pp_formula():
    x, y = T.dscalars("x", "y")
    s = pp(T.exp(x) * y)
    assert "exp" in s and "x" in s and "y" in s


def test_dot_export(tmp_path):
    x = T.dmatrix("x")
    y = T.nnet.softmax(T.dot(x, x.T))
    dot = to_dot(y)
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert "Dot" in dot and "Softmax" in dot and "->" in dot
    f = graphc.function([x], y)
    out = pydotprint(f, outfile=str(tmp_path / "g.dot"), format="dot")
    with open(out) as fh:
        assert fh.read().startswith("digraph")
    if shutil.which("dot"):
        svg = pydotprint(f, outfile=str(tmp_path / "g.svg"), format="svg")
        with open(svg) as fh:
            assert "<svg" in fh.read()
    else:
        with pytest.raises(RuntimeError, match="Graphviz"):
            pydotprint(f, outfile=str(tmp_path / "g.svg"), format="svg")


def test_print_op(capsys):
    x = T.dvector("x")
    y = Print("value of x")(x) * 2
    f = graphc.function([x], y, mode="FAST_COMPILE")
    np.testing.assert_array_equal(f(np.array([1.0, 2.0])), [2.0, 4.0])
    assert "value of x" in capsys.readouterr().out


def test_profile_report():
    x = T.dvector("x")
    f = graphc.function([x], T.exp(x) + 1, profile=True)
    f(np.ones(3))
    f(np.ones(3))
    rep = profile_report(f)
    assert "2 calls" in rep
    g = graphc.function([x], x + 1)
    with pytest.raises(ValueError, match="profile=True"):
        profile_report(g)


def test_warn_float64_raises_and_names_the_line():
    with graphc.config.change_flags(warn_float64="raise"):
        T.fmatrix("ok")
        with pytest.raises(TypeError, match="float64 variable 'x'"):
            T.dmatrix("x")
    with graphc.config.change_flags(warn_float64="warn"):
        with pytest.warns(UserWarning, match="test_config_printing.py"):
            T.fvector("v") * np.float64(2.0).item() + T.dvector("w")
