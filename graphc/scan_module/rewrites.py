"""Graph rewrites for Scan nodes (a pass for the rewrite pipeline).

``prune_scans(fgraph)``: drop the outputs of each Scan that nothing reads, with the inner
computations and outer inputs only they needed.  The typical case is a gradient: the
backward loop computes the gradient of every float input of the forward loop (an op's
``L_op`` cannot know which ones the caller wants), and ``grad(cost, params)`` uses only the
parameters' accumulators; the per-step gradients of the input sequence, often a large
matrix product per step, go away here.

A state is kept when its output is read, or when a kept inner output reads its taps (a
fixpoint over the loop's dependencies).  The stop condition of an ``until`` loop and the
states it reads are always kept.

``pushout_scans(fgraph)``: hoist matrix products out of loops (see its docstring).
"""
from __future__ import annotations

from graphc.graph.basic import ancestors, io_toposort
from graphc.scan_module.op import Scan, make_scan
from graphc.scan_module.utils import is_zero, substitute
from graphc.tensor.basic import join, patternbroadcast
from graphc.tensor.elemwise import CAReduce, DimShuffle, Elemwise
from graphc.tensor.math import Dot, dot
from graphc.tensor.subtensor import SYM, Subtensor


def prune_scans(fgraph):
    """Rewrite every Scan of ``fgraph`` that has unread outputs or unused inputs.  Readers
    go first: a loop that stops reading another's output lets that one drop it."""
    for node in reversed(fgraph.toposort()):
        if isinstance(node.op, Scan) and node in fgraph.apply_nodes:
            _prune(fgraph, node)
    return fgraph


def _prune(fgraph, node):
    op, info = node.op, node.op.info
    used = [bool(fgraph.clients.get(o)) for o in node.outputs]
    n_st, n_fin = info.n_states, info.n_final
    keep_st, keep_fin = used[:n_st], used[n_st:n_st + n_fin]
    keep_nit = used[n_st + n_fin:n_st + n_fin + info.n_nit]
    st_out, fin_out, nit_out, cond = op.split_outputs(op.inner_outputs)
    seqs, taps, finals, nonseqs = op.split_inner_inputs()
    while True:
        kept = [o for o, k in zip(st_out, keep_st) if k] + \
            [o for o, k in zip(fin_out, keep_fin) if k] + \
            [o for o, k in zip(nit_out, keep_nit) if k] + ([cond] if info.as_while else [])
        needed = set(ancestors(kept))
        grow = [k for k in range(n_st) if not keep_st[k] and any(v in needed for v in taps[k])]
        grow_f = [i for i in range(n_fin) if not keep_fin[i] and finals[i] in needed]
        if not grow and not grow_f:
            break
        for k in grow:
            keep_st[k] = True
        for i in grow_f:
            keep_fin[i] = True
    keep_seq = [v in needed for v in seqs]
    keep_non = [v in needed for v in nonseqs]
    if all(keep_st + keep_fin + keep_nit + keep_seq + keep_non):
        return
    if not kept:
        return                       # nothing read: dead code elimination removes the node

    def pick(xs, mask):
        return [x for x, k in zip(xs, mask) if k]

    n_steps, o_seqs, o_inits, o_finits, o_non = op.split_outer_inputs(node.inputs)
    inner_in = pick(seqs, keep_seq) + [v for t in pick(taps, keep_st) for v in t] + \
        pick(finals, keep_fin) + pick(nonseqs, keep_non)
    new_info = info.replace(n_seqs=sum(keep_seq),
                            state_taps=tuple(pick(info.state_taps, keep_st)),
                            n_final=sum(keep_fin), n_nit=sum(keep_nit),
                            n_nonseqs=sum(keep_non))
    outer = pick(o_seqs, keep_seq) + pick(o_inits, keep_st) + pick(o_finits, keep_fin) + \
        pick(o_non, keep_non)
    new_outs = make_scan(inner_in, kept, new_info, n_steps, outer)
    old_st, old_fin, old_nit, old_done = op.split_outputs(node.outputs)
    olds = pick(old_st, keep_st) + pick(old_fin, keep_fin) + pick(old_nit, keep_nit) + \
        ([old_done] if info.as_while else [])
    for old, new in zip(olds, new_outs):
        if fgraph.clients.get(old):
            fgraph.replace(old, new, reason="prune_scans")


