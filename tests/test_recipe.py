"""Recipe options: label smoothing, MixUp and CutMix, and learning-rate warm-up."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from scenecls import runs
from scenecls.cli import cli
from tests.conftest import ctrl_c_at_batch, tiny, write_class_folders

pytestmark = pytest.mark.slow  # trains several models: left out of the fast lane (-m "not slow")

TINY = tiny()
# A random ResNet's pooled features separate the generated classes gradually: a loss that moves.
LEARNING = ["--backbone", "resnet50_v2", "--weights", "none", "--image-size", "40", "-b", "8", "--no-export"]


def test_smoothed_loss_is_cross_entropy_against_smoothed_targets():
    from scenecls.losses import SmoothedSparseCrossentropy

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    labels = np.array([0, 1])
    targets = np.full((2, 3), 0.1 / 3) + np.eye(3)[labels] * 0.9
    expected = np.mean(-np.sum(targets * np.log(probs), axis=1))
    assert float(SmoothedSparseCrossentropy(0.1)(labels, probs)) == pytest.approx(expected, rel=1e-5)
    plain = np.mean(-np.log(probs[[0, 1], labels]))
    assert float(SmoothedSparseCrossentropy(0.0)(labels, probs)) == pytest.approx(plain, rel=1e-5)


def _class_valued_batches(n: int = 12, size: int = 8):
    """Images filled with 10 * class + 5, labels 0-2, in batches of 6: a mixed image's mean is then
    exactly its soft label's weighted sum of the class values, for MixUp and CutMix alike."""
    import tensorflow as tf

    labels = np.arange(n) % 3
    images = (np.ones((n, size, size, 3)) * (10.0 * labels + 5)[:, None, None, None]).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(6)


