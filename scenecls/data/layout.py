"""Recognise how a data set is laid out on disk and index it as labelled splits.

Three layouts are understood, tried in this order:

* a root with ``train/`` (and optionally ``val/``, ``test/``) folders of class folders, as ``fetch-data``
  writes the Intel set, or as Kaggle's archive of it unpacks (``seg_train/seg_train/<class>``,
  ``seg_test/seg_test/<class>``: read where it lies, nothing moved);
* a CSV of ``image_name,label`` beside a folder of images (the Analytics Vidhya variant of the Intel set
  labels 0-5 = buildings, forest, glacier, mountain, sea, street);
* a folder of class folders, one per class.

A lone folder around split or class folders (``photos/<class>/...`` under the folder given) is read
through.
"""

from __future__ import annotations

import csv
import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from scenecls.data.archives import is_tar
from scenecls.data.images import is_image_path
from scenecls.errors import DataError
from scenecls.files import OUTPUT_MARKERS, holds_our_output

INTEL_CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")
SPLIT_ALIASES = {
    "train": ("train", "training", "seg_train"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing", "seg_test"),
}
SPLIT_NAMES = frozenset(alias for aliases in SPLIT_ALIASES.values() for alias in aliases)
IGNORED_DIRS = {"__MACOSX", "pred", "seg_pred"}


@dataclass
class Split:
    """Image paths and their class indices (-1 for unlabelled)."""

    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices) -> Split:
        return Split([self.paths[i] for i in indices], [self.labels[i] for i in indices])

    def digest(self, relative_to: str | os.PathLike | None = None) -> str:
        """A hash of the paths (relative to ``relative_to`` when given, so that the same images hash
        alike wherever the folder lies), labels, sizes and modification times, in order."""
        digest = hashlib.sha256()
        for path, label in zip(self.paths, self.labels, strict=True):
            try:
                st = os.stat(path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            name = path if relative_to is None else os.path.relpath(os.path.abspath(path), relative_to)
            digest.update(f"{name}\0{label}\0{stamp}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:20]


@dataclass
class DatasetIndex:
    root: Path
    layout: str  # "splits", "csv" or "class-folders"
    classes: list[str]
    splits: dict[str, Split]
    empty_dirs: list[Path] = field(default_factory=list)  # class-like folders without one image
    empty_classes: list[str] = field(default_factory=list)  # CSV classes none of whose files exist
    # Class folders that hold the same sub-folders of images (``a/x``, ``a/y``, ``b/x``, ``b/y``): worth a
    # word, since they may be splits or groups of one set's classes rather than classes themselves.
    shared_subfolders: list[str] = field(default_factory=list)
    excluded: str | None = None  # a hash of the images an exclude list left out, when it left some
    left_out: int = 0  # how many images an exclude list left out

    def warnings(self) -> list[str]:
        """What a command reading this set should say about its layout before it trains on it."""
        said = [f"{folder} holds no images; left out" for folder in self.empty_dirs]
        said += [
            f"class {name!r}: every row of {self.root.name} that names it points to a missing file; left out"
            for name in self.empty_classes
        ]
        if self.shared_subfolders:
            shown = ", ".join(self.shared_subfolders[:6]) + ", ..." * (len(self.shared_subfolders) > 6)
            said.append(
                f"the classes {', '.join(self.classes[:6])}{', ...' * (len(self.classes) > 6)} hold folders "
                f"of the same names ({shown}): if those are the classes, point --data at a folder of them, "
                f"or lay the set out as train/ and test/ folders of class folders"
            )
        return said

    def fingerprint(self) -> str:
        """Changes whenever a file is added, removed, relabelled, rewritten or left out (paths as indexed,
        so it changes with the folder the data set was reached from too)."""
        return self._hash(None)

    def identity(self) -> str:
        """:meth:`fingerprint` with each path relative to the data set's own folder: the same images,
        labels and exclude list give the same identity wherever the folder lies or is reached from. A run
        records it, and every command that reads a run's data checks it (another set is refused)."""
        base = self.root.parent if self.root.is_file() else self.root
        return self._hash(os.path.abspath(base))

    def _hash(self, relative_to: str | None) -> str:
        digest = hashlib.sha256("\n".join(self.classes).encode("utf-8", "surrogateescape"))
        if self.excluded and relative_to is None:  # (the splits themselves say what was left out)
            digest.update(f"excluded\0{self.excluded}\n".encode())
        for name in sorted(self.splits):
            digest.update(f"{name}\0{self.splits[name].digest(relative_to)}\n".encode())
        return digest.hexdigest()[:16]


def check_data_path(path: Path) -> Path:
    """``path`` if it can be a data set (a folder, or a CSV file); else a one-line DataError that says what
    to pass instead. Cheap: a command checks it before it loads or downloads anything."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if not path.is_dir() and not path.is_file():
        raise DataError(f"{path} is neither a folder nor a regular file (a device, FIFO or socket)")
    if path.is_file() and path.suffix.lower() != ".csv":
        if zipfile.is_zipfile(path) or is_tar(path):
            raise DataError(
                f"{path} is an archive; --data takes a folder: unpack it with "
                f"'scenecls fetch-data --from {path} --dest FOLDER', then use --data FOLDER"
            )
        raise DataError(f"{path} is a file; --data takes a folder or a CSV of image_name,label")
    return path


def index_dataset(path: Path) -> DatasetIndex:
    """Index the data set at ``path`` (a folder or a CSV file), whatever its layout."""
    path = check_data_path(path)
    if path.is_file():
        return _index_csv(path)
    splits = _find_split_dirs(path)
    if "train" in splits:
        index = _index_split_dirs(path, splits)
        index.empty_dirs = [d for folder in splits.values() for d in _empty_dirs(folder)]
        return index
    label_csvs = [c for c in sorted(path.glob("*.csv")) if _is_label_csv(c)]
    if len(label_csvs) > 1 and path / "train.csv" in label_csvs:
        label_csvs = [path / "train.csv"]
    if len(label_csvs) == 1:
        return _index_csv(label_csvs[0])
    if len(label_csvs) > 1:
        names = ", ".join(c.name for c in label_csvs)
        raise DataError(f"{path} holds several CSV files ({names}); pass the one to use with --data")
    class_dirs = _class_dirs(path)
    if len(class_dirs) == 1 and _wraps_a_data_set(class_dirs[0]):
        return index_dataset(class_dirs[0])  # one folder around the set, as many archives unpack
    if class_dirs:
        classes = [d.name for d in class_dirs]
        images = _index_classes(class_dirs)
        return DatasetIndex(
            path, "class-folders", classes, {"train": images}, _empty_dirs(path),
            shared_subfolders=_shared_subfolders(class_dirs, images),
        )  # fmt: skip
    raise DataError(
        f"cannot recognise a data set in {path}: expected class folders, train/ [val/ test/] "
        f"folders of class folders, or a CSV of image_name,label beside an image folder"
    )


def _find_split_dirs(root: Path) -> dict[str, Path]:
    """The split folders under ``root`` by split, their names matched in any case (``Train/``,
    ``Testing/``), since a split read as a class would train on the wrong labels."""
    by_name: dict[str, list[Path]] = {}
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        if child.is_dir():
            by_name.setdefault(child.name.lower(), []).append(child)
    found: dict[str, Path] = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            named = by_name.get(alias, [])
            if len(named) > 1:
                names = " and ".join(p.name for p in named)
                raise DataError(f"{root} has both {names}: keep one folder per split")
            candidate = _unwrapped(named[0]) if named else None
            if candidate is not None and _class_dirs(candidate):
                found[split] = candidate
                break
    return found


def _is_split_name(name: str) -> bool:
    return name.lower() in SPLIT_NAMES


def _wraps_a_data_set(folder: Path) -> bool:
    """Whether ``folder``, the only class folder found, is rather a folder around a data set: no image of
    its own, and split folders or two or more class folders inside. (A set of one class trains nothing,
    so reading through it takes no meaning away.)"""
    if any(is_image_path(p) for p in folder.iterdir() if p.is_file()):
        return False
    inner = _class_dirs(folder)
    if len(inner) == 1:  # another folder around it
        return _wraps_a_data_set(inner[0])
    return "train" in _find_split_dirs(folder) or len(inner) >= 2


def _unwrapped(folder: Path) -> Path:
    """``folder``, or the folder of the same name it wraps (Kaggle nests each split in itself:
    ``seg_train/seg_train/<class>``), when that is all it holds besides hidden files."""
    if not folder.is_dir():
        return folder
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    if len(entries) == 1 and entries[0].name == folder.name and entries[0].is_dir():
        return entries[0]
    return folder


def _shared_subfolders(class_dirs: list[Path], images: Split) -> list[str]:
    """Names of image-holding sub-folders found under two or more class folders, when some class holds
    two or more of them: ``seg_train/.../buildings`` and ``seg_test/.../buildings`` read as classes
    ``seg_train`` and ``seg_test`` would otherwise train a classifier of the wrong labels silently.
    ``images``: the class folders' images as :func:`_index_classes` found them (not walked again)."""
    names_by_class: list[set[str]] = [set() for _ in class_dirs]
    for path, label in zip(images.paths, images.labels, strict=True):
        parent = Path(path).parent
        if parent != class_dirs[label]:
            names_by_class[label].add(parent.name)
    shared = set()
    for i, names in enumerate(names_by_class):
        for other in names_by_class[i + 1 :]:
            shared |= names & other
    if not any(len(names & shared) >= 2 for names in names_by_class):
        return []
    return sorted(shared)


def _class_dirs(folder: Path) -> list[Path]:
    """Sub-folders that hold at least one image file (at any depth)."""
    dirs = []
    for child in sorted(folder.iterdir(), key=lambda p: p.name):
        if not child.is_dir() or child.name.startswith(".") or child.name in IGNORED_DIRS:
            continue
        if _is_split_name(child.name):
            continue
        if holds_our_output(child):  # inspect's sheets or explain's maps, written inside the data set
            continue
        if any(is_image_path(p) for p in _walk_files(child)):
            dirs.append(child)
    return dirs


def _empty_dirs(folder: Path) -> list[Path]:
    """Class-like sub-folders that hold no image: worth a word, since they are left out."""
    return [
        child
        for child in sorted(folder.iterdir(), key=lambda p: p.name)
        if child.is_dir()
        and not child.name.startswith(".")
        and child.name not in IGNORED_DIRS
        and not _is_split_name(child.name)
        and not any(is_image_path(p) for p in _walk_files(child))
    ]


def _is_label_csv(path: Path) -> bool:
    """A CSV whose first data row is ``image_name,label`` (not, say, a results table)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [row for _, row in zip(range(2), csv.reader(handle), strict=False)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    data = [row for row in rows if row and is_image_path(row[0].strip())]
    return bool(data) and len(data[0]) >= 2


def _walk_files(folder: Path):
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not _is_output(Path(dirpath) / d)
        )
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _is_output(folder: Path) -> bool:
    """An output folder of ours (its marker inside): never read as images of a class."""
    return any((folder / marker).is_file() for marker in OUTPUT_MARKERS)


def _index_classes(class_dirs: list[Path], classes: list[str] | None = None) -> Split:
    classes = classes or [d.name for d in class_dirs]
    split = Split()
    for folder in class_dirs:
        label = classes.index(folder.name)
        for file in _walk_files(folder):
            if is_image_path(file):
                split.paths.append(str(file))
                split.labels.append(label)
    return split


def _index_split_dirs(root: Path, splits: dict[str, Path]) -> DatasetIndex:
    train_classes = [d.name for d in _class_dirs(splits["train"])]
    index = DatasetIndex(root, "splits", train_classes, {})
    for name, folder in splits.items():
        dirs = _class_dirs(folder)
        unknown = sorted({d.name for d in dirs} - set(train_classes))
        if unknown:
            raise DataError(
                f"{folder} has classes that train/ lacks: {', '.join(unknown)}; every split must "
                f"use the training classes"
            )
        index.splits[name] = _index_classes(dirs, train_classes)
    return index


def _index_csv(csv_path: Path) -> DatasetIndex:
    """Labels 0-5 are the Intel classes by number (any subset of them, so that a test CSV holding only
    some classes still means the same classes); other numbers and names are classes of their own."""
    rows = _read_label_rows(csv_path)
    if not rows:
        raise DataError(f"{csv_path} lists no images")
    image_dir = _find_image_dir(csv_path, rows[0][1])
    labels = [label for _, _, label in rows]
    numeric = [_is_int(label) for label in labels]
    if any(numeric) and not all(numeric):
        line, _, label = rows[numeric.index(False)]
        raise DataError(f"{csv_path}:{line}: label {label!r} is not a class number like the others")
    missing: list[str] = []
    if not all(numeric) or not {int(label) for label in labels} <= set(range(len(INTEL_CLASSES))):
        # A class every row of which names a missing file would train on nothing: left out, as an empty
        # class folder is. (The Intel numbers keep every name: a subset still means the same classes.)
        present = {label for _, name, label in rows if (image_dir / name).is_file()}
        missing = sorted(set(labels) - present)
        rows = [row for row in rows if row[2] in present]
        labels = [label for _, _, label in rows]
    if all(numeric):
        numbers = sorted({int(label) for label in labels})
        if set(numbers) <= set(range(len(INTEL_CLASSES))):
            classes = list(INTEL_CLASSES)  # the seed's numbering
            to_index = {str(n): n for n in range(len(INTEL_CLASSES))}
        else:
            classes = [str(n) for n in numbers]
            to_index = {str(n): i for i, n in enumerate(numbers)}
    else:
        classes = sorted(set(labels))
        to_index = {c: i for i, c in enumerate(classes)}
    base = csv_path.parent.resolve()
    split = Split()
    for line, name, label in rows:
        image = image_dir / name
        if Path(name).is_absolute() or not _inside(image, base):
            raise DataError(
                f"{csv_path}:{line}: {name!r} lies outside {base}; list images inside the data folder"
            )
        key = str(int(label)) if _is_int(label) else label
        split.paths.append(str(image))
        split.labels.append(to_index[key])
    return DatasetIndex(csv_path, "csv", classes, {"train": split}, empty_classes=missing)


def _inside(path: Path, folder: Path) -> bool:
    resolved = Path(os.path.realpath(path))
    return resolved == folder or folder in resolved.parents


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _read_label_rows(csv_path: Path) -> list[tuple[int, str, str]]:
    """``(line number, image name, label)`` for every row; an empty label is an error."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            rows = [
                (n, row)
                for n, row in enumerate(csv.reader(handle), start=1)
                if row and any(c.strip() for c in row)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {csv_path}: {exc}") from exc
    if rows and not is_image_path(rows[0][1][0].strip()):
        rows = rows[1:]  # header
    out = []
    for line, row in rows:
        if len(row) < 2:
            raise DataError(f"{csv_path}:{line}: expected image_name,label")
        name, label = row[0].strip(), row[1].strip()
        if not label:
            raise DataError(f"{csv_path}:{line}: {name} has an empty label")
        out.append((line, name, label))
    return out


def _find_image_dir(csv_path: Path, first_image: str) -> Path:
    base = csv_path.parent
    candidates = [base, base / "images", base / csv_path.stem, base / "train", base / "test"]
    candidates += [d for d in sorted(base.iterdir()) if d.is_dir()]
    for folder in candidates:
        if (folder / first_image).is_file():
            return folder
    raise DataError(
        f"cannot find the images that {csv_path.name} lists (e.g. {first_image}) beside it; put "
        f"them in {base} or a folder inside it"
    )
