"""Rewrite tests: a rule that raises while rewriting is an error here, not a warning."""
import warnings

import pytest

from graphc.rewriting.engine import RewriteWarning


@pytest.fixture(autouse=True)
def _rewrite_errors_fail():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RewriteWarning)
        yield
