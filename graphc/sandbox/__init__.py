"""Theano's ``theano.sandbox`` path, kept for ``theano.sandbox.rng_mrg.MRG_RandomStreams``."""
