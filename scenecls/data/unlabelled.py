"""A folder of unlabelled images, as ``suggest`` and training with ``--unlabelled`` read it.

Both only read the folder. What they refuse is the same: something that is not a folder, the labelled
data set itself (or a folder inside it, or one that holds it), a folder laid out in the data set's class
folders (those images are labelled), and a folder without images. Images that are byte for byte copies of
labelled ones are found here too, so that neither suggests nor learns from a labelled image twice.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from scenecls.errors import UsageError


def pool_images(
    folder: Path, classes: list[str], labelled_paths: list[str], *, option: str = ""
) -> list[Path]:
    """The images of the unlabelled folder, checked: a folder, holding none of ``labelled_paths`` (so
    neither the data set, nor one of its splits or classes, nor a folder that holds it; the ``pred/``
    folder ``fetch-data`` places beside ``train/`` is fine), not laid out in the data's class folders,
    holding images. Each problem is a one-line usage error, prefixed by ``option`` when given."""
    from scenecls.data.images import is_image_path
    from scenecls.files import holds_our_output

    folder = Path(folder)
    said = f"{option} " if option else ""
    if not folder.is_dir():
        raise UsageError(f"{said}{folder} is not a folder of unlabelled images")
    here = os.path.join(os.path.realpath(folder), "")
    inside = next((p for p in labelled_paths if os.path.realpath(p).startswith(here)), None)
    if inside is not None:
        raise UsageError(
            f"{said}{folder} holds labelled images ({os.path.relpath(inside, folder)}...): give a folder of "
            "unlabelled ones"
        )
    try:
        named = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name in classes)
    except OSError as exc:
        raise UsageError(f"{said}{folder} cannot be read: {exc.strerror or exc}") from None
    if len(named) >= 2:
        raise UsageError(
            f"{said}{folder} is laid out in class folders ({', '.join(named[:3])}...): those images are "
            "labelled; give a folder of unlabelled images"
        )
    try:
        found = [p for p in folder.rglob("*") if is_image_path(p) and not p.name.startswith(".")]
        # Asked once per folder, not per image: the question lists the folder (100,000 images, one folder).
        ours = {parent: holds_our_output(parent) for parent in {p.parent for p in found}}
        images = sorted(p for p in found if not ours[p.parent] and p.is_file())
    except OSError as exc:
        raise UsageError(f"{said}{folder} cannot be read: {exc.strerror or exc}") from None
    if not images:
        raise UsageError(f"{said}{folder} holds no images")
    return images


def same_bytes(
    pool: list[Path], labelled_paths: list[str], known: dict[str, str] | None = None
) -> np.ndarray:
    """A mask of ``pool`` images whose bytes are those of a labelled image (only files of a size some
    labelled image has are hashed, so this costs little more than a ``stat`` per image). ``known``:
    SHA-256 digests already computed (path -> digest, e.g. by a survey), not computed again."""
    known = known or {}

    def digest_of(path: str) -> str | None:
        return known[path] if path in known else file_digest(path)

    sizes: dict[int, list[str]] = {}
    for path in labelled_paths:
        try:
            sizes.setdefault(os.path.getsize(path), []).append(path)
        except OSError:
            continue
    digests: set[str] = set()
    hashed: set[str] = set()
    mask = np.zeros(len(pool), dtype=bool)
    for i, path in enumerate(pool):
        try:
            same_size = sizes.get(Path(path).stat().st_size)
        except OSError:
            continue
        if not same_size:
            continue
        for other in same_size:
            if other not in hashed:
                hashed.add(other)
                digest = digest_of(other)
                if digest is not None:
                    digests.add(digest)
        mask[i] = digest_of(str(path)) in digests
    return mask


def file_digest(path: str) -> str | None:
    """The file's SHA-256, or None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()
