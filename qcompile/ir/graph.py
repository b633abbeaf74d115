"""The graph IR: `Value`s produced by `Node`s, held in topological order by a `Graph`.

A `Value` is an edge: a name, a `TensorType`, optional `QuantParams`, and either a producer
node, or constant `data` (weights), or neither (a graph input). A `Node` has an `op` name that
the op registry knows, ordered inputs (a missing optional input is None), outputs and `attrs`.

Passes mutate graphs only through the methods here (insert, replace, replace_all_uses, erase),
which keep use lists and topological order correct and bump `Graph.version`, so the pass
manager can tell whether a pass changed anything.
"""
from __future__ import annotations

import itertools
import re
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from .types import QuantParams, TensorType, dtype_from_numpy


class Value:
    __slots__ = ("name", "type", "quant", "data", "producer", "users", "data_hash", "__weakref__")

    def __init__(self, name: str, type: TensorType, quant: Optional[QuantParams] = None,
                 data: Optional[np.ndarray] = None):
        self.name = name
        self.type = type
        self.quant = quant
        self.data = data
        self.producer: Optional[Node] = None
        self.users: list[Node] = []
        # For constants parsed from a summary dump: the content hash the text carried.
        self.data_hash: Optional[str] = None

    @property
    def is_constant(self) -> bool:
        return self.data is not None or self.data_hash is not None

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def __repr__(self) -> str:
        return f"Value(%{self.name}: {self.type.shape} {self.type.dtype})"


class Node:
    __slots__ = ("op", "inputs", "outputs", "attrs", "loc", "graph")

    def __init__(self, op: str, inputs: Sequence[Optional[Value]], outputs: Sequence[Value],
                 attrs: Optional[dict] = None, loc: str = ""):
        self.op = op
        self.inputs: list[Optional[Value]] = list(inputs)
        self.outputs: list[Value] = list(outputs)
        self.attrs: dict = dict(attrs or {})
        self.loc = loc
        self.graph: Optional[Graph] = None

    @property
    def name(self) -> str:
        """A node is named after its first output; that is how errors and dumps refer to it."""
        return self.outputs[0].name if self.outputs else f"<{self.op}>"

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"node {self.name} ({self.op}) has {len(self.outputs)} outputs")
        return self.outputs[0]

    def input(self, i: int) -> Optional[Value]:
        return self.inputs[i] if i < len(self.inputs) else None

    def __repr__(self) -> str:
        return f"Node({self.op} -> %{self.name})"


_NAME_OK = re.compile(r"[A-Za-z0-9_.$:/\-]+")


