"""Scenes in a video: frames sampled every few seconds, classified in batches, and the scene segments
they make once smoothed.

A video is decoded by PyAV (FFmpeg; the ``video`` extra) one frame at a time, and only the sampled
frames are kept, resized to the model's input, so memory stays bounded by one batch whatever the video's
length. A damaged or truncated video gives the samples read before the damage and then its reason
(:class:`VideoReadError` from the iterator, after them).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenecls.command_options import PREDICT
from scenecls.errors import first_line
from scenecls.progress import NullReporter, Reporter

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".ts"})
EXTRA = "pip install 'scenecls[video]'"


class VideoReadError(Exception):
    """The video cannot be read (any more): the reason in a few words, and ``at`` the time (seconds) of
    the last frame read."""

    def __init__(self, message: str, at: float = 0.0) -> None:
        super().__init__(message)
        self.at = at


def is_video_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def check_installed() -> None:
    import importlib.util

    from scenecls.errors import SceneclsError

    if importlib.util.find_spec("av") is None:
        raise SceneclsError(f"predicting on videos needs PyAV: {EXTRA}")


@dataclass
class Sample:
    """One sampled frame's prediction."""

    path: str
    time: float  # seconds from the start
    label: str | None = None
    confidence: float | None = None
    top: list[tuple[str, float]] | None = None
    error: str | None = None
    scores: dict[str, float] | None = None  # every class's probability (for the segments), not printed
    unknown: bool | None = None  # as answers.Prediction's: below --min-confidence (None: no floor asked)
    best_guess: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        data = {
            "path": self.path,
            "time": round(self.time, 3),
            "label": self.label,
            "confidence": self.confidence,
        }
        data["top"] = [{"label": label, "confidence": conf} for label, conf in self.top or []]
        data["error"] = self.error
        if self.unknown is not None:
            data["unknown"], data["best_guess"] = self.unknown, self.best_guess
        return data


@dataclass
class Segment:
    """A stretch of video in one scene: from ``start`` to ``end`` seconds."""

    path: str
    start: float
    end: float
    label: str
    confidence: float  # the mean of its samples' confidence in ``label``
    samples: int

    def to_dict(self) -> dict:
        return {"path": self.path, "start": round(self.start, 3), "end": round(self.end, 3),
                "label": self.label, "confidence": self.confidence, "samples": self.samples}  # fmt: skip


def sample_frames(
    path: str | Path, every: float, size: tuple[int, int]
) -> Iterator[tuple[float, np.ndarray]]:
    """``(time, frame)`` every ``every`` seconds (the first frame at or after each multiple), each frame
    ``size`` (height, width) RGB uint8. :class:`VideoReadError` when the file is no video, or after the
    last frame read when it is damaged."""
    import av
    from PIL import Image

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:  # a text file named .mp4, a missing file
        raise VideoReadError(_reason(exc)) from None
    with container:
        if not container.streams.video:
            raise VideoReadError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        length = container.duration / 1_000_000 if container.duration else None
        step = 1 / float(stream.average_rate) if stream.average_rate else 0.1
        next_time, last = 0.0, None
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                last = float(frame.time)
                if last + 1e-6 < next_time:
                    continue
                image = frame.to_image().convert("RGB")
                if image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                yield last, np.asarray(image, dtype=np.uint8)
                next_time = (math.floor(last / every + 1e-9) + 1) * every
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise VideoReadError(_reason(exc), last or 0.0) from None
        # A cut-off file often just ends: its frames stop well before the length its header gives.
        if last is None:
            raise VideoReadError("no frame could be decoded")
        if length is not None and last < length - 3 * step - 0.25:
            raise VideoReadError(f"truncated: its frames end at {last:.1f} s of its {length:.1f} s", last)


