"""The Python step loop of a Scan, specialized to its structure.

The loop body depends only on how many sequences, taps, states and outputs a Scan has, so
it is generated once per structure as straight-line Python (no inner loops over lists of
inputs), which halves the per-step cost of the interpreter.  For a Scan with one sequence
and one state of taps (-1,) the generated function reads::

    def loop(n, run, seq0, in_seq0, buf0, out_st0, shape0, in_tap0_0, t0=0):
        t = t0
        in_tap0_0[0] = buf0[t0 + 0, ...]
        try:
            for t in range(t0, n):
                in_seq0[0] = seq0[t, ...]
                run()
                v = out_st0[0]
                if v.shape != shape0:
                    raise StepShapeError('state', 0, v)
                buf0[t + 1] = v
                in_tap0_0[0] = v
        except Exception as e:
            e.scan_step = t
            raise
        return n

(a vector state: tap -1 gets the array the previous step returned). ``t0`` > 0 runs steps
t0 .. n-1 of a loop whose earlier steps already ran (scan_module/native.py runs the first
steps here and the rest natively, or here again when it cannot).
``in_*`` are the inner function's input cells, ``out_*`` its output cells, ``buf*`` the
state buffers (init first), ``fin*`` final-value holders, ``nit*`` per-step output holders.
"""
from __future__ import annotations

import numpy as np

from graphc.compile.graph_cache import compile_source
from graphc.link import hugemem


class StepShapeError(Exception):
    """A step produced a value whose shape differs from what the loop carries."""

    def __init__(self, what, index, value):
        super().__init__(what, index)
        self.what, self.index, self.value = what, index, value


class PerStep:
    """The buffer of a per-step output, allocated when the first step shows its shape."""

    __slots__ = ("n", "buf")

    def __init__(self, n):
        self.n = n
        self.buf = None

    def store(self, t, v, index):
        if self.buf is None:
            v = np.asarray(v)
            self.buf = hugemem.empty((self.n,) + v.shape, v.dtype)
        elif v.shape != self.buf.shape[1:]:
            raise StepShapeError("output", index, v)
        self.buf[t] = v


_cache = {}


def make_loop(n_seqs, state_taps, lags, state_ndims, n_final, n_nit, as_while,
              lend=None, lend_nit=None, lend_fin=None):
    """The step loop for this structure (generated once, then reused).  ``lend[k]``: state
    k's inner output can be written straight into its buffer row (argument ``dst{k}``, the
    inner function's destination cell for it); ``lend_nit[j]`` likewise for per-step
    output j (argument ``dstn{j}``), from the second step on (its buffer is allocated when
    the first step shows the shape); ``lend_fin[i]`` for final-value state i (argument
    ``dstf{i}``): the holder's spare buffer, which the step does not read."""
    lend = tuple(bool(x) for x in lend) if lend is not None else (False,) * len(state_taps)
    lend_nit = tuple(bool(x) for x in lend_nit) if lend_nit is not None else (False,) * n_nit
    lend_fin = tuple(bool(x) for x in lend_fin) if lend_fin is not None else (False,) * n_final
    key = (n_seqs, state_taps, lags, tuple(state_ndims), n_final, n_nit, as_while, lend,
           lend_nit, lend_fin)
    fn = _cache.get(key)
    if fn is None:
        fn = _cache[key] = _generate(*key)
    return fn


def arg_names(n_seqs, state_taps, n_final, n_nit, as_while, lend=None, lend_nit=None,
              lend_fin=None):
    args = []
    for j in range(n_seqs):
        args += [f"seq{j}", f"in_seq{j}"]
    for k, taps in enumerate(state_taps):
        args += [f"buf{k}", f"out_st{k}", f"shape{k}"]
        args += [f"in_tap{k}_{i}" for i in range(len(taps))]
        if lend and lend[k]:
            args.append(f"dst{k}")
    for i in range(n_final):
        args += [f"fin{i}", f"in_fin{i}", f"out_fin{i}"]
        if lend_fin and lend_fin[i]:
            args.append(f"dstf{i}")
    for j in range(n_nit):
        args += [f"nit{j}", f"out_nit{j}"]
        if lend_nit and lend_nit[j]:
            args.append(f"dstn{j}")
    if as_while:
        args.append("cond")
    return args


