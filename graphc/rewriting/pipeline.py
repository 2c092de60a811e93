"""The rewrite pipeline (placeholder until the optimizer lands: runs no pass)."""


def optimize(fgraph, mode):
    return fgraph
