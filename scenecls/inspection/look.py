"""Looking at a data set: what is wrong with it, before a model learns it.

Four looks at every labelled image, each cheap after the first time (all are cached):

* byte-for-byte copies (SHA-256 of the file) and near copies (a 64-bit difference hash within
  ``hash_distance`` bits, or a cosine similarity of the backbone's pooled features of at least
  ``similarity``), grouped; a group within one split, a group across splits (a leak: the model is
  tested on what it trained on) and a group whose members carry different labels are told apart;
* likely label errors, from out-of-fold predictions of a linear head on the same features
  (:mod:`scenecls.label_errors`);
* class balance, image sizes and aspect ratios, the grayscale share and the unreadable files;
* contact sheets of each finding, for a person to judge.

The images are indexed as the data set lies on disk: its ``train/``, ``val/`` and ``test/`` folders (the
validation split a run carves out of ``train/`` is random, so a group within ``train/`` may leak into it).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from scenecls.config import TrainConfig
from scenecls.data import duplicates
from scenecls.data.facts import ImageFacts, survey_images
from scenecls.data.images import scan_cache_path, scan_images
from scenecls.data.layout import DatasetIndex, Split, index_dataset
from scenecls.errors import DataError
from scenecls.inspection.findings import Group, Inspection, Item, split_rank
from scenecls.inspection.options import HASH_CONFIRMATION, InspectOptions
from scenecls.label_errors import Suspect, find_suspects, out_of_fold_probabilities
from scenecls.paths import cache_dir
from scenecls.progress import NullReporter, Reporter
from scenecls.units import count

TRAIN_DEFAULTS = TrainConfig()  # a default run's validation split, which inspect's feature entry follows


def inspect_dataset(
    path: Path,
    options: InspectOptions | None = None,
    *,
    reporter: Reporter | None = None,
    cache_root: Path | None = None,
) -> Inspection:
    """Look at the data set at ``path`` (any layout ``--data`` takes) and say what is wrong with it."""
    options = options or InspectOptions()
    reporter = reporter or NullReporter()
    cache_root = cache_root or cache_dir()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    index = index_dataset(path)
    for message in index.warnings():
        reporter.warn(message)
    listed = [
        (name, p, label)
        for name in _ordered(index.splits)
        for p, label in zip(index.splits[name].paths, index.splits[name].labels, strict=True)
    ]
    if not listed:
        raise DataError(f"no images in {index.root}")
    scan = scan_images([p for _, p, _ in listed], scan_cache_path(index.root, cache_root), reporter=reporter)
    unreadable = list(scan.bad)
    bad = {p for p, _ in unreadable}
    surveyed = survey_images(
        [p for _, p, _ in listed if p not in bad],
        scan_cache_path(index.root, cache_root, "surveys"),
        reporter=reporter,
    )
    readable = [entry for entry in listed if entry[1] not in bad]
    items, facts = [], []
    for (split, p, label), outcome in zip(readable, surveyed, strict=True):
        if isinstance(outcome, ImageFacts):
            items.append(Item(split, p, label))
            facts.append(outcome)
        else:
            unreadable.append((p, outcome))
    if not items:
        raise DataError(f"no readable images in {index.root}")
    run_split = default_run_split(index, scan.bad)
    seconds["survey"] = time.perf_counter() - start

    features = near_features = None
    if options.features:
        start = time.perf_counter()
        features = image_features(
            items, len(index.classes), options, reporter=reporter, cache_root=cache_root, run_split=run_split
        )
        near_features = features
        own = own_size(options.backbone)
        if options.image_size not in (None, own):  # the thresholds hold at the backbone's own size only
            near_features = image_features(
                items,
                len(index.classes),
                replace(options, image_size=own),
                reporter=reporter,
                cache_root=cache_root,
                run_split=run_split,
            )
        seconds["features"] = time.perf_counter() - start
    start = time.perf_counter()
    groups = find_groups(items, facts, near_features, options)
    seconds["duplicates"] = time.perf_counter() - start
    start = time.perf_counter()
    suspects, check = check_labels(items, len(index.classes), features, options, reporter)
    seconds["labels"] = time.perf_counter() - start
    return Inspection(
        index.root,
        index.layout,
        list(index.classes),
        items,
        unreadable,
        facts,
        groups,
        suspects,
        check,
        options,
        seconds,
    )


def _ordered(splits: dict[str, Split]) -> list[str]:
    return sorted(splits, key=split_rank)


def own_size(backbone: str) -> int:
    """The input size at which a backbone's near-copy thresholds were measured: its default size.
    Smaller inputs blur different photographs together (at 96 px, different forests pass 0.93), so
    near copies are always looked for at this size, whatever size the label check uses."""
    from scenecls.models.registry import get_spec

    return get_spec(backbone).default_size


def image_features(
    items: list[Item], num_classes: int, options: InspectOptions, *, reporter: Reporter, cache_root: Path,
    run_split: tuple[Split, Split] | None = None,
) -> np.ndarray:  # fmt: skip
    """The backbone's pooled features of every item, ``(n, d)``, through the feature cache (unaugmented):
    computed once, then read back in seconds.

    Given ``run_split``, the training and validation images as a default ``scenecls train`` splits them
    (see :func:`default_run_split`), those are cached in the entry such a run looks up (see
    :func:`entry_splits`): a first run after ``inspect`` with the same backbone, weights and size then
    reads those features instead of computing them again.
    """
    import keras

    from scenecls.caches.features import load_or_compute
    from scenecls.caches.store import CacheInputs
    from scenecls.classifier import build_classifier, find_backbone
    from scenecls.data.augment import NO_AUGMENTATION
    from scenecls.heads import HeadConfig
    from scenecls.models.registry import get_spec

    keras.backend.clear_session()
    keras.utils.set_random_seed(TRAIN_DEFAULTS.seed)  # random weights (--weights none) as a run's
    size = options.image_size or get_spec(options.backbone).default_size
    weights = None if options.weights == "none" else options.weights
    model = build_classifier(
        options.backbone, max(num_classes, 2), size=size, weights=weights, head=HeadConfig(dense=0)
    )
    row = {item.path: i for i, item in enumerate(items)}
    features = None
    for train, val in entry_splits(items, run_split):
        inputs = CacheInputs(train, val, (size, size), options.batch_size, NO_AUGMENTATION, 0, 0)
        cached = load_or_compute(
            model, find_backbone(model), inputs, cache_root=cache_root, reporter=reporter, mmap=True
        )
        if features is None:
            features = np.zeros((len(items), cached.train.shape[-1]), np.float32)
        for split, rows in ((train, cached.train[0]), (val, cached.val)):
            features[[row[p] for p in split.paths]] = rows
    return features


def default_run_split(index: DatasetIndex, bad: list[tuple[str, str]]) -> tuple[Split, Split] | None:
    """``(train, val)`` as a default ``scenecls train`` of this data set splits it (``bad``: the scan's
    unreadable files, which a run leaves out too); None where no run would train on it (one class, say)."""
    from scenecls.data.pipeline import split_index

    try:
        data = split_index(
            replace(index, splits=dict(index.splits)), bad, val_split=TRAIN_DEFAULTS.val_split,
            seed=TRAIN_DEFAULTS.seed,
        )  # fmt: skip
    except DataError:
        return None
    return data.train, data.val


def entry_splits(items: list[Item], run_split: tuple[Split, Split] | None) -> list[tuple[Split, Split]]:
    """``(train, val)`` pairs whose feature cache entries together hold every item: ``run_split`` (the
    same entry a run looks up), when every one of its images is an item, then every other item (the test
    images, say) in an entry of its own."""
    pairs: list[tuple[Split, Split]] = []
    taken: set[str] = set()
    if run_split is not None:
        paths = {*run_split[0].paths, *run_split[1].paths}
        if paths <= {item.path for item in items}:
            pairs.append(run_split)
            taken = paths
    rest = [item for item in items if item.path not in taken]
    if rest:
        pairs.append((Split([i.path for i in rest], [i.label for i in rest]), Split()))
    return pairs


def find_groups(
    items: list[Item], facts: list[ImageFacts], features: np.ndarray | None, options: InspectOptions
) -> list[Group]:
    """Exact and near duplicate groups among ``items`` (see the module's doc)."""
    n = len(items)
    exact = list(duplicates.exact_pairs([f.sha256 for f in facts]))
    hashed = duplicates.hash_pairs([f.dhash for f in facts], options.hash_distance)
    near: list[tuple[int, int, float]] = []
    if features is None:  # the closer the hashes, the more alike
        near += [(i, j, 1 - bits / 64) for i, j, bits in _with_distance(hashed, facts)]
    else:
        for i, j in hashed:
            similarity = duplicates.cosine(features[i], features[j])
            if similarity >= HASH_CONFIRMATION:
                near.append((i, j, similarity))
        near += list(duplicates.feature_pairs(features, options.similarity))
    groups = []
    for members in duplicates.near_groups(n, exact, near):
        kind = "exact" if len({facts[i].sha256 for i in members}) == 1 else "near"  # one file, copied
        splits = sorted({items[i].split for i in members}, key=split_rank)
        groups.append(Group(kind, members, splits, sorted({items[i].label for i in members})))
    return groups


def _with_distance(pairs, facts: list[ImageFacts]):
    for i, j in pairs:
        yield i, j, bin(int(facts[i].dhash) ^ int(facts[j].dhash)).count("1")


def check_labels(
    items: list[Item],
    num_classes: int,
    features: np.ndarray | None,
    options: InspectOptions,
    reporter: Reporter,
) -> tuple[list[Suspect], str]:
    """Likely label errors and a few words on the check; classes of one image cannot be checked (a head
    that never saw their class would doubt every one of them), and at least two classes must remain."""
    if features is None:
        return [], "not run (--no-features)"
    labels = np.array([i.label for i in items])
    sizes = Counter(labels.tolist())
    checked_classes = [c for c, n in sizes.items() if n >= 2]
    if len(checked_classes) < 2:
        return [], "not run: it needs two classes of at least two images"
    rows = np.flatnonzero(np.isin(labels, checked_classes))
    remap = {c: k for k, c in enumerate(sorted(checked_classes))}
    back = sorted(checked_classes)
    local = np.array([remap[c] for c in labels[rows]])
    folds = min(options.folds, max(2, min(sizes[c] for c in checked_classes)))
    probs = out_of_fold_probabilities(
        features[rows] if len(rows) < len(items) else features,
        local,
        len(back),
        folds=folds,
        seed=options.seed,
        reporter=reporter,
    )
    found = [
        Suspect(
            int(rows[s.index]), back[s.given], back[s.suggested], s.given_probability, s.suggested_probability
        )
        for s in find_suspects(probs, local)
    ]
    left_out = len(items) - len(rows)
    note = f"{folds}-fold out-of-fold predictions of a linear head on {len(rows)} images"
    return found, note + (
        f"; {count(left_out, 'image')} of single-image classes not checked" if left_out else ""
    )
