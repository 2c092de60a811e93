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
"""
from __future__ import annotations

from graphc.graph.basic import ancestors
from graphc.scan_module.op import Scan, make_scan


def prune_scans(fgraph):
    """Rewrite every Scan of ``fgraph`` that has unread outputs or unused inputs."""
    for node in list(fgraph.toposort()):
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
