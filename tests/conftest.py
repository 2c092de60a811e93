import os

import numpy as np
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("GRAPHC_DATA", os.path.join(os.path.dirname(os.path.dirname(_HERE)),
                                                  "shared", "data"))


def _has_gpu():
    try:
        import cupy
        return cupy.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
