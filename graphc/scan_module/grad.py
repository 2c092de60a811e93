"""Backpropagation through time: the gradient of a Scan is another Scan, run backwards.

Step t of the forward loop maps (sequence slices, state taps, final values, non-sequences)
to (new states, new finals, per-step outputs).  The backward loop visits t = n-1 ... 0
(or only the last ``truncate_gradient`` steps) and, at each step, applies the vector-Jacobian
product of the forward step (built with ``graphc.grad`` on a copy of the inner graph, so
the forward values of the step are recomputed from the stored buffers):

- the adjoint of state k's value at time t is the output gradient ``gY_k[t]`` plus what
  later steps sent back through their taps.  Those pending adjoints live in a *window*
  ``W_k`` of L_k entries (times t-L_k+1 .. t), carried as a final-value state of the
  backward loop: a step consumes ``W_k[-1]``, shifts the window by one, and adds its tap
  gradients at positions ``L_k + tau``.  After time 0 the window holds the adjoints of
  times -L_k .. -1: the gradient of the initial value.  With L_k = 1 (taps (-1,)) the
  window is carried as the adjoint itself, of the state's shape (no slicing per step);
- gradients of non-sequences are summed over steps in accumulators (final-value states);
- gradients of sequence slices are per-step outputs, reversed back into time order.

So the backward loop keeps O(L_k) adjoint state, never the whole history.  Final-value
states whose values the backward step needs are recomputed as full buffers
(``trace_finals``); this is what makes grad-of-grad through a backward loop work.
"""
from __future__ import annotations

from graphc.graph.basic import Constant, ancestors, clone_replace
from graphc.scan_module.op import make_scan, trace_finals
from graphc.scan_module.utils import is_zero
from graphc.tensor.type import TensorType, is_float


def _reversed_steps(x, start, n):
    """x[start : start + n] in reverse order: the backward loop's view of a sequence."""
    return x[start:start + n][::-1]


