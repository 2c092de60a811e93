"""``graphc.tensor.signal`` (Theano's ``theano.tensor.signal``): pooling."""
from graphc.tensor.signal import pool  # noqa: F401
