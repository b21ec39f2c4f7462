"""Placing a data set at its destination so that an interrupted run never leaves anything that looks
complete: one run at a time (a lock), unpacked into marked staging beside the destination, renamed into
place only when whole.

What it will touch: a destination is replaced only when it is empty or holds the marker file this
module writes into every data set it places (``.scenecls.json``); any other folder is refused untouched.
Downloading is :mod:`scenecls.data.download`; checking and unpacking archives, :mod:`scenecls.data.archives`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from scenecls import __version__
from scenecls.checksums import file_sha256
from scenecls.data.archives import (
    DEFAULT_MAX_BYTES,
    IGNORED_NAMES,
    copy_folder,
    extract_archive,
    is_within,
)
from scenecls.data.download import (
    check_looks_like_archive,
    check_sha256,
    check_url,
    discard_partial,
    download,
    is_kaggle_url,
    kaggle_credentials,
    record_path,
)
from scenecls.data.images import IMAGE_SUFFIXES
from scenecls.errors import DataError, UsageError, first_line
from scenecls.files import is_staging, locked, make_staging, remove_abandoned
from scenecls.progress import NullReporter, Reporter

INTEL_URL = "https://www.kaggle.com/api/v1/datasets/download/puneet6060/intel-image-classification"
# The Kaggle archive nests every split twice (seg_train/seg_train/<class>); we flatten and rename.
INTEL_SPLITS = {"seg_train": "train", "seg_test": "test", "seg_pred": "pred"}
SPLIT_DIRS = ("train", "val", "test", "pred")
MARKER = ".scenecls.json"


@dataclass
class FetchResult:
    dest: Path
    already_present: bool
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- layout


def normalise_layout(root: Path) -> Path:
    """Strip wrapper folders and turn Kaggle's ``seg_train/seg_train`` into ``train``.

    Returns the folder that holds the data set (``root`` or a folder inside it).
    """
    while True:
        entries = [e for e in root.iterdir() if e.name not in IGNORED_NAMES]
        if (
            len(entries) == 1
            and entries[0].is_dir()
            and entries[0].name not in SPLIT_DIRS
            and entries[0].name not in INTEL_SPLITS
            and not any(_is_image(p) for p in entries[0].iterdir())
        ):
            root = entries[0]
            continue
        break
    for name, split in INTEL_SPLITS.items():
        outer = root / name
        if not outer.is_dir() or (root / split).exists():
            continue
        inner = outer / name
        if inner.is_dir():
            inner.rename(root / split)
            shutil.rmtree(outer)  # only the empty shell (or stray junk) is left
        else:
            outer.rename(root / split)
    return root


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def count_images(root: Path) -> dict[str, dict[str, int]]:
    """Image counts by split and class; a plain class-folder set is reported as split ``all``."""
    splits = [d for d in SPLIT_DIRS if (root / d).is_dir()]
    counts: dict[str, dict[str, int]] = {}
    for split in splits or [""]:
        base = root / split if split else root
        per_class: dict[str, int] = {}
        for child in sorted(base.iterdir()):
            if child.is_dir() and child.name not in IGNORED_NAMES:
                per_class[child.name] = sum(1 for p in child.rglob("*") if _is_image(p))
        loose = sum(1 for p in base.iterdir() if _is_image(p))
        if loose:
            per_class["(unlabelled)"] = loose
        counts[split or "all"] = per_class
    return counts


# ------------------------------------------------------------------------------------------- fetch


def fetch_dataset(
    dest: Path,
    *,
    url: str | None = None,
    source: Path | None = None,
    sha256: str | None = None,
    force: bool = False,
    keep_archive: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    retries: int = 5,
    backoff: float = 1.0,
    reporter: Reporter | None = None,
) -> FetchResult:
    """Put a data set at ``dest`` from ``source`` (archive or folder) or by downloading ``url``.

    Nothing at ``dest`` changes until the new data set is complete. ``dest`` must be new, empty, or a
    data set this function placed (it holds :data:`MARKER`); anything else is refused untouched. An
    existing data set is left alone and reported, or with ``force`` replaced in one rename (or, for a
    mount point, which cannot be renamed, by moving its entries). A symbolic link as ``dest`` stays a
    link: the folder it points to is filled or replaced. Two runs into one ``dest`` take turns: the
    second waits for the first's lock (:data:`LOCK_SUFFIX`), then finds its data set.
    """
    reporter = reporter or NullReporter()
    shown = dest.expanduser().absolute()
    dest = Path(os.path.realpath(shown))  # a link to a folder: work on the folder, keep the link
    sha256 = check_sha256(sha256)
    if url is not None:
        url = check_url(url)
    if source is not None:
        source = Path(os.path.realpath(source.expanduser()))
        if not source.exists():
            raise DataError(f"{source} does not exist")
        if source.is_dir() and sha256:
            raise UsageError("--sha256 checks an archive, but --from names a folder")
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{shown} exists and is not a folder")
    if source is not None and source.is_dir() and is_within(dest, source):
        raise DataError(f"--dest {shown} lies inside --from {source}; choose a folder outside it")
    in_place = os.path.ismount(dest)  # cannot be renamed: stage inside it, then move entries
    staging_parent = dest if in_place else dest.parent
    _make_folder(staging_parent)

    def waiting() -> None:
        reporter.log(f"Waiting for another fetch-data into {shown} to finish")

    with locked(_lock_path(dest, in_place), on_wait=waiting):
        if dest.is_dir():
            state = _dest_state(dest, in_place)
            if state == "foreign":
                raise DataError(
                    f"{shown} holds files that fetch-data did not put there; it only fills a new or empty "
                    f"folder or replaces a data set it placed itself (nothing was changed)"
                )
            if state == "ours" and not force:
                return FetchResult(shown, already_present=True, counts=count_images(dest))
            if source is not None and state == "ours" and is_within(source, dest):
                raise DataError(
                    f"--from {source} lies inside {shown}, which --force would replace; move it out"
                )
        stem = _staging_stem(dest, in_place)
        for kind in (STAGING_KIND, OLD_KIND):  # left by a run that was killed (we hold the lock)
            remove_abandoned(staging_parent, kind, stem)
        archive, downloaded = _obtain_archive(
            dest, url, source, sha256, force=force, retries=retries, backoff=backoff, reporter=reporter
        )
        counts = _place(
            dest, in_place, archive, source, downloaded, url=url, sha256=sha256, max_bytes=max_bytes,
            reporter=reporter,
        )  # fmt: skip
    if downloaded and archive is not None and not keep_archive:
        discard_partial(archive)
    return FetchResult(shown, already_present=False, counts=counts)


STAGING_KIND = "fetching"  # a data set being unpacked or copied: .<dest>.<host>-<pid>.fetching
OLD_KIND = "replaced"  # a replaced data set on its way out
LOCK_SUFFIX = ".scenecls-lock"


def _lock_path(dest: Path, in_place: bool) -> Path:
    """``.<dest>.scenecls-lock`` beside ``dest``; inside it for a mount point."""
    return dest / LOCK_SUFFIX if in_place else dest.with_name(f".{dest.name}{LOCK_SUFFIX}")


def _staging_stem(dest: Path, in_place: bool) -> str:
    return "scenecls" if in_place else dest.name


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataError(f"cannot make the folder {folder}: a file of that name is in the way") from None


def _obtain_archive(
    dest: Path, url: str | None, source: Path | None, sha256: str | None, *, force: bool, retries: int,
    backoff: float, reporter: Reporter,
) -> tuple[Path | None, bool]:  # fmt: skip
    """The archive to unpack (None for a folder to copy) and whether it was downloaded."""
    if source is not None:
        if source.is_file() and sha256:
            _verify_source_checksum(source, sha256)
        return (source if source.is_file() else None), False
    url = url or INTEL_URL
    name = "download-" + hashlib.sha1(url.encode()).hexdigest()[:12]
    archive = dest.parent / ".downloads" / name
    archive.parent.mkdir(parents=True, exist_ok=True)
    # Two destinations may share one download folder: the download itself takes turns too.
    with locked(archive.with_name(name + LOCK_SUFFIX)):
        if force:
            archive.unlink(missing_ok=True)  # fetch again; a partial download still resumes
            record_path(archive).unlink(missing_ok=True)
        auth = kaggle_credentials() if is_kaggle_url(url) else None
        download(url, archive, auth=auth, sha256=sha256, retries=retries, backoff=backoff, reporter=reporter)
        check_looks_like_archive(archive, url)
    return archive, True


def _place(
    dest: Path, in_place: bool, archive: Path | None, source: Path | None, downloaded: bool, *,
    url: str | None, sha256: str | None, max_bytes: int, reporter: Reporter,
) -> dict[str, dict[str, int]]:  # fmt: skip
    """Unpack ``archive`` (or copy ``source``) into staging, mark it, and swap it into place."""
    staging_parent = dest if in_place else dest.parent
    staging = make_staging(staging_parent, _staging_stem(dest, in_place), STAGING_KIND)
    try:
        unpacked = staging / "data"
        if archive is not None:
            unpacked.mkdir()
            try:
                extract_archive(archive, unpacked, max_bytes=max_bytes, reporter=reporter)
            except DataError:
                if downloaded:  # a damaged download must not be reused by the next run
                    discard_partial(archive)
                raise
        else:
            assert source is not None
            reporter.log(f"Copying {source}")
            copy_folder(source, unpacked, max_bytes=max_bytes)
        root = normalise_layout(unpacked)
        counts = count_images(root)
        if not any(n for per_class in counts.values() for n in per_class.values()):
            raise DataError(f"no images found in {source or url}")
        (root / MARKER).write_text(
            json.dumps(
                {
                    "source": str(source) if source else url,
                    "sha256": sha256,
                    "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "scenecls": __version__,
                },
                indent=2,
            )
        )
        if in_place:
            _replace_contents(root, dest, staging)
        else:
            _swap_into_place(root, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def _dest_state(dest: Path, in_place: bool = False) -> str:
    """``empty``, ``ours`` (holds the marker this module writes) or ``foreign``; the lock and staging
    this module keeps inside a mount point do not count."""
    try:
        entries = list(dest.iterdir())
    except OSError as exc:
        raise DataError(f"cannot read {dest}: {exc.strerror or first_line(exc)}") from exc
    if in_place:
        entries = [e for e in entries if e.name != LOCK_SUFFIX and not _is_our_staging(e)]
    if not entries:
        return "empty"
    marker = dest / MARKER
    return "ours" if marker.is_file() and not marker.is_symlink() else "foreign"


def _is_our_staging(path: Path) -> bool:
    return any(is_staging(path, kind, "scenecls") for kind in (STAGING_KIND, OLD_KIND))


def _verify_source_checksum(path: Path, expected: str) -> None:
    actual = file_sha256(path)
    if actual.lower() != expected.strip().lower():
        raise DataError(f"checksum mismatch for {path}: expected {expected.strip().lower()}, got {actual}")


def _swap_into_place(new: Path, dest: Path) -> None:
    """Rename ``new`` to ``dest``; an old ``dest`` is moved aside first (into marked staging, so that a
    kill here leaves something the next run knows to remove) and deleted after."""
    old = None
    if dest.is_dir():
        if any(dest.iterdir()):
            old = make_staging(dest.parent, dest.name, OLD_KIND)
            try:
                dest.rename(old / "data")
            except OSError:
                shutil.rmtree(old, ignore_errors=True)
                raise
        else:
            dest.rmdir()
    new.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _replace_contents(new: Path, dest: Path, staging: Path) -> None:
    """For a ``dest`` that cannot be renamed (a mount point): move its old entries aside, the new
    ones in, then delete the old. ``new`` lies inside ``dest`` (in ``staging``), so every move is a rename."""
    old = make_staging(dest, "scenecls", OLD_KIND)
    lock = dest / LOCK_SUFFIX
    for entry in list(dest.iterdir()):
        if entry not in (old, staging, lock):
            entry.rename(old / entry.name)
    for entry in list(new.iterdir()):
        entry.rename(dest / entry.name)
    shutil.rmtree(old, ignore_errors=True)
