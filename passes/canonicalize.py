"""`canonicalize`: rewrite equivalent spellings of an op to one canonical form (today: a
matmul by a constant matrix, and a linear followed by a constant bias add, become one `linear`
node). Both front ends apply it on import; the pass lets pipelines re-apply it after rewrites
(e.g. after constant folding exposes a constant weight)."""
from __future__ import annotations

from qcompile.frontend._canonical import canonicalize_graph
from qcompile.ir.graph import Graph
from qcompile.passmanager import PassContext, register_pass


@register_pass("canonicalize")
def canonicalize(graph: Graph, ctx: PassContext) -> bool:
    """matmul(x, const W) -> linear(x, W.T); add(linear(x, W), const b) -> linear(x, W, b)."""
    return canonicalize_graph(graph)
