"""The Scan op: a loop whose body is an inner graph.

Canonical form (built by ``graphc.scan``; every user feature is lowered to it)::

    outer inputs : n_steps, sequences..., state inits..., final inits..., non_sequences...
    outer outputs: state buffers..., final values..., per-step outputs..., [n_done]
    inner inputs : sequence slices..., state taps..., final previous values..., non_sequences...
    inner outputs: new states..., new finals..., per-step outputs..., [stop condition]

- sequence j: step t reads ``seq_j[t]`` (tap offsets and go_backwards were applied by
  slicing/reversing the outer sequence);
- state k with taps T_k (negative ints), lag L_k = -min(T_k): its buffer B_k has
  L_k + n_steps entries, starts with ``init_k[:L_k]``, and step t reads ``B_k[L_k + t + tau]``
  for tau in T_k and writes ``B_k[L_k + t]``.  The op's output is the whole buffer (initial
  part included, as Theano's raw scan outputs); ``scan()`` returns ``B_k[L_k:]``;
- final i: a state that keeps only its latest value (shared-variable updates, gradient
  accumulators); its output is the value after the last step (the init after 0 steps);
- per-step output j: output ``[t]`` is the inner value at step t (not fed back);
- with a stop condition (``until``) the loop ends after the first step where it is true;
  buffers then hold the executed steps only, and the extra output ``n_done`` counts them.

``perform`` compiles the inner graph once (same rewrites and backend as any function) and
loops in Python over preallocated buffers, writing inputs straight into the inner
function's storage cells.  A native loop (no Python per step) is the LLVM backend's job.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from graphc.compile import graph_cache
from graphc.configdefaults import config
from graphc.graph.basic import Apply, Constant, Op
from graphc.link import hugemem
from graphc.scan_module import native
from graphc.scan_module.loop import PerStep, StepShapeError, make_loop
from graphc.scan_module.utils import (compiled, graph_signature, infer_inner_shapes,
                                      resolve_mode)
from graphc.tensor.elemwise import describe_values, shape_error
from graphc.tensor.type import TensorType


@dataclass(frozen=True)
class ScanInfo:
    n_seqs: int
    state_taps: Tuple[Tuple[int, ...], ...]   # per buffered state, its (negative) taps
    n_final: int                              # states that keep only their last value
    n_nit: int                                # per-step outputs not fed back
    n_nonseqs: int
    as_while: bool = False
    truncate_gradient: int = -1
    name: str = "scan_fn"
    mode: object = None                       # None: the configured default mode

    @property
    def n_states(self):
        return len(self.state_taps)

    @property
    def lags(self):
        return tuple(-min(t) for t in self.state_taps)

    @property
    def n_taps(self):
        return sum(len(t) for t in self.state_taps)

    def replace(self, **kw):
        d = dict(self.__dict__)
        d.update(kw)
        return ScanInfo(**d)


class Scan(Op):
    """See the module docstring.  Two Scans are equal when their loop structure and inner
    graphs are equal (structurally), so the graph optimizer may merge them."""

    __props__ = ("info", "signature")

    def __init__(self, inner_inputs, inner_outputs, info: ScanInfo):
        self.inner_inputs = list(inner_inputs)
        self.inner_outputs = list(inner_outputs)
        self.info = info
        n_in = info.n_seqs + info.n_taps + info.n_final + info.n_nonseqs
        n_out = info.n_states + info.n_final + info.n_nit + int(info.as_while)
        if len(self.inner_inputs) != n_in or len(self.inner_outputs) != n_out:
            raise ValueError(f"Scan {info.name}: {len(self.inner_inputs)} inner inputs / "
                             f"{len(self.inner_outputs)} outputs, expected {n_in} / {n_out}")
        self.signature = graph_signature(self.inner_inputs, self.inner_outputs)
        self._hash = hash((info, self.signature))

    def __eq__(self, other):
        return (type(other) is type(self) and self._hash == other._hash
                and self.info == other.info and self.signature == other.signature)

    def __hash__(self):
        return self._hash

    def __getstate__(self):
        # for the graph cache (graphc/compile/graph_cache.py): not the compiled inner
        # functions, nor the hash (string hashes differ between processes), nor the origin
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_hash", "_compiled", "_cache_origin")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._hash = hash((self.info, self.signature))
        # loaded from the graph cache: the inner function's key derives from this
        self._cache_origin = graph_cache.origin()

    def __str__(self):
        return f"Scan{{{self.info.name}}}"

    __repr__ = __str__

    def inner_str(self):
        i = self.info
        parts = [f"{i.n_seqs} seq",
                 f"taps {list(map(list, i.state_taps))}" if i.n_states else "",
                 f"{i.n_final} final" if i.n_final else "",
                 f"{i.n_nit} per-step" if i.n_nit else "",
                 f"{i.n_nonseqs} non-seq", "until" if i.as_while else "",
                 f"truncate {i.truncate_gradient}" if i.truncate_gradient != -1 else ""]
        return ", ".join(p for p in parts if p)

    # ------------------------------------------------------------------ inner groups
    def split_inner_inputs(self, seq=None):
        """(sequence slices, [taps per state], final previous values, non-sequences)."""
        i = self.info
        v = list(self.inner_inputs if seq is None else seq)
        seqs, v = v[:i.n_seqs], v[i.n_seqs:]
        taps = []
        for t in i.state_taps:
            taps.append(v[:len(t)])
            v = v[len(t):]
        return seqs, taps, v[:i.n_final], v[i.n_final:]

    def split_outer_inputs(self, inputs):
        """(n_steps, sequences, state inits, final inits, non-sequences)."""
        i = self.info
        v = list(inputs[1:])
        a, b, c = i.n_seqs, i.n_seqs + i.n_states, i.n_seqs + i.n_states + i.n_final
        return inputs[0], v[:a], v[a:b], v[b:c], v[c:]

    def split_outputs(self, outputs):
        """(state buffers, final values, per-step outputs, stop condition or n_done)."""
        i = self.info
        v = list(outputs)
        a, b, c = i.n_states, i.n_states + i.n_final, i.n_states + i.n_final + i.n_nit
        return v[:a], v[a:b], v[b:c], (v[c] if i.as_while else None)

    # ------------------------------------------------------------------ graph building
    def make_node(self, n_steps, *args):
        from graphc.tensor.basic import cast
        from graphc.tensor.type import is_int
        from graphc.tensor.var import as_tensor_variable
        info = self.info
        n_steps = as_tensor_variable(n_steps)
        if n_steps.ndim != 0 or not is_int(n_steps.dtype):
            raise TypeError(f"{self}: n_steps must be an integer scalar, got {n_steps.type}")
        n_steps = cast(n_steps, "int64")
        args = [as_tensor_variable(a) for a in args]
        expected = info.n_seqs + info.n_states + info.n_final + info.n_nonseqs
        if len(args) != expected:
            raise TypeError(f"{self} takes {expected} inputs after n_steps, got {len(args)}")
        _, seqs, inits, finits, nonseqs = self.split_outer_inputs([n_steps] + args)
        in_seqs, in_taps, in_finals, in_nonseqs = self.split_inner_inputs()
        checks = ([(o, i, 1, "sequence") for o, i in zip(seqs, in_seqs)]
                  + [(o, t[0], 1, "initial state") for o, t in zip(inits, in_taps)]
                  + [(o, i, 0, "final-value state") for o, i in zip(finits, in_finals)]
                  + [(o, i, 0, "non-sequence") for o, i in zip(nonseqs, in_nonseqs)])
        for outer, inner, extra, what in checks:
            if outer.dtype != inner.dtype or outer.ndim != inner.ndim + extra:
                raise TypeError(
                    f"{self}: {what} {outer} is {outer.type}, the inner graph expects "
                    f"{'one dimension more than ' if extra else ''}{inner.type}")
        n_static = None
        if isinstance(n_steps, Constant) and not info.as_while:
            n_static = int(n_steps.data)
        outs = []
        st_out, fin_out, nit_out, _ = self.split_outputs(self.inner_outputs)
        for lag, t in zip(info.lags, in_taps):
            lead = None if n_static is None else lag + n_static
            outs.append(TensorType(t[0].dtype, shape=(lead,) + t[0].type.shape)())
        for f in in_finals:
            outs.append(TensorType(f.dtype, shape=f.type.shape)())
        for o in nit_out:
            outs.append(TensorType(o.dtype, shape=(n_static,) + o.type.shape)())
        if info.as_while:
            outs.append(TensorType("int64", shape=())())
        return Apply(self, [n_steps] + args, outs)

    # ------------------------------------------------------------------ running
    def perform(self, node, inputs, output_storage):
        info = self.info
        fn = compiled(self, "forward", self.inner_inputs, self.inner_outputs,
                      resolve_mode(info.mode))
        n = int(inputs[0])
        if n < 0:
            raise ValueError(f"{self}: n_steps is {n}; it must be >= 0 "
                             f"(use go_backwards=True to iterate in reverse)")
        _, seqs, inits, finits, nonseqs = self.split_outer_inputs(inputs)
        for j, s in enumerate(seqs):
            if s.shape[0] < n:
                raise shape_error(self, describe_values(seqs),
                                  f"sequence {j} has {s.shape[0]} entries but the loop runs "
                                  f"{n} steps", getattr(node.tag, "trace", []))
        cells, outc = fn.in_cells, fn.out_cells
        c_seq, c_taps, c_fin, c_non = self.split_inner_inputs(cells)
        o_st, o_fin, o_nit, o_cond = self.split_outputs(outc)
        for cell, v in zip(c_non, nonseqs):
            cell[0] = v
        args = []
        for s, c in zip(seqs, c_seq):
            args += [s, c]
        bufs = []
        # states written straight into their buffer rows (0-d rows would be numpy scalars)
        dests = fn.dest_cells[:info.n_states]
        lend = [d is not None and t[0].ndim > 0
                for d, t in zip(dests, self.split_inner_inputs()[1])]
        for k, (lag, taps) in enumerate(zip(info.lags, info.state_taps)):
            init = inits[k]
            if init.shape[0] < lag:
                raise shape_error(self, describe_values([init]),
                                  f"the initial value of state {k} (taps {list(taps)}) needs "
                                  f"{lag} entries, it has {init.shape[0]}",
                                  getattr(node.tag, "trace", []))
            buf = hugemem.empty((lag + n,) + init.shape[1:], node.outputs[k].type.numpy_dtype)
            buf[:lag] = init[:lag]
            bufs.append(buf)
            args += [buf, o_st[k], buf.shape[1:]] + list(c_taps[k])
            if lend[k]:
                args.append(dests[k])
        finals = [_Final(f, node.outputs[info.n_states + i].type.numpy_dtype)
                  for i, f in enumerate(finits)]
        fin_dests = fn.dest_cells[info.n_states:info.n_states + info.n_final]
        lend_fin = [d is not None and f.cur.ndim > 0 for d, f in zip(fin_dests, finals)]
        for f, ci, co, d, ok in zip(finals, c_fin, o_fin, fin_dests, lend_fin):
            args += [f, ci, co] + ([d] if ok else [])
        nits = [PerStep(n) for _ in range(info.n_nit)]
        base = info.n_states + info.n_final
        nit_dests = fn.dest_cells[base:base + info.n_nit]
        _, _, nit_inner, _ = self.split_outputs(self.inner_outputs)
        lend_nit = [d is not None and o.ndim > 0 for d, o in zip(nit_dests, nit_inner)]
        for p, co, d, ok in zip(nits, o_nit, nit_dests, lend_nit):
            args += [p, co] + ([d] if ok else [])
        if info.as_while:
            args.append(o_cond)
        loop = make_loop(info.n_seqs, info.state_taps, info.lags,
                         [t[0].ndim for t in self.split_inner_inputs()[1]], info.n_final,
                         info.n_nit, info.as_while, lend, lend_nit, lend_fin)
        # small matrix products in the step run on one BLAS thread (see blas.in_step_loop)
        from graphc.backend.llvm.blas import in_step_loop
        try:
            with np.errstate(all="ignore"), in_step_loop():
                if native.wanted(fn, n, info.as_while):
                    n_done = self._native_loop(fn, loop, n, args, bufs, lend, nits, lend_nit,
                                               finals, lend_fin, list(seqs) + list(nonseqs))
                else:
                    n_done = loop(n, fn.run, *args)
        except Exception as e:
            raise self._step_error(node, e) from None
        finally:
            for d in dests + nit_dests + fin_dests:   # never lend this loop's buffers later
                if d is not None:
                    d[0] = None
            # nor hold views of them (the last step's rows) past this call: the buffers are
            # freed when the outer function is done with them (allow_gc)
            for c in cells:
                c[0] = None
            for c in outc:
                c[0] = None
        for k, (lag, buf) in enumerate(zip(info.lags, bufs)):
            output_storage[k][0] = buf[:lag + n_done] if n_done < n else buf
        for i, f in enumerate(finals):
            output_storage[info.n_states + i][0] = f.cur
        base = info.n_states + info.n_final
        for j, p in enumerate(nits):
            buf = p.buf
            if buf is None:
                o = node.outputs[base + j]
                buf = np.zeros((0,) + tuple(s or 0 for s in o.type.shape[1:]),
                               dtype=o.type.numpy_dtype)
            output_storage[base + j][0] = buf[:n_done] if n_done < n else buf
        if info.as_while:
            output_storage[-1][0] = np.asarray(n_done, dtype=np.int64)

    def _native_loop(self, fn, loop, n, args, bufs, lend, nits, lend_nit, finals, lend_fin,
                     outer):
        """Every step natively on the program of an earlier call when it fits this one
        (native.Template), else the first steps in Python and the others natively by rows
        when they fit (scan_module/native.py), else in Python too."""
        from graphc.backend.llvm.kernel import num_threads
        threads = num_threads()
        template = getattr(fn, "_native_template", None)
        if template is not None:
            prog = template.program(n, threads, bufs, nits, finals, outer)
            if prog is not None:
                native.stats["reused"] += 1
                prog.run(0, n, threads)
                prog.finish(finals, 0, n)
                return n
        rec = native.Recorder(fn)
        loop(native.RECORD, rec, *args)
        try:
            prog = native.build(rec, list(zip(bufs, self.info.lags, lend)),
                                list(zip(nits, lend_nit)), list(zip(finals, lend_fin)),
                                threads, outer, n)
        except Exception:       # an analysis that failed: the steps it would have sped up
            if config.debug:    # still run, in Python
                raise
            prog = None
        if prog is None:
            native.stats["python"] += 1
            return loop(n, fn.run, *args, t0=native.RECORD)
        native.stats["native"] += 1
        fn._native_template = prog.template
        prog.run(native.RECORD, n, threads)
        prog.finish(finals, native.RECORD, n)
        return n

    def _step_error(self, node, e):
        """The exception of a failed step, with the step number and scan name added."""
        where = f"(at step {getattr(e, 'scan_step', '?')} of scan {self.info.name!r})"
        if isinstance(e, StepShapeError):
            return shape_error(
                self, describe_values([e.value]),
                f"step returned a {e.what} (number {e.index}) of shape {np.shape(e.value)}, "
                f"but a scan state or output keeps one shape at every step {where}",
                getattr(node.tag, "trace", []))
        try:
            err = type(e)(f"{e}\n  {where}")
        except Exception:
            return e
        err.__cause__ = e.__cause__
        return err

    def infer_shape(self, node, input_shapes):
        from graphc.tensor.var import constant
        info = self.info
        n = node.outputs[-1] if info.as_while else node.inputs[0]
        _, s_seq, s_init, s_fin, s_non = self.split_outer_inputs(input_shapes)
        out = [(n + constant(np.int64(lag)),) + tuple(s[1:])
               for lag, s in zip(info.lags, s_init)]
        out += [tuple(s) for s in s_fin]
        if info.n_nit:
            inner_shapes = [tuple(s[1:]) for s in s_seq]
            for taps, s in zip(info.state_taps, s_init):
                inner_shapes += [tuple(s[1:])] * len(taps)
            inner_shapes += [tuple(s) for s in s_fin] + [tuple(s) for s in s_non]
            _, _, nit_out, _ = self.split_outputs(self.inner_outputs)
            for s in infer_inner_shapes(self.inner_inputs, nit_out, inner_shapes):
                if s is None or any(d is None for d in s):
                    raise NotImplementedError(f"{self}: a per-step output's shape depends on "
                                              f"values computed inside the loop")
                out.append((n,) + s)
        if info.as_while:
            out.append(())
        return out

    def L_op(self, inputs, outputs, output_grads):
        from graphc.scan_module.grad import scan_grad
        return scan_grad(self, inputs, outputs, output_grads)

    def connection_pattern(self, node):
        # n_steps only sets the length: no gradient flows through it
        return [[False] * len(node.outputs)] + [[True] * len(node.outputs)
                                                for _ in node.inputs[1:]]


class _Final:
    """The latest value of a final-value state, in two buffers used in turn, so the value
    read by a step is never the array the step writes."""

    __slots__ = ("cur", "other")

    def __init__(self, init, dtype):
        self.cur = np.array(init, dtype=dtype, copy=True)
        self.other = hugemem.empty_like(self.cur)

    def store(self, v, index):
        if np.shape(v) != self.cur.shape:
            raise StepShapeError("final value", index, v)
        self.other[...] = v
        self.cur, self.other = self.other, self.cur


def make_scan(inner_inputs, inner_outputs, info, n_steps, outer_inputs):
    """Build a Scan node and return its outputs (always a list)."""
    return Scan(inner_inputs, inner_outputs, info).make_node(n_steps, *outer_inputs).outputs


def trace_finals(op, inputs, which):
    """Re-run the loop of ``op`` (applied to ``inputs``) with the final-value states in
    ``which`` kept as full buffers (1 + n entries: the init, then one per step).  The
    gradient needs them when a step's derivative depends on such a state's value."""
    info = op.info
    seqs, taps, finals, nonseqs = op.split_inner_inputs()
    st_out, fin_out, nit_out, cond = op.split_outputs(op.inner_outputs)
    n_steps, o_seqs, o_inits, o_finits, o_non = op.split_outer_inputs(inputs)
    keep = [i for i in range(info.n_final) if i not in which]
    new_in = seqs + [v for t in taps for v in t] + [finals[i] for i in which] + \
        [finals[i] for i in keep] + nonseqs
    new_out = st_out + [fin_out[i] for i in which] + [fin_out[i] for i in keep] + nit_out + \
        ([cond] if info.as_while else [])
    new_info = info.replace(state_taps=info.state_taps + ((-1,),) * len(which),
                            n_final=len(keep))
    outer = o_seqs + o_inits + [o_finits[i].dimshuffle(["x"] + list(range(o_finits[i].ndim)))
                                for i in which] + [o_finits[i] for i in keep] + o_non
    outs = make_scan(new_in, new_out, new_info, n_steps, outer)
    return outs[info.n_states:info.n_states + len(which)]
