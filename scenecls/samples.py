"""Images of a run's own data for checking an export against its Keras model and calibrating int8: a
seeded choice from its held-out split, raw 0-255 at the model's input size."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sample_images(
    run_dir: Path | None,
    data: Path | None,
    size: tuple[int, int],
    count: int,
    classes: list[str],
    *,
    reporter,
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Up to ``count`` images (raw 0-255, at ``size``) with their labels, for the parity check and int8
    calibration: the run's validation split (rebuilt from its seed), or ``data``'s; random pixels, said
    so, when there is no data at all."""
    from scenecls import runs
    from scenecls.config import TrainConfig
    from scenecls.data.pipeline import prepare_data, prepare_run_data

    if count == 0:
        return np.zeros((0, *size, 3), np.float32), None, "images"
    if data is not None:  # named on purpose: it must be there (random pixels only when there is no data)
        from scenecls.paths import data_source

        data = data_source(data)
    recorded = runs.Run(run_dir).recorded if run_dir else None
    config = TrainConfig.from_dict(recorded) if recorded is not None else TrainConfig()
    source = data or (recorded.get("data") if recorded else None)
    if source is None and recorded is not None:
        from scenecls.paths import default_dataset_dir

        source = default_dataset_dir() if default_dataset_dir().exists() else None
    if source is None or not Path(source).exists():
        reporter.warn("no data to check the export on: using random pixels (agreement only, no accuracy)")
        rng = np.random.default_rng(0)
        return rng.uniform(0, 255, (count, *size, 3)).astype(np.float32), None, "random images"
    if recorded is not None:  # the run's own images, or refused when they are not what it trained on
        prepared, _ = prepare_run_data(recorded, owner=run_dir, data=data, val_split=config.val_split,
                                       seed=config.validation_seed, reporter=reporter)  # fmt: skip
    else:
        prepared = prepare_data(Path(source), val_split=config.val_split, seed=config.validation_seed,
                                reporter=reporter)  # fmt: skip
    # An ensemble's members trained on one another's validation images: its test images say more.
    ensemble = run_dir is not None and data is None and runs.is_ensemble_run(run_dir)
    split, what = prepared.held_out(test_first=ensemble)
    what += " images"
    images, labels = split_images(split, size, count)
    same = list(prepared.classes) == list(classes)
    return images, labels if same else None, what


def split_images(split, size: tuple[int, int], count: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` images of ``split`` (a seeded choice, in the split's order), raw 0-255 at ``size``,
    with their labels: what the parity check and int8 calibration run on."""
    from scenecls.data.images import load_rgb

    chosen = sorted(np.random.default_rng(0).permutation(len(split))[:count].tolist())
    images = np.stack([load_rgb(split.paths[i], size) for i in chosen]).astype(np.float32)
    return images, np.asarray([split.labels[i] for i in chosen])
