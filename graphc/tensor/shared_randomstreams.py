"""Theano's path ``theano.tensor.shared_randomstreams``: ``RandomStreams(seed)``.

graphc's streams are Philox4x32-10 (counter-based): the same seed gives the same numbers
on every backend.  See ``graphc.tensor.random``."""
from graphc.tensor.random.streams import RandomStreams  # noqa: F401

__all__ = ["RandomStreams"]
