"""What an inspection found: the images looked at, the duplicate groups, the doubted labels, and the
views of them a report or an exclude list needs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenecls.data.facts import ImageFacts, image_statistics
from scenecls.label_errors import Suspect
from scenecls.models.registry import get_spec

SPLIT_ORDER = ("train", "val", "test")  # a leak's copies outside the last split it reaches are dropped


MAX_SHARE = 0.10  # of a class or a split, past which an exclude list is written only with --force...
MIN_COUNT = 5  # ...and past this many images (on a tiny set, 3 of 12 is a few real copies)


@dataclass(frozen=True)
class Item:
    """One readable labelled image."""

    split: str
    path: str
    label: int


@dataclass
class Group:
    """Images that are one picture: ``kind`` "exact" (one content hash) or "near"."""

    kind: str
    members: list[int]  # indices into Inspection.items
    splits: list[str]
    labels: list[int]

    @property
    def leak(self) -> bool:
        return len(self.splits) > 1

    @property
    def conflict(self) -> bool:
        return len(self.labels) > 1


@dataclass
class Inspection:
    root: Path
    layout: str
    classes: list[str]
    items: list[Item]
    unreadable: list[tuple[str, str]]
    facts: list[ImageFacts]
    groups: list[Group]
    suspects: list[Suspect]  # most doubtful first; index into items
    label_check: str  # what the label check did, in a few words
    options: Any  # the InspectOptions it was made with
    seconds: dict[str, float] = field(default_factory=dict)

    def within(self) -> list[Group]:
        return [g for g in self.groups if not g.leak]

    def leaks(self) -> list[Group]:
        return [g for g in self.groups if g.leak]

    def conflicts(self) -> list[Group]:
        return [g for g in self.groups if g.conflict]

    def balance(self) -> dict[str, dict[str, int]]:
        counts: dict[str, Counter] = {}
        for item in self.items:
            counts.setdefault(item.split, Counter())[item.label] += 1
        return {s: {c: counts[s].get(i, 0) for i, c in enumerate(self.classes)} for s in counts}

    def statistics(self) -> dict[str, dict]:
        by_split: dict[str, list[ImageFacts]] = {}
        for item, facts in zip(self.items, self.facts, strict=True):
            by_split.setdefault(item.split, []).append(facts)
        return {split: image_statistics(facts) for split, facts in by_split.items()}

    def counts(self) -> dict[str, int]:
        """How many of each finding: the summary a script checks."""
        return {
            "images": len(self.items),
            "unreadable": len(self.unreadable),
            "exact_groups": sum(g.kind == "exact" for g in self.groups),
            "near_groups": sum(g.kind == "near" for g in self.groups),
            "groups_within_split": len(self.within()),
            "groups_across_splits": len(self.leaks()),
            "groups_conflicting_labels": len(self.conflicts()),
            "likely_label_errors": len(self.suspects),
            "grayscale": sum(f.gray for f in self.facts),
        }

    def exclusions(self, *, leaks: bool = True, conflicts: bool = True, label_errors: int = 0) -> list[str]:
        """Paths to leave out of training: the copies of each leaking group outside the last split it
        reaches (so the test set stays as it is), the training copies of a picture under two labels
        (which label is right is not known), and the ``label_errors`` most doubtful training images."""
        chosen: list[str] = []
        if leaks:
            for g in self.leaks():
                last = max(g.splits, key=split_rank)
                chosen += [self.items[i].path for i in g.members if self.items[i].split != last]
        if conflicts:
            for g in self.conflicts():
                chosen += [self.items[i].path for i in g.members if self.items[i].split == "train"]
        doubtful = [s for s in self.suspects if self.items[s.index].split == "train"]
        chosen += [self.items[s.index].path for s in doubtful[:label_errors]]
        return list(dict.fromkeys(chosen))

    def excessive_share(self, paths: list[str], share: float = MAX_SHARE) -> str | None:
        """What an exclude list of ``paths`` would take past ``share`` of a class's training images or
        of a split, in words (the first such); None when it stays within. A list that takes that much
        more likely follows a wrong grouping than real duplicates."""
        chosen = set(paths)
        splits = Counter(i.split for i in self.items)
        classes = Counter(i.label for i in self.items if i.split == "train")
        gone_split = Counter(i.split for i in self.items if i.path in chosen)
        gone_class = Counter(i.label for i in self.items if i.split == "train" and i.path in chosen)
        for label, gone in sorted(gone_class.items()):
            if gone > max(share * classes[label], MIN_COUNT):
                return (
                    f"{gone} of {classes[label]} training images of class {self.classes[label]} "
                    f"({gone / classes[label]:.0%}), more than {share:.0%}"
                )
        for split, gone in sorted(gone_split.items()):
            if gone > max(share * splits[split], MIN_COUNT):
                return f"{gone} of {splits[split]} images of the {split} split ({gone / splits[split]:.0%})"
        return None

    def group_dict(self, g: Group) -> dict[str, Any]:
        return {
            "kind": g.kind,
            "across_splits": g.leak,
            "conflicting_labels": g.conflict,
            "images": [self._item_dict(i) for i in g.members],
        }

    def suspect_dict(self, rank: int, s: Suspect) -> dict[str, Any]:
        return {
            "rank": rank,
            **self._item_dict(s.index),
            "suggested": self.classes[s.suggested],
            "given_probability": round(s.given_probability, 4),
            "suggested_probability": round(s.suggested_probability, 4),
        }

    def _item_dict(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        return {"path": item.path, "split": item.split, "label": self.classes[item.label]}

    def feature_size(self) -> int | None:
        """The input size of the features near copies were looked for in (the backbone's own)."""
        return get_spec(self.options.backbone).default_size if self.options.features else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": str(self.root),
            "layout": self.layout,
            "classes": self.classes,
            "counts": self.counts(),
            "balance": self.balance(),
            "images": self.statistics(),
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "duplicates": {
                "hash_distance": self.options.hash_distance,
                "similarity": self.options.similarity if self.options.features else None,
                "feature_size": self.feature_size(),
                "groups": [self.group_dict(g) for g in self.groups],
            },
            "label_errors": {
                "check": self.label_check,
                "candidates": [self.suspect_dict(r, s) for r, s in enumerate(self.suspects, 1)],
            },
            "options": {k: v for k, v in vars(self.options).items()},
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def split_rank(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)