def duration(path: str | Path) -> float | None:
    """The video's length in seconds, as its container says (None when it does not)."""
    import av

    try:
        with av.open(str(path)) as container:
            if container.duration:
                return container.duration / 1_000_000
            stream = container.streams.video[0] if container.streams.video else None
            if stream is not None and stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except (av.FFmpegError, OSError, ValueError, IndexError):
        return None
    return None


def _reason(exc: Exception) -> str:
    text = first_line(exc)
    lowered = text.lower()
    if "invalid data" in lowered:
        return "not a readable video (invalid data)"
    if "no such file" in lowered:
        return "no such file"
    return text or type(exc).__name__


def predict_video(
    runtime, path: str, classes: list[str], *, every: float = 1.0, batch_size: int = 32, top_k: int = 1,
    reporter: Reporter | None = None,
) -> Iterator[Sample]:  # fmt: skip
    """A :class:`Sample` for each sampled frame, in order, then (when the video is damaged) one last with
    its ``error`` and the time it stopped at."""
    from scenecls.answers import Prediction, rank

    reporter = reporter or NullReporter()
    length = duration(path)
    total = max(1, math.ceil(length / every)) if length else None
    task = reporter.task(f"Frames of {Path(path).name}", total=total, unit="frames")
    times: list[float] = []
    frames: list[np.ndarray] = []

    def flush() -> Iterator[Sample]:
        probabilities = runtime.predict(np.stack(frames).astype(np.float32))
        for moment, row in zip(times, probabilities, strict=True):
            ranked = rank(Prediction(path=path), row, classes, top_k)
            scores = {name: float(p) for name, p in zip(classes, row, strict=True)}
            yield Sample(path, moment, ranked.label, ranked.confidence, ranked.top, ranked.error, scores)
        task.advance(len(frames))
        times.clear()
        frames.clear()

    try:
        for moment, frame in sample_frames(path, every, runtime.input_size):
            times.append(moment)
            frames.append(frame)
            if len(frames) == batch_size:
                yield from flush()
        if frames:
            yield from flush()
    except VideoReadError as exc:
        if frames:
            yield from flush()
        yield Sample(path, exc.at, error=str(exc))
    finally:
        task.close()


def segments(
    samples: list[Sample], *, every: float, smooth: int = PREDICT.smooth, end: float | None = None
) -> list[Segment]:
    """The scenes of one video: each sample's label replaced by the most common label of the ``smooth``
    samples centred on it (a lone misread frame does not cut a scene in three), then runs of one label
    merged. A segment ends where the next one starts; the last at ``end`` (the video's length) or one
    sampling interval after its last sample."""
    good = [s for s in samples if s.error is None and s.label is not None]
    if not good:
        return []
    half = max(0, smooth // 2)
    labels = [s.label for s in good]
    smoothed = []
    for i in range(len(good)):
        window = Counter(labels[max(0, i - half) : i + half + 1])
        top = max(window.values())
        # A tie keeps the sample's own label when it is among the most common, else the earliest of them.
        choice = (
            labels[i]
            if window[labels[i]] == top
            else next(x for x in labels[max(0, i - half) :] if window[x] == top)
        )
        smoothed.append(choice)
    result: list[Segment] = []
    start = 0
    for i in range(1, len(good) + 1):
        if i == len(good) or smoothed[i] != smoothed[start]:
            run = good[start:i]
            label = smoothed[start]
            confidence = float(np.mean([_confidence_in(s, label) for s in run]))
            stop = good[i].time if i < len(good) else (end if end is not None else run[-1].time + every)
            result.append(
                Segment(good[0].path, run[0].time, max(stop, run[-1].time), label, confidence, len(run))
            )
            start = i
    return result


def _confidence_in(sample: Sample, label: str) -> float:
    """The sample's probability of ``label`` (for an abstention, its top class's)."""
    if sample.unknown:
        return sample.confidence or 0.0
    if sample.scores is not None:
        return sample.scores.get(label, 0.0)
    return next((confidence for name, confidence in sample.top or [] if name == label), 0.0)
