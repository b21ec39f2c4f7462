"""Split a backbone's layer list into its real blocks.

A *block* is what the architecture's paper calls one (an inverted-residual block of MobileNetV2, an
entry/middle/exit block of Xception, an Inception-ResNet cell). Keras names most layers after their block,
but not all: Xception's residual convolutions and ``Add`` layers and InceptionResNetV2's branch
convolutions carry generated names (``conv2d_7``, ``add_3``) that differ from one build to the next.

So blocks are found from the graph, not from names alone. Walking ``model.layers`` in order, a *cut*
falls after a layer where exactly one tensor is still needed by later layers: the graph narrows to a
single edge, which is where one block hands over to the next. The runs between cuts are labelled by the
architecture's named layers (unnamed runs join the block before them, or the stem when first), and runs
with the same label merge. The result covers every layer exactly once, in order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from scenecls.errors import ModelError

BlockNamer = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Block:
    name: str
    start: int  # index of the first layer in ``model.layers``
    stop: int  # one past the last

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class BlockMap:
    blocks: tuple[Block, ...]
    layer_names: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def last(self, n: int) -> tuple[Block, ...]:
        """The last ``n`` blocks (all of them when ``n`` is larger)."""
        return self.blocks[-n:] if n > 0 else ()

    def block_of(self, index: int) -> Block:
        for block in self.blocks:
            if block.start <= index < block.stop:
                return block
        raise IndexError(index)

    def as_dict(self) -> dict[str, list[str]]:
        return {b.name: list(self.layer_names[b.start : b.stop]) for b in self.blocks}


def inbound_layers(layer, known: set[int] | None = None, graph: set[str] | None = None) -> list:
    """The layers whose outputs ``layer`` consumes inside its model's graph.

    Operations that are not layers of the model (ConvNeXt's residual ``x + y`` is a bare ``Add``
    op) are looked through to the layers that feed them, when ``known`` (the ids of the model's
    layers) is given. ``graph`` (the model's own nodes, see :func:`own_nodes`) leaves out the calls
    of ``layer`` in other models.
    """
    parents = []
    for operation in parent_operations(layer, graph):
        if known is None or id(operation) in known:
            parents.append(operation)
        else:
            parents.extend(inbound_layers(operation, known, graph))
    return parents


def own_nodes(model) -> set[str] | None:
    """The keys of the call nodes in ``model``'s own graph (None when the model does not say).

    A layer keeps a node for every graph it is called in. A functional model made from an inner tensor
    of another (the upper part of a backbone cut for the activation cache) calls the same layers again,
    so counting every node would see that second graph's tensors cross this one's block boundaries.
    """
    nodes = getattr(model, "_nodes", None)  # Keras's keys: f"{id(operation)}_ib-{node index}"
    return set(nodes) if nodes else None


def cut_points(layers: list, graph: set[str] | None = None) -> list[int]:
    """Indices ``i`` after which only one tensor produced at or before ``i`` is still needed.

    Operations that are not layers (a bare ``x + y``) count as producers placed right after their
    last input, so a residual sum is one tensor crossing the cut, not two. ``graph``: the model's own
    nodes (see :func:`own_nodes`); by default every node of every layer counts.
    """
    position = {id(layer): i for i, layer in enumerate(layers)}
    born: dict[int, int] = dict(position)  # producer id -> where its output appears
    last_use: dict[int, int] = {}

    def place(operation) -> int:
        key = id(operation)
        if key not in born:
            born[key] = max((place(p) for p in parent_operations(operation, graph)), default=0)
            for parent in parent_operations(operation, graph):
                use(parent, born[key])
        return born[key]

    def use(producer, at: int) -> None:
        key = id(producer)
        start = place(producer)
        last_use[key] = max(last_use.get(key, start), at)

    for i, layer in enumerate(layers):
        for parent in parent_operations(layer, graph):
            use(parent, i)
    cuts = []
    for i in range(len(layers) - 1):
        live = sum(1 for key, end in last_use.items() if born[key] <= i < end)
        if live <= 1:
            cuts.append(i)
    return cuts


def parent_operations(operation, graph: set[str] | None = None) -> list:
    """The operations whose outputs ``operation`` takes, in the calls that are ``graph``'s nodes (all
    its calls when None)."""
    return [
        parent.operation
        for index, node in enumerate(getattr(operation, "_inbound_nodes", []))
        if graph is None or f"{id(operation)}_ib-{index}" in graph
        for parent in node.parent_nodes
    ]


def build_block_map(model, namer: BlockNamer, first: str = "stem") -> BlockMap:
    """The block map of ``model``; ``namer`` gives a layer's block from its name, or None."""
    layers = list(model.layers)
    names = tuple(layer.name for layer in layers)
    bounds = [-1, *cut_points(layers, own_nodes(model)), len(layers) - 1]
    runs: list[tuple[str, int, int]] = []
    pending = 0  # start of a run of bare input layers, which joins the block after it
    for lo, hi in itertools.pairwise(bounds):
        start, stop = lo + 1, hi + 1
        if all(_is_input(layer) for layer in layers[start:stop]):
            continue
        if not runs:
            start = pending
        labels = [b for b in (namer(n) for n in names[start:stop]) if b is not None]
        distinct = list(dict.fromkeys(labels))
        if len(distinct) > 1:
            raise ModelError(
                f"block map of {model.name}: layers {names[start]}..{names[stop - 1]} mix blocks "
                f"{', '.join(distinct)}"
            )
        label = distinct[0] if distinct else (runs[-1][0] if runs else first)
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], stop)
        else:
            runs.append((label, start, stop))
    seen: set[str] = set()
    for label, _, _ in runs:
        if label in seen:
            raise ModelError(f"block map of {model.name}: block {label} is not contiguous")
        seen.add(label)
    return BlockMap(tuple(Block(label, start, stop) for label, start, stop in runs), names)


def _is_input(layer) -> bool:
    return type(layer).__name__ == "InputLayer"
