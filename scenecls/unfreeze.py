"""Which parts of the backbone train during fine-tuning.

``--unfreeze N`` makes the last N *blocks* of the architecture's block map trainable, ``--unfreeze all``
the whole backbone, ``--unfreeze-layers K`` the last K raw layers (to reproduce tables that count
layers). Batch-normalisation layers always stay frozen, and the classifier calls the backbone with
``training=False``, so their statistics are never disturbed by small fine-tuning batches — the Keras
transfer-learning guide's rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from scenecls.errors import UsageError
from scenecls.models.blocks import BlockMap


@dataclass(frozen=True)
class UnfreezePolicy:
    kind: str  # "blocks", "layers" or "all"
    count: int = 0

    def __str__(self) -> str:
        if self.kind == "all":
            return "all"
        return f"{self.count} {'block' if self.kind == 'blocks' else 'layer'}{'s' * (self.count != 1)}"

    @property
    def frozen(self) -> bool:
        return self.kind != "all" and self.count == 0


def parse_unfreeze(value: str) -> list[UnfreezePolicy]:
    """``"0"``, ``"5"``, ``"all"`` or a progressive schedule such as ``"1,3,5"``."""
    stages = []
    for part in str(value).split(","):
        part = part.strip().lower()
        if part == "all":
            stages.append(UnfreezePolicy("all"))
        elif part.isdigit():
            stages.append(UnfreezePolicy("blocks", int(part)))
        else:
            raise UsageError(
                f"--unfreeze takes a number of blocks, 'all' or a list like 1,3,5; got {value!r}"
            )
    return stages


@dataclass
class UnfreezeReport:
    policy: str
    blocks: list[str] = field(default_factory=list)  # unfrozen, in order
    layers: int = 0  # backbone layers inside the unfrozen range (batch norms included)
    frozen_batchnorm: int = 0
    trainable_params: int = 0  # of the whole model when given, else of the backbone
    non_trainable_params: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def all_layers(layer) -> list:
    """``layer`` and every layer nested inside it, depth first."""
    found = [layer]
    for child in getattr(layer, "layers", []):
        found.extend(all_layers(child))
    return found


def is_batchnorm(layer) -> bool:
    return type(layer).__name__ in ("BatchNormalization", "SyncBatchNormalization")


def check_policy(block_map: BlockMap, policy: UnfreezePolicy) -> None:
    """Refuse to unfreeze more blocks than the backbone has (silently taking them all would hide a typo)."""
    if policy.kind == "blocks" and policy.count > len(block_map.blocks):
        raise UsageError(
            f"--unfreeze {policy.count}: this backbone has {len(block_map.blocks)} blocks; choose up "
            f"to {len(block_map.blocks)}, or --unfreeze all"
        )


def apply_unfreeze(backbone, block_map: BlockMap, policy: UnfreezePolicy, model=None) -> UnfreezeReport:
    """Set the backbone's ``trainable`` flags for ``policy`` and say what it did."""
    layers = list(backbone.layers)
    if policy.kind == "all":
        start, blocks = 0, list(block_map.names)
    elif policy.kind == "blocks":
        check_policy(block_map, policy)
        chosen = block_map.last(policy.count)
        start = chosen[0].start if chosen else len(layers)
        blocks = [b.name for b in chosen]
    elif policy.kind == "layers":
        start = max(len(layers) - policy.count, 0)
        blocks = list(dict.fromkeys(block_map.block_of(i).name for i in range(start, len(layers))))
    else:
        raise UsageError(f"unknown unfreeze policy {policy.kind!r}")

    backbone.trainable = start < len(layers)
    frozen_bn = 0
    for i, layer in enumerate(layers):
        wanted = i >= start
        for inner in all_layers(layer):
            inner.trainable = wanted and not is_batchnorm(inner)
            if wanted and is_batchnorm(inner):
                frozen_bn += 1
    counted = model if model is not None else backbone
    return UnfreezeReport(
        policy=str(policy),
        blocks=blocks,
        layers=len(layers) - start,
        frozen_batchnorm=frozen_bn,
        trainable_params=_count(counted.trainable_weights),
        non_trainable_params=_count(counted.non_trainable_weights),
    )


def _count(weights) -> int:
    total = 0
    for weight in weights:
        size = 1
        for dim in weight.shape:
            size *= int(dim)
        total += size
    return total
