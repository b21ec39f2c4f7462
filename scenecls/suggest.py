"""What to label next: the unlabelled images a person's time is best spent on.

A run's model (calibrated, so its confidence means what it says) looks at every unlabelled image once,
giving its probabilities and its features (the pooled backbone output its head reads). From the images it
is least sure of (the smallest margin between its two most likely classes; ``4 x budget`` of them), k-centre
greedy picks, one at a time, the image farthest in those features from every labelled image and every
image already picked: uncertain images that are unlike what is labelled and unlike each other, so that
the budget is not spent on twenty copies of the same doubtful street. Copies of labelled images are never
suggested: the same bytes; a perceptual hash within a few bits of a labelled image's, confirmed by the
features (a copy saved again, resized or brightened); or features nearly the same.

The unlabelled folder is only read. The suggestions go to an output folder of ours: a CSV (path,
suggested class, confidence, margin), a contact sheet and, per suggested class, a folder of links (or
copies) to the images, so that a person can sort them by moving files.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scenecls.command_options import SUGGEST, SUGGEST_STRATEGIES
from scenecls.data.unlabelled import pool_images, same_bytes
from scenecls.errors import UsageError
from scenecls.inspection.options import HASH_DISTANCE
from scenecls.progress import NullReporter, Reporter
from scenecls.units import count

MARKER = ".scenecls-suggest"
WRITER = "scenecls suggest"
CSV_NAME, SHEET_NAME = "suggestions.csv", "suggestions.png"
# Measured on intel-dev with the default MobileNetV2 run (benchmarks/README.md, "Copies of labelled images"):
# the run's features put different forests at 0.968 and a copy saved again as JPEG at 0.93 (median), so
# features alone call an image a copy only from NEAR_COPY; a difference hash within HASH_DISTANCE bits
# (inspect's) catches copies saved again, shrunk or brightened, and is confirmed from HASH_CONFIRMATION,
# since calm seas share hashes (different ones reached 0.88; every pair at 0.93 and above was one picture).
NEAR_COPY = 0.97  # cosine similarity of the run's features above which an image is a labelled one again
HASH_CONFIRMATION = 0.9
POOL_FACTOR = 4  # the least certain budget x this are the candidates k-centre greedy chooses among
LABELLED_SAMPLE = 3000  # labelled images whose features stand for the labelled set


@dataclass
class Suggestion:
    rank: int
    path: str
    suggested: str
    confidence: float
    margin: float  # top-1 minus top-2 probability: small is unsure

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SuggestResult:
    suggestions: list[Suggestion]
    pool: int  # unlabelled images read
    unreadable: int
    copies: int  # left out as copies of labelled images
    output: Path | None = None
    strategy: str = SUGGEST.strategy
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "unreadable": self.unreadable,
            "copies_of_labelled": self.copies,
            "strategy": self.strategy,
            "output": None if self.output is None else str(self.output),
            "files": [str(p) for p in self.files],
            "suggestions": [s.to_dict() for s in self.suggestions],
        }


# ---------------------------------------------------------------------------------------------- checks
def check_budget(budget: int, pool: int) -> None:
    if budget > pool:
        raise UsageError(f"--budget {budget} is more than the {count(pool, 'unlabelled image')} there are")


# ---------------------------------------------------------------------------------------------- choosing
def choose(
    probabilities: np.ndarray, features: np.ndarray, labelled: np.ndarray, budget: int, *,
    pool_factor: int = POOL_FACTOR, strategy: str = SUGGEST.strategy,
) -> list[int]:  # fmt: skip
    """Indices of ``budget`` images, in the order picked: among the ``pool_factor x budget`` with the
    smallest margin, k-centre greedy from the ``labelled`` features (cosine distance); with ``strategy``
    "uncertain", the ``budget`` smallest margins, smallest first."""
    ordered = np.sort(probabilities, axis=1)
    margin = ordered[:, -1] - (ordered[:, -2] if probabilities.shape[1] > 1 else 0)
    candidates = np.argsort(margin, kind="stable")[: max(budget, pool_factor * budget)]
    if strategy == "uncertain":
        return [int(i) for i in candidates[:budget]]
    points = _unit(features[candidates])
    # Each candidate's distance to the nearest labelled image (2: as far as can be, with none labelled).
    nearest = 1 - np.max(_unit(labelled) @ points.T, axis=0) if len(labelled) else np.full(len(points), 2.0)
    picked: list[int] = []
    for _ in range(min(budget, len(candidates))):
        best = int(np.argmax(nearest))
        picked.append(int(candidates[best]))
        nearest = np.minimum(nearest, 1 - points @ points[best])
        nearest[best] = -1.0  # never twice
    return picked


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def copies_of_labelled(
    pool: list[Path], features: np.ndarray, labelled_paths: list[str], labelled: np.ndarray,
    threshold: float = NEAR_COPY, *, lookalikes: dict[int, list[int]] | None = None,
    confirmation: float = HASH_CONFIRMATION, digests: dict[str, str] | None = None,
) -> np.ndarray:  # fmt: skip
    """A mask of pool images that are labelled ones again: the same bytes, features within ``threshold``
    cosine similarity of a labelled image's, or features within ``confirmation`` of a lookalike's
    (``lookalikes``: pool row -> rows of ``labelled`` whose perceptual hash is close; see
    :func:`hash_lookalikes`; ``digests``: SHA-256 digests already known, path -> digest)."""
    mask = same_bytes(pool, labelled_paths, digests)
    if len(labelled):
        units = _unit(labelled)
        for start in range(0, len(pool), 1024):
            block = _unit(features[start : start + 1024])
            mask[start : start + len(block)] |= (block @ units.T).max(axis=1) >= threshold
        for row, rows in (lookalikes or {}).items():
            mask[row] |= bool((units[rows] @ _unit(features[row : row + 1])[0]).max() >= confirmation)
    return mask


def hash_lookalikes(
    pool: list[int | None], labelled: list[int | None], bits: int = HASH_DISTANCE
) -> dict[int, list[int]]:
    """``{pool index: labelled indices}`` whose 64-bit difference hashes differ in at most ``bits`` bits
    (None: an image that could not be hashed, never alike)."""
    from scenecls.data.duplicates import popcount

    known = [j for j, value in enumerate(labelled) if value is not None]
    values = np.asarray([labelled[j] for j in known], dtype=np.uint64)
    found: dict[int, list[int]] = {}
    if not known:
        return found
    for i, value in enumerate(pool):
        if value is not None:
            close = np.flatnonzero(popcount(values ^ np.uint64(value)) <= bits)
            if len(close):
                found[i] = [known[j] for j in close]
    return found


def _surveyed(paths: list[str], root: Path, reporter: Reporter, digests: dict[str, str]) -> list[int | None]:
    """Each image's difference hash (None where it cannot be read), remembered beside inspect's survey
    of ``root`` so that neither computes them twice; each readable image's SHA-256 goes into ``digests``
    (the same survey reads it, so the same-bytes check does not read the file again)."""
    from scenecls.data.facts import ImageFacts, survey_images
    from scenecls.data.images import scan_cache_path
    from scenecls.paths import cache_dir

    facts = survey_images(paths, scan_cache_path(root, cache_dir(), "surveys"), reporter=reporter)
    digests.update(
        (path, fact.sha256) for path, fact in zip(paths, facts, strict=True) if isinstance(fact, ImageFacts)
    )
    return [fact.dhash if isinstance(fact, ImageFacts) else None for fact in facts]


# ---------------------------------------------------------------------------------------------- the command
def suggest(
    run_dir: Path, pool_folder: Path, budget: int = SUGGEST.budget, *, output: Path, copy: bool = False,
    strategy: str = SUGGEST.strategy, batch_size: int = SUGGEST.batch_size, reporter: Reporter | None = None,
) -> SuggestResult:  # fmt: skip
    """Rank ``pool_folder``'s images for labelling with the finished run ``run_dir`` and write the
    suggestions to ``output`` (see the module's docstring)."""
    from scenecls.files import check_output_folder, claim_folder
    from scenecls.runs import Run

    if strategy not in SUGGEST_STRATEGIES:  # the command's choice checks it; a library caller's, here
        raise UsageError(f"--strategy {strategy}: choose one of {', '.join(SUGGEST_STRATEGIES)}")
    reporter = reporter or NullReporter()
    run = Run(run_dir)
    if run.status != "finished":
        raise UsageError(
            f"{run_dir} has not finished training ({run.status or 'never started'}): finish it first"
        )
    classes = run.classes
    prepared, _ = run.prepared_data(reporter=NullReporter())
    splits = (prepared.train, prepared.val, prepared.test)
    pool = pool_images(pool_folder, classes, [p for split in splits if split for p in split.paths])
    check_budget(budget, len(pool))
    check_output_folder(output, "--output")
    here = Path(pool_folder).resolve()
    if output.resolve() == here or here in output.resolve().parents:
        raise UsageError(
            f"--output {output} lies inside {pool_folder}, which is only read: choose another folder"
        )
    claim_folder(output, MARKER, WRITER)  # before the work: a folder of the user's is refused at once

    labelled_paths = list(prepared.train.paths) + list(prepared.val.paths if prepared.val else [])
    sample = labelled_paths
    if len(sample) > LABELLED_SAMPLE:
        keep = np.random.default_rng(0).choice(len(sample), LABELLED_SAMPLE, replace=False)
        sample = [sample[i] for i in sorted(keep)]
    digests: dict[str, str] = {}
    lookalikes = hash_lookalikes(
        _surveyed([str(p) for p in pool], here, reporter, digests),
        _surveyed([str(p) for p in labelled_paths], prepared.index.root, reporter, digests),
    )
    sample = list(dict.fromkeys([*sample, *(labelled_paths[j] for js in lookalikes.values() for j in js)]))
    probabilities, features, readable = _look(run_dir, [str(p) for p in pool], sample, batch_size, reporter)
    row_of = {old: new for new, old in enumerate(np.flatnonzero(readable))}  # pool index once unreadable go
    position = {path: i for i, path in enumerate(sample)}
    lookalikes = {
        row_of[i]: [position[labelled_paths[j]] for j in js] for i, js in lookalikes.items() if i in row_of
    }
    pool = [p for p, ok in zip(pool, readable, strict=True) if ok]
    unreadable = int((~readable).sum())
    labelled_features = features["labelled"]
    copies = copies_of_labelled(
        pool, features["pool"], labelled_paths, labelled_features, lookalikes=lookalikes, digests=digests
    )
    keep = np.nonzero(~copies)[0]
    check_budget(budget, len(keep))
    reporter.log(
        f"Choosing {count(budget, 'image')} among {count(len(keep), 'unlabelled image')} "
        f"({count(int(copies.sum()), 'copy', 'copies')} of labelled images left out)"
    )
    picked = choose(probabilities[keep], features["pool"][keep], labelled_features, budget, strategy=strategy)
    suggestions = []
    for rank, i in enumerate(keep[picked], start=1):
        row = probabilities[i]
        top = np.argsort(-row)[:2]
        margin = float(row[top[0]] - (row[top[1]] if len(top) > 1 else 0.0))
        suggestions.append(Suggestion(rank, str(pool[i]), classes[top[0]], float(row[top[0]]), margin))
    result = SuggestResult(
        suggestions, len(pool) + unreadable, unreadable, int(copies.sum()), output, strategy
    )
    result.files = _write(result, output, classes, copy=copy)
    return result


def _look(run_dir: Path, pool: list[str], labelled: list[str], batch_size: int, reporter: Reporter):
    """The run's calibrated probabilities and features of the pool, and the features of ``labelled``, in
    one pass of its model per image; a mask of the pool images that could be read."""
    import keras

    from scenecls.classifier import inference_function, input_size, is_ensemble, load_model
    from scenecls.data.images import ImageReadError, load_rgb
    from scenecls.heads import POOL_LAYER

    model = load_model(run_dir / "best.keras")
    if is_ensemble(model):
        raise UsageError(
            f"{run_dir} is an ensemble, which has no one set of features: use one of its members"
        )
    pooled = model.get_layer(POOL_LAYER).output
    width = pooled.shape[-1]
    # One output (features, then probabilities, side by side): one traced graph, one pass per image.
    both = keras.Model(model.input, keras.layers.Concatenate()([pooled, model.output]))
    forward = inference_function(both, batch_size)
    size = input_size(model)

    def run(paths: list[str], what: str):
        task = reporter.task(what, total=len(paths), unit="images")
        features, probabilities, readable = [], [], np.zeros(len(paths), dtype=bool)
        try:
            for start in range(0, len(paths), batch_size):
                images = []
                for offset, path in enumerate(paths[start : start + batch_size]):
                    try:
                        images.append(load_rgb(path, size))
                        readable[start + offset] = True
                    except ImageReadError:
                        continue
                if images:
                    out = forward(np.stack(images).astype(np.float32))
                    features.append(out[:, :width])
                    probabilities.append(out[:, width:])
                task.advance(min(batch_size, len(paths) - start))
        finally:
            task.close()
        f = np.concatenate(features) if features else np.zeros((0, width), np.float32)
        p = (
            np.concatenate(probabilities)
            if probabilities
            else np.zeros((0, model.output.shape[-1]), np.float32)
        )
        return f, p, readable

    pool_features, probabilities, readable = run(pool, "Unlabelled images")
    labelled_features, _, _ = run(labelled, "Labelled images")
    return probabilities, {"pool": pool_features, "labelled": labelled_features}, readable


def _write(result: SuggestResult, output: Path, classes: list[str], *, copy: bool) -> list[Path]:
    """``suggestions.csv``, ``suggestions.png`` and a folder per suggested class with links (or copies)."""
    from scenecls.contact_sheets import Tile, draw_sheet, grid
    from scenecls.files import atomic_path, note_written

    folders = sorted({s.suggested for s in result.suggestions})
    note_written(output, MARKER, WRITER, [CSV_NAME, SHEET_NAME, *classes])
    for name in classes:  # the class folders of an earlier suggestion: ours, replaced whole
        old = output / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
    with atomic_path(output / CSV_NAME) as tmp, open(tmp, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["rank", "path", "suggested", "confidence", "margin"])
        for s in result.suggestions:
            writer.writerow([s.rank, s.path, s.suggested, f"{s.confidence:.4f}", f"{s.margin:.4f}"])
    tiles = [Tile(s.path, (f"#{s.rank} {s.suggested}?", f"{s.confidence:.2f}, margin {s.margin:.2f}"))
             for s in result.suggestions]  # fmt: skip
    draw_sheet(
        grid(tiles), f"Label these next ({len(tiles)}): the model's guess and confidence", output / SHEET_NAME
    )
    for name in folders:
        (output / name).mkdir()
    for s in result.suggestions:
        source = Path(s.path).resolve()
        target = output / s.suggested / f"{s.rank:04d}-{source.name}"
        if copy:
            shutil.copy2(source, target)
        else:
            target.symlink_to(source)
    return [output / CSV_NAME, output / SHEET_NAME, *(output / name for name in folders)]


def default_output(run_dir: Path, pool_folder: Path) -> Path:
    """``suggestions/<unlabelled folder's name>`` in the current folder, unless that lies in the pool."""
    name = Path(pool_folder).resolve().name
    folder = Path("suggestions") / name
    here = Path(pool_folder).resolve()
    if folder.resolve() == here or here in folder.resolve().parents:
        return run_dir / "suggestions" / name
    return folder
