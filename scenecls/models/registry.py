"""Backbones by name: how to build each, what input it wants, and where its blocks are.

Every architecture lives in its own small module (as in ``keras.applications``) and registers a
:class:`BackboneSpec` here. Nothing in this module imports TensorFlow; building does.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scenecls.errors import ModelError, UsageError, first_line
from scenecls.models.blocks import BlockMap, BlockNamer, build_block_map

# How an architecture wants its 0-255 RGB input scaled.
SCALE_MINUS_ONE_TO_ONE = "[-1, 1]"  # x / 127.5 - 1 (Keras's "tf" mode)
BUILT_IN = "built in"  # the application normalises its own input


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[..., object]  # (input_shape, weights) -> keras.Model without top
    default_size: int
    min_size: int
    preprocessing: str
    block_of: BlockNamer
    weights_file: Callable[[int], str]  # Keras's cache file name for the no-top ImageNet weights
    params: int  # without top; the same at any input size
    layers: int
    blocks: int

    def block_map(self, backbone) -> BlockMap:
        return build_block_map(backbone, self.block_of)


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


# The seed's three first, then the others; each module registers itself when imported.
ARCHITECTURE_MODULES = (
    "mobilenet_v2",
    "xception",
    "inception_resnet_v2",
    "efficientnet_v2",
    "resnet_v2",
    "convnext",
)


def _load_all() -> None:
    for module in ARCHITECTURE_MODULES:
        importlib.import_module(f"scenecls.models.{module}")


def backbone_names() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown backbone {name!r}; choose one of: {', '.join(_REGISTRY)}") from None


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weight files (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def cached_weights(spec: BackboneSpec, size: int | None = None) -> Path | None:
    path = keras_cache_dir() / spec.weights_file(size or spec.default_size)
    return path if path.is_file() else None


def check_weights(weights: str | Path | None, backbone: str | None = None) -> None:
    """Refuse a ``--weights`` path that is no file (its fit is checked when the model is built), at
    once: commands call this before any long work, and building calls it too. ``imagenet`` and ``none``
    pass."""
    if weights in (None, "none", "imagenet"):
        return
    path = Path(weights)
    if path.is_dir():
        which = f" for {backbone}" if backbone else ""
        raise ModelError(f"--weights {path} is a folder; give a weights file (.h5 or .weights.h5){which}")
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")


def fetch_weights(
    backbone: str, weights: str | Path | None, size: int | None = None, *, quiet: bool = False
) -> None:
    """Make sure the weights a command will build ``backbone`` with are here, before any long work.

    A weights file must exist (:func:`check_weights`); ImageNet weights missing from Keras's cache are
    downloaded now, so that an offline machine fails before images are hashed or a run folder is made,
    not after. Keras reports the download on stdout, where results go: it goes to stderr here (nowhere
    when ``quiet``).
    """
    check_weights(weights, backbone)
    if weights != "imagenet":
        return
    spec = get_spec(backbone)
    size = size or spec.default_size
    if cached_weights(spec, size) is not None:
        return
    _build_imagenet(spec, (size, size, 3), progress=io.StringIO() if quiet else None)


def build_backbone(spec: BackboneSpec, size: int | None = None, weights: str | Path | None = "imagenet"):
    """The backbone without its top, at ``size`` x ``size``, with ``weights``.

    ``weights`` is ``"imagenet"`` (Keras's standard files and cache), ``None``/``"none"`` (random) or
    the path of a weights file for this architecture.
    """
    size = size or spec.default_size
    if size < spec.min_size:
        raise UsageError(f"{spec.name} needs inputs of at least {spec.min_size}x{spec.min_size}, got {size}")
    shape = (size, size, 3)
    if weights in (None, "none"):
        return spec.build(shape, None)
    if weights == "imagenet":
        return _build_imagenet(spec, shape)
    path = Path(weights)
    check_weights(path, spec.name)
    model = spec.build(shape, None)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(str(path))
    except Exception as exc:  # Keras raises ValueError, OSError, KeyError... for a misfit file
        raise ModelError(_misfit(path, spec, first_line(exc, 300))) from exc
    # Keras only warns when part of the file fits, leaving the rest random: that is no model to train.
    skipped = [w for w in caught if "Skipping" in str(w.message) or "freshly-initialized" in str(w.message)]
    if skipped:
        raise ModelError(_misfit(path, spec, first_line(skipped[0].message, 300)))
    return model


def _misfit(path: Path, spec: BackboneSpec, reason: str) -> str:
    """The error for a weights file made for another architecture: most often the default backbone
    met a file of another one (``--weights`` without ``--backbone``)."""
    return (
        f"weights file {path} does not fit {spec.name}: {reason.rstrip('.')}; "
        f"are they another backbone's? (--backbone chooses it)"
    )


def _build_imagenet(spec: BackboneSpec, shape: tuple[int, int, int], progress=None):
    """The backbone with Keras's ImageNet weights; a download's progress goes to ``progress`` (default
    stderr), never to stdout, where a command's results go."""
    was_cached = cached_weights(spec, shape[0]) is not None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(progress or sys.stderr):
            # Keras warns that it loads the 224-pixel file into another input size; the convolutions'
            # weights do not depend on the size, so for us this is the expected case, not news.
            warnings.filterwarnings("ignore", message=".*will be loaded as the default.*")
            return spec.build(shape, "imagenet")
    except Exception as exc:
        fname = spec.weights_file(shape[0])
        where = keras_cache_dir()
        if was_cached:
            raise ModelError(
                f"the cached ImageNet weights {where / fname} could not be loaded ({first_line(exc, 300)}); "
                f"delete the file to download it again"
            ) from exc
        raise ModelError(
            f"ImageNet weights for {spec.name} are not cached and could not be downloaded "
            f"({first_line(exc, 300)}): put {fname} in {where} (or set KERAS_HOME), or pass "
            f"--weights PATH or --weights none"
        ) from exc