# ---------------------------------------------------------------------------- pushout
# Matrix products whose operands are a sequence slice and a loop constant, and gradient
# accumulators ``acc + x_t.T @ y_t`` / ``acc + sum(y_t, axis=0)``, need no loop: done once
# over all steps they are one large gemm (Theano's scan pushout optimizations), which BLAS
# runs several times faster than n small ones, and the loop keeps only the recurrence.


def pushout_scans(fgraph):
    """Move loop-invariant matrix products out of every Scan of ``fgraph``:

    - ``dot(x[t], W)`` (x a sequence, W a non-sequence) becomes a new sequence computed
      before the loop as ``dot(x.reshape(-1, k), W)``; a sequence that is an axis-0 slice
      of a larger array (the backward loop reads ``x[0:n][::-1]``) is computed on the base
      array and sliced the same way, so forward and backward loops share one product;
    - a final-value state ``acc + dot(a[t].T, y[t])`` or ``acc + sum(y[t], axis=0)`` becomes
      per-step outputs and one product (or sum) after the loop: ``init + dot(A.T, Y)`` with
      A, Y the steps stacked along the rows.
    Inputs the loop no longer reads are dropped afterwards (``prune_scans``)."""
    changed = False
    for node in list(fgraph.toposort()):
        if isinstance(node.op, Scan) and node in fgraph.apply_nodes:
            new = _pushout_dots(fgraph, node)
            changed |= new is not node
            node = new
            if node is not None:
                changed |= _pushout_accumulators(fgraph, node)
    if changed:
        prune_scans(fgraph)
    return fgraph


def _axis0_chain(v):
    """(base, subtensor nodes applied to it, innermost first) for ``v = base[s1][s2]...``
    where every index slices axis 0 only."""
    chain = []
    while v.owner is not None and isinstance(v.owner.op, Subtensor) and \
            _slices_axis0(v.owner.op.template):
        chain.append(v.owner)
        v = v.owner.inputs[0]
    return v, chain[::-1]


def _slices_axis0(template):
    full = ("slice", None, None, None)
    return bool(template) and template[0][0] == "slice" and \
        all(tuple(e) == full for e in template[1:])


def _rows(x):
    """(n, b, k) -> (n * b, k): the steps of a stacked 2-d per-step value, as rows."""
    return x.reshape((x.shape[0] * x.shape[1], x.shape[2]))


def _hoisted_dot(seq, w, ndim, fgraph):
    """``dot(seq[t], w)`` for every t at once, as an outer sequence."""
    base, chain = _axis0_chain(seq)
    computed = _products_of_loop(fgraph, base, w)
    if computed is not None:
        # rows 0..n-1 were computed by the loop that made ``base``; only the last is new
        computed, base, n = computed
        head = chain[0] if chain else None
        if head is not None and tuple(head.op.template[0]) in (
                ("slice", 0, SYM, None), ("slice", None, SYM, None)) and head.inputs[1] is n:
            out, chain = computed, chain[1:]        # buf[0:n]: exactly the loop's rows
        else:
            last = dot(base[-1], w)
            out = join(0, computed, last.dimshuffle(["x"] + list(range(last.ndim))))
    elif ndim == 1:
        out = dot(base, w)
    else:
        out = dot(_rows(base), w).reshape((base.shape[0], base.shape[1], w.shape[1]))
    for node in chain:
        out = node.op(out, *node.inputs[1:])
    return out


