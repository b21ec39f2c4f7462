"""What ``suggest`` should call a copy of a labelled image: rules of features and hashes, measured.

Run: python benchmarks/near_copies.py --run RUN [--copies 300] [--unlabelled DIR] [--markdown]

RUN is a finished run (the default MobileNetV2 run on intel-dev, say). Its model's pooled features (the
ones ``suggest`` compares) and each image's difference hash (``inspect``'s) are computed for:

- **copies**: ``--copies`` of the run's training images, each edited as photo collections hold copies:
  saved again as JPEG at quality 60, shrunk to 60 % and saved, its centre 90 % cropped, 15 % brighter,
  mirrored left-right. A rule should call the first ones copies;
- **other photographs**: every test image against the labelled ones (training and validation). A test
  image a rule catches is left out as a copy although it is another photograph, unless the data set holds
  the same photograph twice: the closest pairs are listed, to be looked at;
- with ``--unlabelled DIR``: how many of that folder's images each rule leaves out.

A rule calls an image a copy when its features are within a cosine similarity of a labelled image's, or
when its hash is within 4 bits of a labelled image's and their features confirm it (within a lower
cosine). For each rule: the share of each kind of copy it catches, and the images it leaves out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from _common import machine
from PIL import Image, ImageEnhance, ImageOps

from scenecls.inspection.options import HASH_DISTANCE  # inspect's measured hash distance

# (name, cosine from which features alone call it a copy, cosine that confirms a hash within HASH_DISTANCE)
RULES = [
    *((f"cosine >= {t}", t, None) for t in (0.93, 0.95, 0.97, 0.99)),
    ("hash alone", None, -0.999),  # -1: no labelled hash within reach
    *((f"hash, cosine >= {c}", None, c) for c in (0.79, 0.9, 0.95)),
    *((f"hash, cosine >= {c}; or cosine >= 0.97", 0.97, c) for c in (0.79, 0.9)),
]
EDITS = {
    "JPEG q60": lambda im: im,  # the saving does it
    "shrunk to 60 %": lambda im: im.resize((round(im.width * 0.6), round(im.height * 0.6)), Image.LANCZOS),
    "centre 90 %": lambda im: ImageOps.crop(im, border=round(min(im.size) * 0.05)),
    "15 % brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
    "mirrored": ImageOps.mirror,
}


def features(run: Path, paths: list[str]) -> np.ndarray:
    """The run's pooled features of ``paths``, unit length: what ``suggest`` compares."""
    from scenecls.progress import NullReporter
    from scenecls.suggest import _look, _unit

    _, found, readable = _look(run, paths, [], 64, NullReporter())
    assert readable.all(), "an image could not be read"
    return _unit(found["pool"])


def hashes(paths: list[str]) -> np.ndarray:
    """Each image's 64-bit difference hash, as ``inspect`` computes it."""
    from scenecls.data.facts import image_facts

    return np.asarray([image_facts(path).dhash for path in paths], dtype=np.uint64)


