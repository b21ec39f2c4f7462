"""A teacher's soft targets: its calibrated probabilities for every image a student learns from.

A student (``train --unlabelled DIR --teacher RUN``) learns from the teacher's probabilities on its
training images and on the unlabelled ones. Running the teacher costs a forward pass of a whole model
over every image, so the probabilities are computed once and kept like the features: under a key made
of everything they depend on (the teacher's model file, hashed; its input size; the exact images), so
that a second student of the same teacher on the same images (another seed, another backbone) reads
them back. The teacher's temperature is inside its saved model, so the probabilities are calibrated.

An entry is ``(n, classes)`` float32: 100,000 images of 6 classes are 2.4 MB, read memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from scenecls.caches import store
from scenecls.data.layout import Split
from scenecls.errors import DataError
from scenecls.files import UNWRITABLE, cannot_write, check_free_space
from scenecls.frozen_pass import DEFAULT_RUNTIME, runtime_key_fields
from scenecls.progress import NullReporter, Reporter

CACHE_VERSION = 1
KIND = "targets"


def targets_key(
    model_sha256: str, size: int, images: Split, runtime: str = DEFAULT_RUNTIME
) -> tuple[str, dict]:
    """The entry's key and the fields it hashes (the teacher's model file by its SHA-256; the runtime
    that ran it when not TensorFlow). Labels are left out of the images' hash: the teacher does not read
    them."""
    unlabelled = Split(list(images.paths), [-1] * len(images))
    fields = {
        "version": CACHE_VERSION,
        "kind": KIND,
        "teacher": model_sha256,
        "size": size,
        "images": unlabelled.digest(),
        "count": len(images),
    }
    fields.update(runtime_key_fields(runtime))
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return key, fields


def teacher_probabilities(
    model_file: Path,
    model_sha256: str,
    images: Split,
    *,
    cache_root: Path,
    batch_size: int = 32,
    teacher: str = "",
    reporter: Reporter | None = None,
    publish: bool = True,
    runtime: str = DEFAULT_RUNTIME,
) -> tuple[np.ndarray, bool]:
    """``(probabilities, reused)``: the model's probabilities for ``images`` (in order), from the cache
    when an entry for this very model file (``model_sha256``, hashed once by the caller) and these images
    is there, else computed (and, with
    ``publish``, kept for the next student), the teacher run on ``runtime`` (see
    :mod:`scenecls.frozen_pass`). ``teacher`` names it in the entry, for ``scenecls cache``."""
    from scenecls.classifier import input_size, load_model

    reporter = reporter or NullReporter()
    model = load_model(model_file)
    size = input_size(model)[0]
    key, fields = targets_key(model_sha256, size, images, runtime)
    folder = cache_root / KIND / key
    classes = int(model.output_shape[-1])
    cached = _read(folder, fields, len(images), classes)
    if cached is not None:
        reporter.log(f"Teacher's targets: reusing {folder}")
        store.mark_used(folder)
        return cached, True
    if folder.exists() and publish:
        reporter.warn(f"teacher's target cache {folder} is stale or damaged; rebuilding it")
        shutil.rmtree(folder, ignore_errors=True)
    probabilities = _compute(model, images, batch_size, runtime, reporter)
    if publish:
        needs = probabilities.nbytes
        try:
            check_free_space("the teacher's targets", needs, folder.parent)
            with store.building(folder):
                staging = store.start(folder)
                np.save(staging / "train.npy", probabilities)
                np.save(staging / "val.npy", np.zeros((0, classes), np.float32))
                store.publish(staging, folder, fields, teacher_name=teacher, shape=list(probabilities.shape))
        except DataError as exc:
            reporter.warn(f"{exc}; training goes on without saving them")
        except OSError as exc:
            if exc.errno not in UNWRITABLE:
                raise
            unsaved = cannot_write("the teacher's targets", folder.parent, needs, exc)
            reporter.warn(f"{unsaved}; training goes on")
        else:
            reporter.log(f"Teacher's targets: built {folder}")
    return probabilities, False


def _compute(model, images: Split, batch_size: int, runtime: str, reporter: Reporter) -> np.ndarray:
    """The model's probabilities on every image, un-augmented, in batches, with progress."""
    from scenecls.classifier import input_size
    from scenecls.data.pipeline import finite_dataset_warnings_silenced, make_dataset
    from scenecls.frozen_pass import frozen_forward

    forward = frozen_forward(model, batch_size, images=len(images), runtime=runtime, reporter=reporter)
    dataset = make_dataset(images, input_size(model), batch_size, drop_unreadable=False)
    task = reporter.task("Teacher's targets", total=-(-len(images) // batch_size), unit="batches")
    batches = []
    try:
        with finite_dataset_warnings_silenced():
            for batch, _ in dataset:
                batches.append(forward(batch))
                task.advance()
    finally:
        task.close()
    return np.concatenate(batches).astype(np.float32)


def _read(folder: Path, fields: dict, count: int, classes: int) -> np.ndarray | None:
    if store.read_meta(folder, fields) is None:
        return None
    try:
        probabilities = np.load(folder / "train.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if probabilities.shape != (count, classes) or not np.isfinite(probabilities).all():
        return None
    return probabilities
