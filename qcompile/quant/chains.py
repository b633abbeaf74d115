"""Layer-chain discovery for the data-free PTQ passes (equalization, bias absorption, bias
correction), and the per-channel weight arithmetic they share.

A *link* joins two MAC layers (conv2d or linear with a constant weight) when the output of the
first reaches the data input of the second only through ops that act on each channel on its own
and commute with a positive per-channel scale: positively homogeneous activations (relu, prelu,
leaky_relu, identity), pooling, and pure data movement (reshape, flatten, transpose, ...).
Optionally clip may be allowed too (the caller then has to deal with its threshold). Every value
on the way must have exactly one user and must not be a graph output: a fork (a residual branch)
means the scaled channels would also reach someone who does not undo the scale.

Data movement can move channels around (MTCNN flattens in (W, H, C) order), so a link carries a
`channel_map`: for every input feature of the second layer, the output channel of the first layer
it comes from. It is found by pushing an array of channel indices through the ops' own kernels.

A *chain* is a maximal sequence of layers joined by links (conv -> depthwise -> conv in a
MobileNet block is one chain of three layers). Chains are the weakly connected components of the
link graph, which is a set of paths because every layer has one data input and, on a link, one user.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import networkx as nx
import numpy as np

from ..ir.graph import Graph, Node, Value
from ..ir.ops import registry

MAC_OPS = ("conv2d", "linear")
# Act on each channel (axis 1) separately and commute with a positive per-channel scale.
POOL_OPS = ("max_pool2d", "avg_pool2d", "global_avg_pool")


def is_layer(node: Node) -> bool:
    """A conv2d/linear whose weight (and bias, if any) is constant: something we can rescale."""
    if node.op not in MAC_OPS or len(node.inputs) < 2:
        return False
    w, b = node.inputs[1], node.input(2)
    return (w is not None and w.data is not None and (b is None or b.data is not None)
            and w.type.rank == (4 if node.op == "conv2d" else 2))


def out_axis(node: Node) -> int:
    """Channel axis of a layer's output (NCHW for conv2d, features last for linear)."""
    return 1 if node.op == "conv2d" else node.output.type.rank - 1


def in_axis(node: Node) -> int:
    """Channel axis of a layer's data input."""
    return 1 if node.op == "conv2d" else node.inputs[0].type.rank - 1


@dataclass
class Link:
    """`src`'s output reaches `dst`'s data input through `ops` (in order).

    `channel_map[j]` is the output channel of `src` that input feature j of `dst` reads."""

    src: Node
    dst: Node
    ops: list[Node]
    channel_map: np.ndarray

    @property
    def activations(self) -> list[Node]:
        """The elementwise ops on the way (relu, prelu, clip, ...), not pooling or reshapes."""
        return [n for n in self.ops if "elementwise" in registry.get(n.op).traits]

    @property
    def through_clip(self) -> bool:
        return any(n.op == "clip" for n in self.ops)


@dataclass
class Chain:
    """Layers joined by links: `links[i]` joins `layers[i]` and `layers[i + 1]`."""

    layers: list[Node]
    links: list[Link] = field(default_factory=list)

    def __str__(self) -> str:
        return " -> ".join(f"%{n.name}" for n in self.layers)


def _passable(node: Node, allow_clip: bool) -> bool:
    traits = registry.get(node.op).traits
    if node.op in POOL_OPS or "shape" in traits or "positively_homogeneous" in traits:
        return True
    return allow_clip and node.op == "clip"


def _static_shape(value: Value) -> tuple:
    return tuple(1 if d is None else d for d in value.type.shape)


def _index_array(value: Value, axis: int) -> np.ndarray:
    """An array shaped like `value` holding at every element its index along `axis`."""
    shape = _static_shape(value)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(np.arange(shape[axis], dtype=np.float64).reshape(view), shape)


