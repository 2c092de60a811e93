"""Every graphc flag, typed and documented in one place.

Flags come from ``GRAPHC_FLAGS="device=cpu,floatX=float32,..."`` (parsed once at import) and
can be changed for a block of code with ``graphc.config.change_flags(floatX='float32')``.
An unknown flag or a bad value raises ``ValueError`` that lists the valid choices.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence


@dataclass
class Flag:
    name: str
    default: Any
    doc: str
    choices: Optional[Sequence[Any]] = None
    parse: Callable[[str], Any] = str
    in_cache_key: bool = False   # flags that change generated code are part of the cache key

    def convert(self, value):
        if isinstance(value, str) and self.parse is not str:
            try:
                value = self.parse(value)
            except ValueError:
                raise ValueError(f"graphc flag {self.name}={value!r}: cannot parse as "
                                 f"{self.parse.__name__}") from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"graphc flag {self.name}={value!r} is not valid; "
                             f"choose one of {list(self.choices)}")
        return value


def _bool(s: str) -> bool:
    low = s.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(s)


_bool.__name__ = "bool"

FLAGS = [
    Flag("device", "cpu", "Where compiled functions run: 'cpu' (LLVM) or 'gpu' (CUDA via CuPy).",
         choices=("cpu", "gpu", "cuda"), in_cache_key=True),
    Flag("floatX", "float64", "Default float dtype of T.matrix() & co. and of Python float literals "
         "combined only with ints.", choices=("float64", "float32"), in_cache_key=True),
    Flag("mode", "FAST_RUN", "Default compilation mode: FAST_RUN (all rewrites, native backend), "
         "FAST_COMPILE (minimal rewrites, numpy reference backend), DebugMode (reference "
         "backend, graph checks after every pass).",
         choices=("FAST_RUN", "FAST_COMPILE", "DebugMode")),
    Flag("linker", "auto", "Which backend executes graphs: 'auto' (from mode and device), 'py' "
         "(numpy reference backend), 'llvm' (native CPU), 'cuda'.",
         choices=("auto", "py", "llvm", "cuda")),
    Flag("compiledir", os.path.join(os.path.expanduser("~"), ".cache", "graphc"),
         "Directory of the persistent compile cache."),
    Flag("profile", False, "Collect a per-op time profile in every compiled function "
         "(f.profile); print it with graphc.printing.profile_report(f).", parse=_bool),
    Flag("optimizer_verbose", False, "Print every rewrite applied: rule name, before, after.",
         parse=_bool),
    Flag("optimizer_excluding", "", "Colon-separated names of rewrite passes to switch off."),
    Flag("optimizer_including", "", "Colon-separated names of optional passes to switch on."),
    Flag("seed", 1234, "Default seed of random streams created without a seed.", parse=int),
    Flag("debug", 0, "0: quiet. 1: check graphs with the spec pass after each rewrite pass. "
         "2: also print generated code (LLVM IR / CUDA source) per kernel.",
         choices=(0, 1, 2), parse=int),
    Flag("compute_test_value", "off", "Theano's test values: accepted for compatibility; 'off' only.",
         choices=("off", "ignore")),
    Flag("cast_policy", "custom", "Theano compatibility; graphc always uses weak Python scalars.",
         choices=("custom", "numpy+floatX")),
    Flag("warn_float64", "ignore", "What to do when a float64 tensor variable is created "
         "(inputs and intermediates): ignore, warn, raise.",
         choices=("ignore", "warn", "raise")),
    Flag("openmp", True, "Use several threads in native kernels.", parse=_bool),
    Flag("scan_native", True, "Run the steps of a loop whose every node maps batch rows to rows "
         "natively, each thread on its own rows (graphc/scan_module/native.py); False: "
         "every step through the Python loop.", parse=_bool),
    Flag("allow_gc", True, "Free the intermediate results a compiled function allocates per "
         "call (loop buffers, arrays of ops run on numpy) after their last use in the call; "
         "False: keep them until the next call replaces them.", parse=_bool),
    Flag("hugepages", True, "Allocate the arrays of 64 KiB or more that compiled functions "
         "make in transparent huge pages (from 1 MiB whole pages, below pieces of one), "
         "recycled across calls (graphc/link/hugemem.py); False: plain numpy allocations.",
         parse=_bool),
    Flag("graph_cache", True, "Keep optimized graphs in the compile dir, so that a later "
         "process compiling the same graph skips the rewrite passes "
         "(graphc/compile/graph_cache.py).", parse=_bool),
]


class Config:
    """``graphc.config``: attribute access to the flag values."""

    def __init__(self, flags):
        object.__setattr__(self, "_flags", {f.name: f for f in flags})
        object.__setattr__(self, "_values", {f.name: f.default for f in flags})

    def _flag(self, name):
        try:
            return self._flags[name]
        except KeyError:
            raise ValueError(f"unknown graphc flag {name!r}; valid flags: "
                             f"{sorted(self._flags)}") from None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        self._flag(name)
        return self._values[name]

    def __setattr__(self, name, value):
        self._values[name] = self._flag(name).convert(value)

    def parse(self, text: str):
        for item in filter(None, (s.strip() for s in text.split(","))):
            if "=" not in item:
                raise ValueError(f"GRAPHC_FLAGS entry {item!r} is not of the form name=value")
            name, value = (s.strip() for s in item.split("=", 1))
            setattr(self, name, value)

    @contextlib.contextmanager
    def change_flags(self, **kwargs):
        old = {k: getattr(self, k) for k in kwargs}
        try:
            for k, v in kwargs.items():
                setattr(self, k, v)
            yield self
        finally:
            self._values.update(old)

    def cache_key(self):
        return tuple((n, self._values[n]) for n, f in sorted(self._flags.items()) if f.in_cache_key)

    def describe(self) -> str:
        lines = []
        for f in self._flags.values():
            lines.append(f"{f.name} = {self._values[f.name]!r}\n    {f.doc}"
                         + (f"\n    choices: {list(f.choices)}" if f.choices else ""))
        return "\n".join(lines)


config = Config(FLAGS)
config.parse(os.environ.get("GRAPHC_FLAGS", ""))
change_flags = config.change_flags