def _products_of_loop(fgraph, buf, w):
    """When ``buf`` is the buffer of a state (tap -1) of a Scan whose step computes
    ``dot(state[t-1], w)`` anyway (an RNN's ``h @ W_h``, which the backward loop would
    recompute over the whole history), make that Scan output the product per step and
    return (it, the new buffer, n_steps): the product is ``dot(buf[0:n], w)``, n rows.
    Else None."""
    node = buf.owner
    if node is None or not isinstance(node.op, Scan) or node not in fgraph.apply_nodes:
        return None
    op, info = node.op, node.op.info
    if info.as_while or buf.index >= info.n_states or info.state_taps[buf.index] != (-1,):
        return None
    seqs, taps, finals, nonseqs = op.split_inner_inputs()
    n_steps, o_seqs, o_inits, o_finits, o_non = op.split_outer_inputs(node.inputs)
    tap = taps[buf.index][0]
    wanted = {v for v, o in zip(nonseqs, o_non) if o is w}
    product = None
    for inner in io_toposort(op.inner_inputs, op.inner_outputs):
        if isinstance(inner.op, Dot) and inner.inputs[0] is tap and inner.inputs[1] in wanted:
            product = inner.outputs[0]
            break
    if product is None:
        return None
    st_out, fin_out, nit_out, _ = op.split_outputs(op.inner_outputs)
    if product in nit_out:          # asked before: the loop outputs it already
        k = info.n_states + info.n_final + nit_out.index(product)
        return node.outputs[k], buf, n_steps
    new_info = info.replace(n_nit=info.n_nit + 1)
    outs = make_scan(op.inner_inputs, st_out + fin_out + nit_out + [product], new_info,
                     n_steps, node.inputs[1:])
    for old, new in zip(node.outputs, outs):
        if fgraph.clients.get(old):
            fgraph.replace(old, new, reason="scan_pushout")
    return outs[-1], outs[buf.index], outs[-1].owner.inputs[0]


def _pushout_dots(fgraph, node):
    """Returns the (possibly new) Scan node whose outputs replaced ``node``'s."""
    op, info = node.op, node.op.info
    if info.as_while:               # the loop may stop early: products would be wasted
        return node
    seqs, taps, finals, nonseqs = op.split_inner_inputs()
    n_steps, o_seqs, o_inits, o_finits, o_non = op.split_outer_inputs(node.inputs)
    seq_pos = {v: j for j, v in enumerate(seqs)}
    non_pos = {v: j for j, v in enumerate(nonseqs)}
    found = []                      # (inner product, sequence, non-sequence, slice ndim)
    for inner in io_toposort(op.inner_inputs, op.inner_outputs):
        if not isinstance(inner.op, Dot):
            continue
        a, w = inner.inputs
        if a in seq_pos and w in non_pos and a.ndim in (1, 2) and w.ndim == 2:
            found.append((inner.outputs[0], seq_pos[a], non_pos[w], a.ndim))
    if not found:
        return node
    # First let the loops that made our sequences output the products they compute
    # (this replaces those loops, and with them our outer inputs), then build on the
    # graph as it is after all of them.
    for _, j, i, _ in found:
        _, o_seqs, _, _, o_non = op.split_outer_inputs(node.inputs)
        _products_of_loop(fgraph, _axis0_chain(o_seqs[j])[0], o_non[i])
    n_steps, o_seqs, o_inits, o_finits, o_non = op.split_outer_inputs(node.inputs)
    hoisted = {v: _hoisted_dot(o_seqs[j], o_non[i], nd, fgraph) for v, j, i, nd in found}
    slices = [v.type("pushed_dot[t]") for v in hoisted]
    new_outs = substitute(op.inner_outputs, dict(zip(hoisted, slices)))
    inner_in = seqs + slices + [v for t in taps for v in t] + finals + nonseqs
    new_info = info.replace(n_seqs=info.n_seqs + len(slices))
    outs = make_scan(inner_in, new_outs, new_info, n_steps,
                     o_seqs + list(hoisted.values()) + o_inits + o_finits + o_non)
    for old, new in zip(node.outputs, outs):
        if fgraph.clients.get(old):
            fgraph.replace(old, new, reason="scan_pushout")
    return outs[0].owner


