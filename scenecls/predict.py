"""Predict classes for image files: batched through the model, decoding ahead in threads, one row per
input whatever happens to the others.
"""

from __future__ import annotations

import glob
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from scenecls.answers import Prediction, rank
from scenecls.command_options import PREDICT
from scenecls.cores import decode_threads
from scenecls.data.images import ImageReadError, decode_rgb, is_image_path, load_rgb
from scenecls.data.remote import fetch_image_bytes, is_url
from scenecls.progress import NullReporter, Reporter


def expand_inputs(items: Iterable[str], stdin: Iterable[str] | None = None) -> list[tuple[str, str | None]]:
    """Files, folders (searched recursively for images), globs, ``http(s)://`` image URLs and ``-`` (paths
    read from ``stdin``).

    Returns ``(path, error)`` pairs in the order given; an input that names nothing becomes an error
    row instead of stopping the others.
    """
    found: list[tuple[str, str | None]] = []
    for item in items:
        if item == "-":
            lines = (line.strip() for line in (stdin or []))
            found.extend(expand_inputs([line for line in lines if line]))
            continue
        if is_url(item):
            found.append((item, None))  # fetched when its turn comes, with predict's other images
            continue
        path = Path(item)
        if path.is_dir():
            images = sorted(
                str(p)
                for p in path.rglob("*")
                if p.is_file() and is_image_path(p) and not p.name.startswith(".") and not _in_output(p, path)
            )
            found.extend((p, None) for p in images) if images else found.append((item, "no images in folder"))
        elif path.is_file():
            found.append((item, None))
        elif path.exists():  # a FIFO, a device, a socket: reading it could block or never end
            found.append((item, "not a regular file"))
        elif glob.has_magic(item):
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            found.extend((p, None) for p in matches) if matches else found.append((item, "no file matches"))
        else:
            found.append((item, "no such file"))
    return found


def _in_output(path: Path, top: Path) -> bool:
    """Whether ``path`` lies in an output folder of ours below ``top`` (explain's heat maps, inspect's
    sheets): those are our pictures, not inputs."""
    from scenecls.files import OUTPUT_MARKERS

    for folder in [path.parent, *path.parent.parents]:
        if any((folder / marker).is_file() for marker in OUTPUT_MARKERS):
            return True
        if folder == top:
            return False
    return False


def predict_files(
    runtime,
    inputs: list[tuple[str, str | None]],
    classes: list[str],
    *,
    batch_size: int = PREDICT.batch_size,
    top_k: int = PREDICT.top_k,
    workers: int | None = None,
    reporter: Reporter | None = None,
) -> Iterator[Prediction]:
    """Yield a :class:`Prediction` for every input, in order.

    ``runtime`` is a :class:`scenecls.runtimes.Runtime` (a Keras model, SavedModel, LiteRT or ONNX
    file). Images are decoded by a thread pool a few batches ahead of the model, so decoding and
    inference overlap.
    """
    reporter = reporter or NullReporter()
    height, width = runtime.input_size
    forward = runtime.predict
    top_k = max(1, min(top_k, len(classes)))
    task = reporter.task("Predicting", total=len(inputs), unit="images")
    ahead = batch_size * 3
    try:
        with ThreadPoolExecutor(max_workers=workers or decode_threads()) as pool:
            pending: deque[tuple[str, str | None, Future | None]] = deque()
            queue = iter(inputs)

            def submit_more() -> None:
                while len(pending) < ahead:
                    try:
                        path, error = next(queue)
                    except StopIteration:
                        return
                    future = None if error else pool.submit(_load, path, (height, width))
                    pending.append((path, error, future))

            submit_more()
            while pending:
                batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                submit_more()
                results: list[Prediction] = []
                images: list[np.ndarray] = []
                slots: list[int] = []
                for path, error, future in batch:
                    if future is not None:
                        image, error = future.result()
                        if image is not None:
                            slots.append(len(results))
                            images.append(image)
                    results.append(Prediction(path=path, error=error))
                if images:
                    probs = forward(np.stack(images))
                    for slot, p in zip(slots, probs, strict=True):
                        rank(results[slot], p, classes, top_k)
                yield from results
                task.advance(len(batch))
    finally:
        task.close()


def predict_inputs(
    runtime, inputs: list[tuple[str, str | None]], classes: list[str], *,
    batch_size: int = PREDICT.batch_size, top_k: int = PREDICT.top_k, every: float = PREDICT.every,
    reporter: Reporter | None = None,
) -> Iterator:  # fmt: skip
    """:func:`predict_files` for the images among ``inputs`` and, for each video (by its name), a
    :class:`scenecls.video.Sample` every ``every`` seconds; in the order of ``inputs``."""
    from scenecls.video import is_video_path, predict_video

    images: list[tuple[str, str | None]] = []
    for path, error in inputs:
        if error is None and not is_url(path) and is_video_path(path):
            if images:
                yield from predict_files(runtime, images, classes, batch_size=batch_size, top_k=top_k,
                                         reporter=reporter)  # fmt: skip
                images = []
            yield from predict_video(runtime, path, classes, every=every, batch_size=batch_size, top_k=top_k,
                                     reporter=reporter)  # fmt: skip
        else:
            images.append((path, error))
    if images:
        yield from predict_files(
            runtime, images, classes, batch_size=batch_size, top_k=top_k, reporter=reporter
        )


def predict_array(
    runtime, paths: list[str], *, batch_size: int = 32, workers: int | None = None
) -> np.ndarray:
    """Probabilities ``(n, classes)`` for readable image files, in order, through any runtime."""
    height, width = runtime.input_size
    out = []
    with ThreadPoolExecutor(max_workers=workers or decode_threads()) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            images = list(pool.map(lambda p: load_rgb(p, (height, width)), chunk))
            out.append(runtime.predict(np.stack(images).astype(np.float32)))
    return np.concatenate(out) if out else np.zeros((0, runtime.num_classes), np.float32)


def _load(path: str, size: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
    try:
        if is_url(path):
            return decode_rgb(fetch_image_bytes(path), size), None
        return load_rgb(path, size), None
    except ImageReadError as exc:
        return None, str(exc)
