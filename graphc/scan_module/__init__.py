"""Loops as graphs: ``graphc.scan`` (Theano's ``theano.scan``), ``until`` and Theano's
scan views ``map``, ``reduce``, ``foldl``, ``foldr``."""
from graphc.scan_module.op import Scan, ScanInfo  # noqa: F401
from graphc.scan_module.scan import foldl, foldr, map, reduce, scan  # noqa: F401
from graphc.scan_module.utils import until  # noqa: F401

__all__ = ["scan", "until", "map", "reduce", "foldl", "foldr", "Scan", "ScanInfo"]