def nearest(rows: np.ndarray, against: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's highest cosine similarity among ``against``, and which row of it that is."""
    best, where = np.full(len(rows), -1.0, np.float32), np.zeros(len(rows), int)
    for start in range(0, len(against), 2048):
        similarity = rows @ against[start : start + 2048].T
        column = similarity.argmax(axis=1)
        value = similarity[np.arange(len(rows)), column]
        better = value > best
        best[better], where[better] = value[better], column[better] + start
    return best, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--copies", type=int, default=300)
    parser.add_argument("--unlabelled", type=Path)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    from scenecls.data.duplicates import popcount
    from scenecls.runs import Run
    from scenecls.suggest import NEAR_COPY, hash_lookalikes

    prepared, _ = Run(args.run).prepared_data()
    labelled = [*prepared.train.paths, *prepared.val.paths]
    test = list(prepared.test.paths) if prepared.test else []
    originals = [
        str(p) for p in np.random.default_rng(0).choice(prepared.train.paths, args.copies, replace=False)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        edited = {name: [] for name in EDITS}
        for i, path in enumerate(originals):
            with Image.open(path) as image:
                image = image.convert("RGB")
                for number, (name, edit) in enumerate(EDITS.items()):
                    target = Path(tmp) / f"{i}-{number}.jpg"
                    edit(image).save(target, quality=60 if name == "JPEG q60" else 92)
                    edited[name].append(str(target))
        original_rows = features(args.run, originals)
        copy_rows = {name: features(args.run, paths) for name, paths in edited.items()}
        copy_hashes = {name: hashes(paths) for name, paths in edited.items()}
    labelled_rows = features(args.run, labelled)
    test_rows = features(args.run, test)

    copy_cosine = {name: np.sum(rows * original_rows, axis=1) for name, rows in copy_rows.items()}
    original_hashes = hashes(originals)
    copy_bits = {name: popcount(found ^ original_hashes) for name, found in copy_hashes.items()}
    labelled_hashes, test_hashes = hashes(labelled), hashes(test)
    test_best, test_where = nearest(test_rows, labelled_rows)
    labelled_list = [int(h) for h in labelled_hashes]
    test_near = hash_lookalikes([int(h) for h in test_hashes], labelled_list, HASH_DISTANCE)
    test_near_cosine, test_near_partner = np.full(len(test), -1.0), [""] * len(test)
    for i, js in test_near.items():  # only images with a lookalike, each with at least one
        similarity = labelled_rows[js] @ test_rows[i]
        test_near_cosine[i], test_near_partner[i] = similarity.max(), labelled[js[similarity.argmax()]]
    pool_best = pool_near_cosine = None
    if args.unlabelled:
        from scenecls.data.unlabelled import pool_images

        pool = [str(p) for p in pool_images(args.unlabelled, Run(args.run).classes, labelled + test)]
        pool_rows = features(args.run, pool)
        pool_best, _ = nearest(pool_rows, labelled_rows)
        pool_near = hash_lookalikes([int(h) for h in hashes(pool)], labelled_list, HASH_DISTANCE)
        pool_near_cosine = np.full(len(pool), -1.0)
        for i, js in pool_near.items():
            pool_near_cosine[i] = (labelled_rows[js] @ pool_rows[i]).max()

    rows = []
    for rule, alone, confirm in RULES:

        def caught(cosine, hashed_cosine, alone=alone, confirm=confirm):
            # a copy by its features alone, or by its hash confirmed by its features
            by_features = cosine >= alone if alone is not None else np.zeros(len(cosine), bool)
            by_hash = hashed_cosine >= confirm if confirm is not None else np.zeros(len(cosine), bool)
            return by_features | by_hash

        row = {"rule": rule}
        for name in EDITS:
            within = copy_bits[name] <= HASH_DISTANCE
            row[name] = float(np.mean(caught(copy_cosine[name], np.where(within, copy_cosine[name], -1.0))))
        row["test images left out"] = int(np.sum(caught(test_best, test_near_cosine)))
        if pool_best is not None:
            row["unlabelled left out"] = int(np.sum(caught(pool_best, pool_near_cosine)))
        rows.append(row)
    spread = {
        name: {
            "min": float(v.min()), "p5": float(np.percentile(v, 5)), "median": float(np.median(v)),
            "bits_median": float(np.median(copy_bits[name])),
            "bits_p95": float(np.percentile(copy_bits[name], 95)),
        }
        for name, v in copy_cosine.items()
    }  # fmt: skip
    order = np.argsort(-test_best)[:8]
    top = [(float(test_best[i]), test[i], labelled[test_where[i]]) for i in order]
    hashed = [
        (float(test_near_cosine[i]), test[i], test_near_partner[i])
        for i in np.argsort(-test_near_cosine)[:12]
        if test_near_cosine[i] > -1
    ]
    if args.markdown:
        names = list(rows[0])
        print(f"{machine()}; run {args.run}; {len(originals)} copies of each kind; {len(test)} test images "
              f"against {len(labelled)} labelled; suggest's threshold {NEAR_COPY}\n")  # fmt: skip
        print("| " + " | ".join(names) + " |\n|" + "---|" * len(names))
        for row in rows:
            cells = [f"{v:.0%}" if isinstance(v, float) else str(v) for v in row.values()]
            print("| " + " | ".join(cells) + " |")
        print("\n| copy | cosine min | 5th percentile | median | hash bits median | 95th percentile |")
        print("|---|---|---|---|---|---|")
        for name, s in spread.items():
            print(f"| {name} | {s['min']:.3f} | {s['p5']:.3f} | {s['median']:.3f} | {s['bits_median']:.0f} | "
                  f"{s['bits_p95']:.0f} |")  # fmt: skip
        print("\nClosest test/labelled pairs by features:")
        for value, a, b in top:
            print(f"- {value:.4f} {a} {b}")
        print(f"\nTest images with a labelled one within {HASH_DISTANCE} bits, by that one's cosine:")
        for value, a, b in hashed:
            print(f"- {value:.4f} {a} {b}")
    else:
        print(json.dumps({"rows": rows, "copies": spread, "closest": top, "hashed": hashed}, indent=2))


if __name__ == "__main__":
    main()