class Graph:
    """A function from `inputs` to `outputs`; `nodes` are kept in topological order."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.constants: dict[str, Value] = {}
        self.values: dict[str, Value] = {}
        self.version = 0
        self.meta: dict = {}  # free-form, e.g. calibration statistics later passes read

    # ---- construction -------------------------------------------------------------------
    def fresh_name(self, hint: str = "v") -> str:
        """A value name not used yet in this graph, derived from `hint`."""
        hint = hint or "v"
        if hint not in self.values:
            return hint
        base = re.sub(r"_\d+$", "", hint)
        for i in itertools.count(1):
            cand = f"{base}_{i}"
            if cand not in self.values:
                return cand
        raise AssertionError

    def _register(self, value: Value) -> Value:
        if value.name in self.values and self.values[value.name] is not value:
            raise ValueError(f"value name %{value.name} is already defined in graph @{self.name}")
        self.values[value.name] = value
        return value

    def add_input(self, name: str, type: TensorType, quant: Optional[QuantParams] = None) -> Value:
        value = self._register(Value(self.fresh_name(name), type, quant))
        self.inputs.append(value)
        self.version += 1
        return value

    def add_constant(self, name: str, data: np.ndarray, dtype: Optional[str] = None,
                     quant: Optional[QuantParams] = None) -> Value:
        """A constant value; `data` is kept as given (converted to the dtype's numpy type)."""
        from .types import numpy_dtype
        arr = np.asarray(data)
        dtype = dtype or dtype_from_numpy(arr.dtype)
        # ascontiguousarray would turn a 0-d array into shape (1,); keep scalars scalar.
        arr = np.ascontiguousarray(arr.astype(numpy_dtype(dtype), copy=False)).reshape(arr.shape)
        value = self._register(Value(self.fresh_name(name), TensorType(arr.shape, dtype), quant, arr))
        self.constants[value.name] = value
        self.version += 1
        return value

    def make_node(self, op: str, inputs: Sequence[Optional[Value]], attrs: Optional[dict] = None,
                  name: str = "", loc: str = "", num_outputs: int = 1,
                  output_types: Optional[Sequence[TensorType]] = None) -> Node:
        """A new node whose output types come from the op registry's inference (not inserted yet)."""
        from .ops import registry
        opdef = registry.get(op)
        attrs = opdef.complete_attrs(attrs or {}, where=name or op)
        if output_types is None:
            output_types = opdef.infer([v.type if v is not None else None for v in inputs], attrs)
        outs = []
        for i, t in enumerate(output_types):
            hint = name or op
            outs.append(Value(self.fresh_name(hint if i == 0 else f"{hint}.{i}"), t))
            self.values[outs[-1].name] = outs[-1]  # reserve the name now
        return Node(op, inputs, outs, attrs, loc)

    def append(self, node: Node) -> Node:
        return self.insert(len(self.nodes), node)

    def add_node(self, op: str, inputs: Sequence[Optional[Value]], attrs: Optional[dict] = None,
                 name: str = "", loc: str = "", **kw) -> Node:
        """Create a node (types inferred) and append it at the end."""
        return self.append(self.make_node(op, inputs, attrs, name=name, loc=loc, **kw))

    def insert(self, index: int, node: Node) -> Node:
        for out in node.outputs:
            self._register(out)
            out.producer = node
        for inp in node.inputs:
            if inp is not None:
                inp.users.append(node)
        node.graph = self
        self.nodes.insert(index, node)
        self.version += 1
        return node

    def insert_before(self, anchor: Node, node: Node) -> Node:
        return self.insert(self.index(anchor), node)

    def insert_after(self, anchor: Node, node: Node) -> Node:
        return self.insert(self.index(anchor) + 1, node)

    def index(self, node: Node) -> int:
        for i, n in enumerate(self.nodes):
            if n is node:
                return i
        raise ValueError(f"node {node.name} is not in graph @{self.name}")

    # ---- rewriting ----------------------------------------------------------------------
    def set_input(self, node: Node, i: int, value: Optional[Value]) -> None:
        old = node.inputs[i]
        if old is not None:
            old.users.remove(node)
        node.inputs[i] = value
        if value is not None:
            value.users.append(node)
        self.version += 1

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Every use of `old` (node inputs and graph outputs) now reads `new`."""
        if old is new:
            return
        for user in list(old.users):
            for i, v in enumerate(user.inputs):
                if v is old:
                    user.inputs[i] = new
                    new.users.append(user)
        old.users.clear()
        self.outputs = [new if v is old else v for v in self.outputs]
        self.version += 1

    def erase(self, node: Node) -> None:
        """Remove `node`; its outputs must have no users left (and not be graph outputs)."""
        for out in node.outputs:
            if out.users or out in self.outputs:
                raise ValueError(f"cannot erase {node.name}: %{out.name} is still used")
        for inp in node.inputs:
            if inp is not None:
                inp.users.remove(node)
        for out in node.outputs:
            self.values.pop(out.name, None)
            out.producer = None
        self.nodes.pop(self.index(node))
        node.graph = None
        self.version += 1

    def replace_node(self, old: Node, new: Node) -> Node:
        """Put `new` where `old` stood; old outputs' uses move to new outputs position by position."""
        if len(new.outputs) != len(old.outputs):
            raise ValueError(f"replacement for {old.name} has {len(new.outputs)} outputs, "
                             f"expected {len(old.outputs)}")
        self.insert_before(old, new)
        for o, n in zip(old.outputs, new.outputs):
            self.replace_all_uses(o, n)
        self.erase(old)
        return new

    def remove_constant(self, value: Value) -> None:
        if value.users or value in self.outputs:
            raise ValueError(f"constant %{value.name} is still used")
        self.constants.pop(value.name, None)
        self.values.pop(value.name, None)
        self.version += 1

    def rename(self, value: Value, new_name: str) -> None:
        if new_name in self.values:
            raise ValueError(f"value name %{new_name} is already defined")
        self.values.pop(value.name)
        if value.name in self.constants:
            self.constants.pop(value.name)
            self.constants[new_name] = value
        value.name = new_name
        self.values[new_name] = value
        self.version += 1

    def toposort(self) -> None:
        """Restore topological order (stable: keeps the current order where it is legal)."""
        import networkx as nx
        order = {id(n): i for i, n in enumerate(self.nodes)}
        dg = nx.DiGraph()
        dg.add_nodes_from(range(len(self.nodes)))
        for i, n in enumerate(self.nodes):
            for v in n.inputs:
                if v is not None and v.producer is not None and id(v.producer) in order:
                    dg.add_edge(order[id(v.producer)], i)
        new = [self.nodes[i] for i in nx.lexicographical_topological_sort(dg)]
        if new != self.nodes:
            self.nodes = new
            self.version += 1

    # ---- queries ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes))

    def find(self, op: str) -> list[Node]:
        return [n for n in self.nodes if n.op == op]

    def value(self, name: str) -> Value:
        try:
            return self.values[name]
        except KeyError:
            raise KeyError(f"no value %{name} in graph @{self.name}") from None

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return dict(sorted(counts.items()))

    def to_networkx(self):
        """A networkx DiGraph of node names (edges follow data flow) for graph algorithms."""
        import networkx as nx
        dg = nx.DiGraph()
        for n in self.nodes:
            dg.add_node(n.name, node=n)
            for v in n.inputs:
                if v is not None and v.producer is not None:
                    dg.add_edge(v.producer.name, n.name, value=v.name)
        return dg

    def copy(self) -> "Graph":
        """A deep structural copy; constant arrays are shared (treat them as immutable)."""
        g = Graph(self.name)
        g.meta = dict(self.meta)
        vmap: dict[int, Value] = {}

        def clone(v: Value) -> Value:
            c = Value(v.name, v.type, v.quant, v.data)
            c.data_hash = v.data_hash
            vmap[id(v)] = c
            g.values[c.name] = c
            return c

        for v in self.inputs:
            g.inputs.append(clone(v))
        for name, v in self.constants.items():
            g.constants[name] = clone(v)
        for n in self.nodes:
            outs = [clone(o) for o in n.outputs]
            ins = [None if v is None else vmap[id(v)] for v in n.inputs]
            new = Node(n.op, ins, outs, dict(n.attrs), n.loc)
            for o in outs:
                o.producer = new
            for v in ins:
                if v is not None:
                    v.users.append(new)
            new.graph = g
            g.nodes.append(new)
        g.outputs = [vmap[id(v)] for v in self.outputs]
        return g

    def dump(self, full: bool = False) -> str:
        """The text form (constants summarised unless `full`)."""
        from .printer import print_graph
        return print_graph(self, full=full)

    def __str__(self) -> str:
        return self.dump()

    def verify(self) -> None:
        from .verifier import verify
        verify(self)


def valid_name(name: str) -> bool:
    """Whether `name` prints bare after `%` (otherwise the printer quotes it)."""
    return bool(_NAME_OK.fullmatch(name))