def _one_pass(dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixing_blends_images_and_labels_alike(mixup, cutmix):
    from scenecls.data.mixing import Mixing, mix_batches

    mixed = mix_batches(_class_valued_batches(), 3, Mixing(mixup, cutmix), seed=7)
    x, y = _one_pass(mixed)
    values = np.array([5.0, 15.0, 25.0])
    assert y.shape == (12, 3) and np.allclose(y.sum(axis=1), 1.0)
    assert np.allclose(x.mean(axis=(1, 2, 3)), y @ values, atol=1e-3)
    assert (y.max(axis=1) < 0.99).any()  # something was mixed
    if cutmix and not mixup:  # boxes pasted, never blended: only the original values
        assert set(np.unique(x.round(3))) <= set(values)
    again, _ = _one_pass(mixed)
    assert not np.allclose(again, x)  # another epoch, other draws
    same, _ = _one_pass(mix_batches(_class_valued_batches(), 3, Mixing(mixup, cutmix), seed=7))
    assert np.allclose(same, x)  # the same seed, the same first epoch


def test_features_get_mixup_but_no_cutmix():
    from scenecls.data.mixing import Mixing, mix_batches

    _, y = _one_pass(mix_batches(_class_valued_batches(), 3, Mixing(0.0, 1.0), seed=1, images=False))
    assert np.array_equal(y, np.eye(3)[np.arange(12) % 3])  # only one-hot labels


def test_the_loss_takes_soft_labels_too():
    from scenecls.losses import SmoothedSparseCrossentropy

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    soft = np.array([[0.6, 0.4, 0.0], [0.0, 0.25, 0.75]], dtype=np.float32)
    expected = np.mean(-np.sum(soft * np.log(probs), axis=1))
    assert float(SmoothedSparseCrossentropy(0.0)(soft, probs)) == pytest.approx(expected, rel=1e-5)


def test_mixup_and_cutmix_train_with_and_without_the_feature_cache(tmp_path):
    data = write_class_folders(tmp_path / "data" / "train", 8, seed=5, size=40).parent
    write_class_folders(data / "test", 2, seed=6, size=40)
    project = tmp_path / "runs"
    for extra in ([], ["--no-cache"]):
        args = ["train", "--data", str(data), *TINY, "--epochs", "2", "--finetune-epochs", "1", "--mixup",
                "0.2", "--cutmix", "1.0", "--project", str(project), "--format", "json", *extra]  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        run = Path(json.loads(result.stdout)["run_dir"])
        history = runs.read_history(run / "history.csv")
        assert len(history) == 3 and all(
            0 <= r["accuracy"] <= 1 and 0 <= r["val_accuracy"] <= 1 for r in history
        )
        config = json.loads((run / "config.json").read_text())
        assert (config["mixup"], config["cutmix"]) == (0.2, 1.0)
        assert json.loads(result.stdout)["test_accuracy"] is not None
    # A range test from that run computes the recipe's own loss, on its soft (mixed) labels.
    found = CliRunner().invoke(cli, ["lr-find", "--run", str(run), "--phase", "head", "--steps", "10",
                                     "-b", "4", "--project", str(project), "--format", "json"])  # fmt: skip
    assert found.exit_code == 0, found.output
    assert all(math.isfinite(loss) for loss in json.loads(found.stdout)["losses"])


def test_warm_up_and_smoothing_train_save_and_resume(tmp_path, monkeypatch):
    data = write_class_folders(tmp_path / "data", 8, seed=5, size=40)
    project = tmp_path / "runs"
    args = ["train", "--data", str(data), *TINY, "--epochs", "3", "--finetune-epochs", "0", "--no-cache",
            "--warmup-epochs", "2", "--lr-schedule", "constant", "--label-smoothing", "0.1",
            "--project", str(project)]  # fmt: skip
    with ctrl_c_at_batch(monkeypatch, 7):  # 3 batches an epoch: batch 1 of epoch 3
        assert CliRunner().invoke(cli, args).exit_code == 130
    # The checkpoint holds the smoothed loss and the warm-up schedule, and loads in safe mode.
    resumed = CliRunner().invoke(cli, ["train", "--resume", str(project / "train"), "--format", "json"])
    assert resumed.exit_code == 0, resumed.output
    history = runs.read_history(project / "train" / "history.csv")
    rates = [r["lr"] for r in history]
    # Half-way through the 2-epoch warm-up after epoch 1 (Keras counts one more step per epoch on data
    # of unknown length, so a little past half), the full rate from then on.
    assert 4e-4 < rates[0] < 7.5e-4 and rates[1:] == pytest.approx([1e-3, 1e-3])
    config = json.loads((project / "train" / "config.json").read_text())
    assert config["label_smoothing"] == 0.1 and config["warmup_epochs"] == 2


def test_warm_up_with_plateau_is_refused(tmp_path):
    data = write_class_folders(tmp_path / "data", 4, size=16)
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--data",
            str(data),
            *TINY,
            "--warmup-epochs",
            "1",
            "--lr-schedule",
            "plateau",
            "--project",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 2 and "--warmup-epochs" in result.stderr
    assert not Path(tmp_path / "runs" / "train").exists()


def test_range_test_analysis_finds_the_valley():
    from scenecls.training.range_test import analyse

    lrs = list(np.logspace(-6, 0, 61))

    def loss(lr: float) -> float:  # flat, falling fastest near 1e-3, lowest at 1e-2, then exploding
        falling = 1.5 / (1 + np.exp(-4 * (np.log10(lr) + 3)))
        return 2.0 - falling + (50 * (lr - 1e-2) if lr > 1e-2 else 0.0)

    found = analyse(lrs, [loss(lr) for lr in lrs])
    assert len(found["losses"]) == len(lrs)
    assert 5e-3 <= found["min_loss_lr"] <= 5e-2  # the smoothing lags the raw curve a little
    assert 1e-4 <= found["steepest_lr"] <= found["min_loss_lr"] <= found["edge_lr"]
    assert found["suggestion"] == found["min_loss_lr"] / 10 and found["rule"] == "lowest loss / 10"


def test_range_test_from_a_trained_model_suggests_below_the_edge():
    """Flat (noisy) and then rising, as from a trained head: the lowest point is noise, the edge is not."""
    from scenecls.training.range_test import analyse

    lrs = list(np.logspace(-7, -2, 51))
    noise = np.random.default_rng(0).normal(0, 0.01, len(lrs))
    losses = [
        0.2 + n + (3 * (lr - 5e-4) / 5e-4 if lr > 5e-4 else 0.0) for lr, n in zip(lrs, noise, strict=True)
    ]
    found = analyse(lrs, losses)
    assert found["rule"] == "edge of the flat loss / 10"
    assert 2e-4 <= found["edge_lr"] <= 2e-3 and found["suggestion"] == found["edge_lr"] / 10


def test_lr_find_head_and_finetune(tmp_path):
    data = write_class_folders(tmp_path / "data", 8, seed=6, size=40)
    project = tmp_path / "runs"
    common = ["-b", "4", "--project", str(project), "--format", "json"]
    model = ["--backbone", "mobilenet_v2", "--weights", "none", "--image-size", "32"]
    head = CliRunner().invoke(cli, ["lr-find", "--data", str(data), *model, "--steps", "20", *common])
    assert head.exit_code == 0, head.output
    result = json.loads(head.stdout)
    assert result["phase"] == "head" and result["option"] == "--lr"
    assert 1e-7 <= result["suggestion"] <= 1.0
    assert result["suggestion"] in (
        pytest.approx(result["min_loss_lr"] / 10),
        pytest.approx(result["edge_lr"] / 10),
    )
    assert 3 <= len(result["losses"]) <= 20 and len(result["lrs"]) == len(result["losses"])
    assert all(a < b for a, b in zip(result["lrs"], result["lrs"][1:], strict=False))
    assert Path(result["plot"]).read_bytes().startswith(b"\x89PNG")

    train = ["train", "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "0"]
    assert CliRunner().invoke(cli, [*train, "--project", str(project)]).exit_code == 0
    run = str(project / "train")
    fine = CliRunner().invoke(cli, ["lr-find", "--run", run, "--unfreeze", "2", "--steps", "12", *common])
    assert fine.exit_code == 0, fine.output
    report = json.loads(fine.stdout)
    assert report["phase"] == "finetune" and report["option"] == "--finetune-lr"


def _val_losses(result) -> list[float]:
    assert result.exit_code == 0, result.output
    run = Path(json.loads(result.stdout)["run_dir"])
    return [r["val_loss"] for r in runs.read_history(run / "history.csv")]


def test_ema_is_what_is_validated_and_saved(tmp_path):
    """With a momentum near 1 the average hardly moves from the first step's weights: validation, which
    sees the average, then barely changes while the raw weights learn; best.keras holds the average."""
    import keras

    data = write_class_folders(tmp_path / "data", 10, seed=5, size=40)
    args = ["train", "--data", str(data), *LEARNING, "--epochs", "4", "--finetune-epochs", "0", "--lr",
            "0.01", "--dropout", "0", "--format", "json", "--project", str(tmp_path / "runs")]  # fmt: skip
    plain = _val_losses(CliRunner().invoke(cli, args))
    averaged_run = CliRunner().invoke(cli, [*args, "--ema", "0.99999"])
    averaged = _val_losses(averaged_run)
    assert abs(plain[-1] - plain[0]) > 0.05  # the raw weights do learn
    assert abs(averaged[-1] - averaged[0]) < 0.01 * abs(plain[-1] - plain[0])
    run = Path(json.loads(averaged_run.stdout)["run_dir"])
    best = keras.saving.load_model(run / "best.keras")
    average = dict(zip([v.path for v in best.optimizer._trainable_variables],
                       best.optimizer._model_variables_moving_average, strict=True))  # fmt: skip
    # The rule of every checkpoint: the model holds the average, the optimizer's slots the raw weights.
    head = [v for v in best.trainable_variables if v.path in average]
    assert head and any(not np.allclose(v.numpy(), average[v.path].numpy()) for v in head)


def test_ema_resume_repeats_the_uninterrupted_epochs(tmp_path, monkeypatch):
    data = write_class_folders(tmp_path / "data", 10, seed=5, size=40)
    args = ["train", "--data", str(data), *LEARNING, "--epochs", "3", "--finetune-epochs", "0", "--dropout",
            "0", "--ema", "0.9", "--format", "json"]  # fmt: skip
    straight = _val_losses(CliRunner().invoke(cli, [*args, "--project", str(tmp_path / "a")]))
    with ctrl_c_at_batch(monkeypatch, 6):  # 3 batches an epoch: batch 3 of epoch 2
        assert CliRunner().invoke(cli, [*args, "--project", str(tmp_path / "b")]).exit_code == 130
    resumed = CliRunner().invoke(
        cli, ["train", "--resume", str(tmp_path / "b" / "train"), "--format", "json"]
    )
    assert _val_losses(resumed) == pytest.approx(straight, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_computes_in_16_bits_with_a_float32_softmax(tmp_path, monkeypatch, precision):
    import warnings

    import keras

    from scenecls.precision import dtype_policy

    data = write_class_folders(tmp_path / "data", 6, seed=5, size=40)
    args = ["train", "--data", str(data), *TINY, "--epochs", "2", "--finetune-epochs", "2", "--format",
            "json", "--mixed-precision", precision, "--jit", "off", "--ema", "--project",
            str(tmp_path / "runs")]  # fmt: skip
    with ctrl_c_at_batch(monkeypatch, 8):  # 2 batches an epoch: in the second fine-tuning epoch
        assert CliRunner().invoke(cli, args).exit_code == 130
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(
            cli, ["train", "--resume", str(tmp_path / "runs" / "train"), "--format", "json"]
        )
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]  # optimizer state kept
    run = Path(json.loads(result.stdout)["run_dir"])
    config = json.loads((run / "config.json").read_text())
    assert (config["mixed_precision"], config["jit"]) == (precision, "off")
    with dtype_policy(precision):  # as the run loads it to resume
        model = keras.saving.load_model(run / "best.keras")
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    convolutions = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and all(c.dtype_policy.name == f"mixed_{precision}" for c in convolutions)
    assert all(w.dtype == "float32" for w in model.weights)  # weights stay float32
    probs = model(np.zeros((2, 32, 32, 3), np.float32))
    assert probs.dtype == "float32" and np.allclose(np.asarray(probs).sum(axis=1), 1.0, atol=1e-5)
    if precision == "float16":  # Keras scales the loss
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"


def test_auto_precision_is_float32_without_a_gpu(tmp_path):
    data = write_class_folders(tmp_path / "data", 6, seed=5, size=40)
    args = ["train", "--data", str(data), *TINY, "--epochs", "1", "--finetune-epochs", "0", "--format",
            "json", "--project", str(tmp_path / "runs")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    config = json.loads((Path(json.loads(result.stdout)["run_dir"]) / "config.json").read_text())
    assert config["mixed_precision"] == "off"  # auto, resolved on a machine without GPUs


def test_a_saved_float32_model_runs_in_16_bits_or_under_xla_for_inference(tmp_path):
    """evaluate/predict --mixed-precision and --jit: the same weights, another compute policy."""
    import keras

    from scenecls.classifier import build_classifier, find_backbone, save_model
    from scenecls.precision import model_precision, with_precision
    from scenecls.runtimes import KerasRuntime

    keras.utils.set_random_seed(0)
    # ConvNeXt: a random one gives varied probabilities (a random MobileNetV2's are all but uniform).
    model = build_classifier("convnext_tiny", 3, size=32, weights="none")
    path = save_model(model, tmp_path / "model.keras")
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(model(images, training=False))
    assert expected.max() - expected.min() > 0.05

    assert with_precision(model, "off") is model
    recast = with_precision(model, "bfloat16")
    assert (model_precision(model), model_precision(recast)) == ("off", "bfloat16")
    layers = find_backbone(recast).layers
    convolutions = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and all(c.compute_dtype == "bfloat16" for c in convolutions)
    assert recast.get_layer("predictions").compute_dtype == "float32"
    assert all(w.dtype == "float32" for w in recast.weights)
    for precision, jit, tolerance in (("off", True, 1e-5), ("bfloat16", False, 3e-2)):
        probs = KerasRuntime(path, batch_size=4, precision=precision, jit=jit).predict(images)
        assert probs.dtype == np.float32
        assert np.allclose(probs, expected, atol=tolerance), (precision, np.abs(probs - expected).max())

    data = write_class_folders(tmp_path / "data", 2, size=32)
    plain = CliRunner().invoke(cli, ["evaluate", str(path), "--data", str(data), "--format", "json"])
    assert plain.exit_code == 0, plain.output
    for options in (["--mixed-precision", "bfloat16"], ["--jit", "on"]):
        other = CliRunner().invoke(
            cli, ["evaluate", str(path), "--data", str(data), "--format", "json", *options]
        )
        assert other.exit_code == 0, other.output
        assert json.loads(other.stdout)["accuracy"] == pytest.approx(json.loads(plain.stdout)["accuracy"])


def test_exported_models_run_as_exported_and_say_so_when_asked_otherwise():
    from scenecls.cli.predict import inference_settings
    from scenecls.precision import jit_enabled, resolve_precision

    warnings = []

    class Out:
        def warn(self, message: str) -> None:
            warnings.append(message)

    assert inference_settings(Out(), Path("model.tflite"), "auto", "auto") == ("off", False)
    assert warnings == []
    assert inference_settings(Out(), Path("model.onnx"), "bfloat16", "on") == ("off", False)
    assert warnings == ["--mixed-precision and --jit apply to .keras models; model.onnx runs as exported"]
    assert inference_settings(Out(), Path("best.keras"), "bfloat16", "on") == ("bfloat16", True)
    auto = (resolve_precision("auto"), jit_enabled("auto"))  # this machine's: ("off", False) without a GPU
    assert inference_settings(Out(), Path("best.keras"), "auto", "auto") == auto