def _generate(n_seqs, state_taps, lags, state_ndims, n_final, n_nit, as_while, lend,
              lend_nit, lend_fin):
    args = arg_names(n_seqs, state_taps, n_final, n_nit, as_while, lend, lend_nit, lend_fin)
    # tap -1 of a state reads the value the previous step returned: pass that array on
    # instead of indexing the buffer (0-d values may be numpy scalars: those are indexed)
    handoff = {(k, i) for k, taps in enumerate(state_taps) for i, tau in enumerate(taps)
               if tau == -1 and state_ndims[k] > 0}
    start = [f"in_tap{k}_{i}[0] = buf{k}[t0 + {lags[k] - 1}, ...]" for k, i in sorted(handoff)]
    body = []
    for j in range(n_seqs):
        body.append(f"in_seq{j}[0] = seq{j}[t, ...]")     # '...': 0-d slices stay arrays
    for k, taps in enumerate(state_taps):
        for i, tau in enumerate(taps):
            if (k, i) not in handoff:
                body.append(f"in_tap{k}_{i}[0] = buf{k}[t + {lags[k] + tau}, ...]")
    for i in range(n_final):
        body.append(f"in_fin{i}[0] = fin{i}.cur")
        if lend_fin[i]:
            body.append(f"dstf{i}[0] = fin{i}.other")
    for k in range(len(state_taps)):
        if lend[k]:      # lend the buffer row: a step that wrote into it needs no copy
            body += [f"d{k} = buf{k}[t + {lags[k]}, ...]", f"dst{k}[0] = d{k}"]
    for j in range(n_nit):
        if lend_nit[j]:
            body += [f"dn{j} = nit{j}.buf", f"if dn{j} is not None:",
                     f"    dn{j} = dn{j}[t, ...]", f"    dstn{j}[0] = dn{j}"]
    body.append("run()")
    for k, taps in enumerate(state_taps):
        store = [f"if v.shape != shape{k}:",
                 f"    raise StepShapeError('state', {k}, v)",
                 f"buf{k}[t + {lags[k]}] = v"]
        body.append(f"v = out_st{k}[0]")
        if lend[k]:
            body += [f"if v is not d{k}:"] + ["    " + line for line in store]
        else:
            body += store
        body += [f"in_tap{k}_{i}[0] = v" for i in range(len(taps)) if (k, i) in handoff]
    for i in range(n_final):
        if lend_fin[i]:         # written into the spare buffer: swap, no copy
            body += [f"v = out_fin{i}[0]", f"if v is fin{i}.other:",
                     f"    fin{i}.cur, fin{i}.other = v, fin{i}.cur", "else:",
                     f"    fin{i}.store(v, {i})"]
        else:
            body.append(f"fin{i}.store(out_fin{i}[0], {i})")
    for j in range(n_nit):
        if lend_nit[j]:         # written in place unless the step made another array
            body += [f"v = out_nit{j}[0]", f"if v is not dn{j}:",
                     f"    nit{j}.store(t, v, {j})"]
        else:
            body.append(f"nit{j}.store(t, out_nit{j}[0], {j})")
    if as_while:
        body += ["if cond[0]:", "    return t + 1"]
    src = [f"def loop(n, run, {', '.join(args)}, t0=0):", "    t = t0"]
    src += ["    " + line for line in start]
    src += ["    try:", "        for t in range(t0, n):"]
    src += ["            " + line for line in body]
    src += ["    except Exception as e:", "        e.scan_step = t", "        raise",
            "    return n"]
    namespace = {"StepShapeError": StepShapeError}
    exec(compile_source("\n".join(src),
                        f"<scan loop {key_str(n_seqs, state_taps, n_final, n_nit)}>"), namespace)
    loop = namespace["loop"]
    loop.source = "\n".join(src)
    return loop


def key_str(n_seqs, state_taps, n_final, n_nit):
    return f"{n_seqs} seqs, taps {list(map(list, state_taps))}, {n_final} final, {n_nit} nit"