def per_axis(idx: np.ndarray, axis: int) -> Optional[np.ndarray]:
    """The 1-D map along `axis` if `idx` is the same at every position of the other axes."""
    moved = np.moveaxis(np.asarray(idx), axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    if rows.shape[0] == 0 or not np.all(rows == rows[:1]):
        return None
    return rows[0].astype(np.int64)


def _push(idx: np.ndarray, node: Node) -> Optional[np.ndarray]:
    """Carry the channel-index array through one op; None if channels stop being separable."""
    out_shape = _static_shape(node.output)
    if node.op in POOL_OPS:
        # Pools keep axis 1; they need each channel plane to be one source channel.
        chan = per_axis(idx, 1)
        if chan is None:
            return None
        view = [1] * len(out_shape)
        view[1] = len(chan)
        return np.broadcast_to(chan.astype(np.float64).reshape(view), out_shape)
    if "elementwise" in registry.get(node.op).traits or node.op == "identity":
        return idx
    try:  # data movement: its own kernel moves the indices exactly like the data
        out = registry.get(node.op).kernels["float"](np.ascontiguousarray(idx), **node.attrs)
    except Exception:
        return None
    out = np.asarray(out)
    return out if out.shape == out_shape else None


def channels_at(src: Node, ops: Iterable[Node]) -> Optional[np.ndarray]:
    """Which output channel of `src` each index along axis 1 holds after `ops` (None if mixed)."""
    idx = _index_array(src.output, out_axis(src))
    for node in ops:
        idx = _push(idx, node)
        if idx is None:
            return None
    return per_axis(idx, 1) if idx.ndim >= 2 else None


def channel_map(src: Node, ops: Iterable[Node], dst: Node) -> Optional[np.ndarray]:
    """For each input feature of `dst`, the output channel of `src` it reads (None if mixed)."""
    idx = _index_array(src.output, out_axis(src))
    for node in ops:
        idx = _push(idx, node)
        if idx is None:
            return None
    if idx.shape != _static_shape(dst.inputs[0]):
        return None
    return per_axis(idx, in_axis(dst))


def _sole_user(value: Value, graph: Graph) -> Optional[Node]:
    if len(value.users) != 1 or value in graph.outputs:
        return None
    return value.users[0]


def follow(graph: Graph, layer: Node, allow_clip: bool = False) -> Optional[Link]:
    """The link from `layer` to the next layer, or None if there is none (fork, other op...)."""
    if not is_layer(layer):
        return None
    ops, value = [], layer.output
    while True:
        user = _sole_user(value, graph)
        if user is None:
            return None
        if is_layer(user) and user.inputs[0] is value and value not in user.inputs[1:]:
            cmap = channel_map(layer, ops, user)
            return None if cmap is None else Link(layer, user, ops, cmap)
        if not _passable(user, allow_clip) or user.inputs[0] is not value \
                or len(user.outputs) != 1:
            return None
        # Only the data input may be an activation; prelu's slope and the like are constants.
        if any(v is not None and v.data is None for v in user.inputs[1:]):
            return None
        # A clip is rescaled per channel by the caller, so its channels must stay separable.
        if user.op == "clip" and channels_at(layer, ops) is None:
            return None
        ops.append(user)
        value = user.output


def trace_input(graph: Graph, layer: Node, allow_clip: bool = True) -> Optional[Link]:
    """The layer feeding `layer`'s data input through passable ops, as a link, ignoring forks.

    Statistics (bias correction) only need the data path; unlike `follow`, other users of the
    values on the way do not matter."""
    ops, value = [], layer.inputs[0]
    while value is not None and value.producer is not None:
        node = value.producer
        if is_layer(node):
            ops.reverse()
            cmap = channel_map(node, ops, layer)
            return None if cmap is None else Link(node, layer, ops, cmap)
        if not _passable(node, allow_clip) or len(node.outputs) != 1:
            return None
        ops.append(node)
        value = node.inputs[0]
    return None


def find_links(graph: Graph, allow_clip: bool = False) -> list[Link]:
    """Every link of the graph, in topological order of their first layer."""
    links = []
    for node in graph.nodes:
        link = follow(graph, node, allow_clip)
        if link is not None:
            links.append(link)
    return links


def find_chains(graph: Graph, allow_clip: bool = False) -> list[Chain]:
    """Maximal chains of two or more layers, in topological order."""
    links = find_links(graph, allow_clip)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    dg = nx.DiGraph()
    by_edge = {}
    for link in links:
        dg.add_edge(id(link.src), id(link.dst))
        by_edge[(id(link.src), id(link.dst))] = link
    nodes = {id(n): n for n in graph.nodes}
    chains = []
    for component in nx.weakly_connected_components(dg):
        layers = sorted(component, key=order.__getitem__)
        chain = Chain([nodes[i] for i in layers])
        chain.links = [by_edge[(a, b)] for a, b in zip(layers, layers[1:])]
        chains.append(chain)
    chains.sort(key=lambda c: order[id(c.layers[0])])
    return chains


# ---- per-channel weight arithmetic --------------------------------------------------------------

def input_index(layer: Node, weight: np.ndarray, cmap: Optional[np.ndarray] = None) -> np.ndarray:
    """(O, I_w) array: which source channel weight slice [o, k] multiplies.

    For a grouped conv, slice [o, k] reads input channel (o // (O / groups)) * (I / groups) + k;
    `cmap` (default: identity) then maps that input channel to the source layer's channel."""
    o, k = weight.shape[:2]
    if layer.op == "conv2d":
        groups = int(layer.attrs.get("groups", 1))
        rows = (np.arange(o) // (o // groups)) * k
        idx = rows[:, None] + np.arange(k)[None, :]
    else:
        idx = np.broadcast_to(np.arange(k)[None, :], (o, k))
    return idx if cmap is None else np.asarray(cmap)[idx]


def out_ranges(weight: np.ndarray) -> np.ndarray:
    """max |W| per output channel (axis 0)."""
    return np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)


def in_ranges(weight: np.ndarray, index: np.ndarray, channels: int) -> np.ndarray:
    """max |W| per source channel, over all weight slices that read it (0 if none does)."""
    per_slice = np.abs(weight).reshape(index.shape + (-1,)).max(axis=-1)
    out = np.zeros(channels)
    np.maximum.at(out, index.ravel(), per_slice.ravel())
    return out


def expand_to(per_slice: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """An (O, I_w) array reshaped to broadcast against the weight (spatial dims of size 1)."""
    return per_slice.reshape(per_slice.shape + (1,) * (weight.ndim - 2))


def apply_to_inputs(layer: Node, weight: np.ndarray, per_input: np.ndarray,
                    cmap: Optional[np.ndarray] = None) -> np.ndarray:
    """sum_k sum_taps W[o, k, ...] * v[source channel of k], per output channel o: the effect on
    the output of adding the per-channel constant `v` to the input (ignoring zero padding)."""
    index = input_index(layer, weight, cmap)
    summed = weight.reshape(index.shape + (-1,)).sum(axis=-1)
    return (summed * np.asarray(per_input, dtype=np.float64)[index]).sum(axis=1)


# ---- rewriting a layer's constants ---------------------------------------------------------------

def set_param(graph: Graph, layer: Node, i: int, data: np.ndarray, quant=None) -> Node:
    """Give input `i` (1 = weight, 2 = bias) of `layer` a fresh constant holding `data`.

    Constants may be shared between layers, so they are never changed in place; the old one is
    removed once nothing reads it. A layer without a bias gets one: the node is rebuilt with a
    third input and its output keeps its name, type and quantization parameters; the node that
    now stands for the layer is returned (a new one in that case, `layer` otherwise)."""
    old = layer.input(i)
    dtype = old.type.dtype if old is not None else layer.inputs[1].type.dtype
    hint = old.name if old is not None else f"{layer.name}.bias"
    const = graph.add_constant(hint, np.asarray(data), dtype=dtype,
                               quant=quant if quant is not None or old is None else old.quant)
    if i < len(layer.inputs):
        graph.set_input(layer, i, const)
    else:
        inputs = list(layer.inputs) + [None] * (i - len(layer.inputs)) + [const]
        out = layer.output
        new = graph.make_node(layer.op, inputs, layer.attrs, name=out.name + ".rebuilt",
                              loc=layer.loc, output_types=[out.type])
        new.output.quant = out.quant
        name = out.name
        graph.replace_node(layer, new)
        graph.rename(new.output, name)
        layer = new
    if old is not None and old.producer is None and not old.users and old not in graph.outputs \
            and old.name in graph.constants:
        graph.remove_constant(old)
    return layer