def _summed_over_steps(term):
    """For a per-step ``term`` that is a sum over the rows of per-step values, (factors,
    build): ``build(*stacked factors)`` computes the sum of ``term`` over all steps."""
    o = term.owner
    if o is None:
        return None
    if isinstance(o.op, Dot):
        a, y = o.inputs
        if a.owner is not None and isinstance(a.owner.op, DimShuffle) and \
                a.owner.op.new_order == (1, 0) and y.ndim == 2:
            # sum_t a_t.T @ y_t == A.T @ Y with the steps stacked as rows
            return [a.owner.inputs[0], y], lambda A, Y: dot(_rows(A).T, _rows(Y))
        return None
    ds = None
    if isinstance(o.op, DimShuffle) and not o.op.drop and o.op.perm == tuple(
            range(o.op.input_ndim)):
        ds, o = o.op, o.inputs[0].owner  # only broadcastable dimensions added
        if o is None:
            return None
    if isinstance(o.op, CAReduce) and o.op.kind == "add" and o.op.axis == (0,):
        red = o.op

        def build(Y):
            s = CAReduce("add", (0, 1), red.acc_dtype)(Y)
            return ds(s) if ds is not None else s
        return [o.inputs[0]], build
    return None


def _pushout_accumulators(fgraph, node) -> bool:
    op, info = node.op, node.op.info
    if info.as_while:
        return False
    seqs, taps, finals, nonseqs = op.split_inner_inputs()
    st_out, fin_out, nit_out, cond = op.split_outputs(op.inner_outputs)
    n_steps, o_seqs, o_inits, o_finits, o_non = op.split_outer_inputs(node.inputs)
    pushed = {}                     # final index -> (factors, build)
    for i, (acc, new) in enumerate(zip(finals, fin_out)):
        if new.owner is None or not isinstance(new.owner.op, Elemwise) or \
                new.owner.op.scalar_op.name != "add" or len(new.owner.inputs) != 2:
            continue
        a, b = new.owner.inputs
        term = b if a is acc else a if b is acc else None
        if term is None or term.dtype != acc.dtype:
            continue
        recipe = _summed_over_steps(term)
        if recipe is None:
            continue
        others = [o for k, o in enumerate(op.inner_outputs) if k != info.n_states + i]
        needed = set(ancestors(others))
        if acc in needed or new in needed or acc in ancestors([term]) or \
                any(f in nonseqs for f in recipe[0]):
            continue
        pushed[i] = recipe
    if not pushed:
        return False
    seq_pos = {v: j for j, v in enumerate(seqs)}
    new_nit = []                    # per-step values the loop now outputs
    for factors, _ in pushed.values():
        for f in factors:
            if f not in seq_pos and f not in new_nit:
                new_nit.append(f)
    keep = [i for i in range(info.n_final) if i not in pushed]
    inner_in = seqs + [v for t in taps for v in t] + [finals[i] for i in keep] + nonseqs
    inner_out = st_out + [fin_out[i] for i in keep] + nit_out + new_nit + \
        ([cond] if info.as_while else [])
    new_info = info.replace(n_final=len(keep), n_nit=info.n_nit + len(new_nit))
    outs = make_scan(inner_in, inner_out, new_info, n_steps,
                     o_seqs + o_inits + [o_finits[i] for i in keep] + o_non)
    n_st, n_keep = info.n_states, len(keep)
    stacked = {f: outs[n_st + n_keep + info.n_nit + k] for k, f in enumerate(new_nit)}
    for f, j in seq_pos.items():
        stacked[f] = o_seqs[j][:n_steps]
    old_st, old_fin, old_nit, _ = op.split_outputs(node.outputs)
    pairs = list(zip(old_st, outs[:n_st]))
    pairs += [(old_fin[i], outs[n_st + p]) for p, i in enumerate(keep)]
    pairs += list(zip(old_nit, outs[n_st + n_keep:n_st + n_keep + info.n_nit]))
    for i, (factors, build) in pushed.items():
        total = build(*[stacked[f] for f in factors])
        if not is_zero(o_finits[i]):    # a gradient's accumulator starts at zeros
            total = o_finits[i] + total
        fitted = _fit(old_fin[i], total)
        if fitted is None:
            return False            # nothing replaced yet: the graph is unchanged
        pairs.append((old_fin[i], fitted))
    for old, new in pairs:
        if fgraph.clients.get(old):
            fgraph.replace(old, new, reason="scan_pushout")
    return True


def _fit(old, new):
    """``new`` with ``old``'s type (same dtype and rank; static shape info restored)."""
    if new.dtype != old.dtype or new.ndim != old.ndim:
        return None
    if new.type == old.type:
        return new
    return old.type.convert_variable(patternbroadcast(new, old.broadcastable))
