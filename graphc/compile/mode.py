"""Compilation modes: which rewrite pipeline and which backend (linker) a function uses."""
from __future__ import annotations

from graphc.configdefaults import config

PIPELINES = {"FAST_RUN": "fast_run", "FAST_COMPILE": "fast_compile", "DebugMode": "fast_run"}


class Mode:
    """``graphc.Mode(linker='py', optimizer='fast_run')`` as in Theano.

    linker: 'auto' | 'py' | 'llvm' | 'cuda'; optimizer: 'fast_run' | 'fast_compile' | None.
    ``including``/``excluding`` return a new Mode with rewrite passes switched on/off.
    """

    def __init__(self, linker="auto", optimizer="fast_run", excluded=(), included=(),
                 check=False):
        self.linker = linker
        self.optimizer = optimizer
        self.excluded = tuple(excluded)
        self.included = tuple(included)
        self.check = check

    def excluding(self, *names):
        return Mode(self.linker, self.optimizer, self.excluded + names, self.included, self.check)

    def including(self, *names):
        return Mode(self.linker, self.optimizer, self.excluded, self.included + names, self.check)

    def __repr__(self):
        return f"Mode(linker={self.linker!r}, optimizer={self.optimizer!r})"


def get_mode(mode) -> Mode:
    if mode is None:
        mode = config.mode
    if isinstance(mode, Mode):
        return mode
    if mode == "FAST_COMPILE":
        return Mode(linker="py", optimizer="fast_compile")
    if mode == "FAST_RUN":
        return Mode(linker=config.linker, optimizer="fast_run")
    if mode in ("DebugMode", "DEBUG_MODE"):
        return Mode(linker="py", optimizer="fast_run", check=True)
    raise ValueError(f"unknown mode {mode!r}; choose FAST_RUN, FAST_COMPILE, DebugMode or a Mode")


def resolve_linker(mode: Mode) -> str:
    """The backend that will run the function: explicit linker, else from the device flag."""
    name = mode.linker if mode.linker != "auto" else config.linker
    if name != "auto":
        return name
    if config.device in ("gpu", "cuda"):
        return "cuda"
    try:
        import graphc.link.llvm  # noqa: F401
    except ImportError:
        return "py"
    return "llvm"
