"""Fixtures of the backend tests."""
import pytest

import graphc.backend.llvm as gl
from graphc.backend.llvm import jit


@pytest.fixture(scope="module")
def hermetic_compiledir(tmp_path_factory):
    """Every kernel of the module that uses it is compiled into a fresh directory."""
    old = jit._compiledir_override
    gl.set_compiledir(tmp_path_factory.mktemp("graphc-cache"))
    yield
    gl.set_compiledir(old)
