"""Random numbers: Philox4x32-10 streams (``philox``), the random ops (``ops``) and
Theano's ``RandomStreams`` (``streams``)."""
from graphc.tensor.random.ops import AdvanceState, ArgSort, RandomUniform  # noqa: F401
from graphc.tensor.random.streams import RandomStreams  # noqa: F401

__all__ = ["RandomStreams", "RandomUniform", "AdvanceState", "ArgSort"]