def scan_grad(op, inputs, outputs, output_grads):
    from graphc import gradient
    from graphc.tensor import basic as tb
    from graphc.tensor import math as tm
    from graphc.tensor.subtensor import inc_subtensor, set_subtensor

    info = op.info
    n_steps, o_seqs, o_inits, o_finits, o_non = op.split_outer_inputs(inputs)
    Y, F, _, n_done = op.split_outputs(outputs)
    gY, gF, gZ, _ = op.split_outputs(output_grads)
    n = n_done if info.as_while else n_steps
    truncated = info.truncate_gradient != -1
    m = tm.minimum(n, info.truncate_gradient) if truncated else n

    # a fresh copy of the forward step, differentiated symbolically
    fin = [v.type(v.name) for v in op.inner_inputs]
    fout = clone_replace(op.inner_outputs, dict(zip(op.inner_inputs, fin)))
    i_seqs, i_taps, i_fin, i_non = op.split_inner_inputs(fin)
    f_st, f_fin, f_nit, _ = op.split_outputs(fout)

    known = {}

    def seed(var, g):
        if not isinstance(var, Constant):
            known[var] = known[var] + g if var in known else g

    seq_in, seq_outer = [], []          # backward sequences: placeholder, outer variable
    windows = []                        # (state index, window placeholder)
    for k, lag in enumerate(info.lags):
        if not is_float(Y[k].dtype):
            continue
        state_t = i_taps[k][0].type
        if lag == 1:        # the window is the one pending adjoint: carry it as it is
            W = state_t(f"adjoint{k}")
            u = W
        else:
            W = TensorType(state_t.dtype, shape=(lag,) + state_t.shape)(f"adjoint_window{k}")
            u = W[lag - 1]
        if not is_zero(gY[k]):
            gy = state_t(f"gY{k}[t]")
            seq_in.append(gy)
            seq_outer.append(_reversed_steps(gY[k], lag, n))
            u = u + gy
        seed(f_st[k], u)
        windows.append((k, W))
    fin_adj = []                        # (final index, adjoint placeholder)
    for i, f in enumerate(i_fin):
        if is_float(f.dtype):
            wf = f.type(f"adjoint_final{i}")
            seed(f_fin[i], wf)
            fin_adj.append((i, wf))
    for j, z in enumerate(f_nit):
        if is_float(z.dtype) and not is_zero(gZ[j]):
            gz = TensorType(z.dtype, shape=z.type.shape)(f"gZ{j}[t]")
            seq_in.append(gz)
            seq_outer.append(_reversed_steps(gZ[j], 0, n))
            seed(z, gz)

    nothing = [gradient.disconnected_grad_type() for _ in inputs]
    if not known:
        return nothing
    tap_vars = [v for t in i_taps for v in t]
    wrt = [v for v in i_seqs + tap_vars + i_fin + i_non if is_float(v.dtype)]
    g_list = gradient.grad(None, wrt, known_grads=known, disconnected_inputs="ignore",
                           return_disconnected="Disconnected", null_gradients="return")
    g = {}
    for v, gv in zip(wrt, g_list):
        if gradient._is_null(gv):
            if v in tap_vars or v in i_fin:
                # an undefined gradient flows into every earlier step: nothing is defined
                return [gv if is_float(x.dtype) else gradient.disconnected_grad_type()
                        for x in inputs]
            g[v] = gv
        elif not gradient._is_disconnected(gv):
            g[v] = gv

    # backward loop state: windows, final adjoints, non-sequence accumulators
    fin_ph, fin_init, fin_new = [], [], []
    for k, W in windows:
        lag, taps = info.lags[k], info.state_taps[k]
        if lag == 1:
            gt = g.get(i_taps[k][0])
            new = tb.zeros_like(W) if gt is None else gt
        else:
            new = tb.join(0, tb.zeros_like(W[:1]), W[:-1])
            for tau, v in zip(taps, i_taps[k]):
                if v in g:
                    new = inc_subtensor(new[lag + tau], g[v])
        fin_ph.append(W)
        fin_init.append(tb.zeros_like(o_inits[k][0] if lag == 1 else o_inits[k][:lag]))
        fin_new.append(new)
    for i, wf in fin_adj:
        fin_ph.append(wf)
        fin_init.append(gF[i])
        fin_new.append(g.get(i_fin[i], tb.zeros_like(wf)))
    acc_of = {}
    for idx, v in enumerate(i_non):
        if v in g and not gradient._is_null(g[v]):
            acc = v.type(f"grad_acc_{v.name or idx}")
            acc_of[idx] = len(fin_ph)
            fin_ph.append(acc)
            fin_init.append(tb.zeros_like(o_non[idx]))
            fin_new.append(acc + g[v])
    nit_of = {}
    nit_new = []
    for j, v in enumerate(i_seqs):
        if v in g and not gradient._is_null(g[v]):
            nit_of[j] = len(nit_new)
            nit_new.append(g[v])

    # which forward values the backward step reads
    used = set(ancestors(fin_new + nit_new))
    for j, v in enumerate(i_seqs):
        if v in used:
            seq_in.append(v)
            seq_outer.append(_reversed_steps(o_seqs[j], 0, n))
    for k, lag in enumerate(info.lags):
        for tau, v in zip(info.state_taps[k], i_taps[k]):
            if v in used:
                seq_in.append(v)
                seq_outer.append(_reversed_steps(Y[k], lag + tau, n))
    need = [i for i, v in enumerate(i_fin) if v in used]
    if need:
        for i, traj in zip(need, trace_finals(op, inputs, need)):
            seq_in.append(i_fin[i])
            seq_outer.append(_reversed_steps(traj, 0, n))
    non_in = [(v, o) for v, o in zip(i_non, o_non) if v in used]

    b_out = []
    if fin_new or nit_new:
        b_info = info.replace(n_seqs=len(seq_in), state_taps=(), n_final=len(fin_ph),
                              n_nit=len(nit_new), n_nonseqs=len(non_in), as_while=False,
                              truncate_gradient=-1, name=f"grad_of_{info.name}")
        b_out = make_scan(seq_in + fin_ph + [v for v, _ in non_in], fin_new + nit_new, b_info,
                          m, seq_outer + fin_init + [o for _, o in non_in])
    b_fin, b_nit = b_out[:len(fin_ph)], b_out[len(fin_ph):]

    def reached_start(x):
        """The loop's initial values get gradient only when backprop reached step 0."""
        if not truncated:
            return x
        return tm.switch(tm.ge(m, n), x, tb.zeros_like(x))

    result = [gradient.disconnected_grad_type()]       # n_steps
    for j, s in enumerate(o_seqs):
        if j in nit_of:
            gs = b_nit[nit_of[j]][::-1]
            result.append(set_subtensor(tb.zeros_like(s)[n - m:n], gs))
        else:
            gv = g.get(i_seqs[j])
            result.append(gv if gradient._is_null(gv) else gradient.disconnected_grad_type())
    win_of = {k: w for w, (k, _) in enumerate(windows)}
    for k, (lag, init) in enumerate(zip(info.lags, o_inits)):
        if k not in win_of:
            result.append(gradient.disconnected_grad_type())
            continue
        gi = reached_start(b_fin[win_of[k]])
        if lag == 1:
            gi = gi.dimshuffle(["x"] + list(range(gi.ndim)))
        if not is_zero(gY[k]):
            gi = gi + gY[k][:lag]
        if init.type.shape[0] != lag:
            gi = set_subtensor(tb.zeros_like(init)[:lag], gi)
        result.append(gi)
    fin_pos = {i: len(windows) + p for p, (i, _) in enumerate(fin_adj)}
    for i in range(info.n_final):
        result.append(reached_start(b_fin[fin_pos[i]]) if i in fin_pos else
                      gradient.disconnected_grad_type())
    for idx, v in enumerate(i_non):
        if idx in acc_of:
            result.append(b_fin[acc_of[idx]])
        elif gradient._is_null(g.get(v)):
            result.append(g[v])
        else:
            result.append(gradient.disconnected_grad_type())
    return result

