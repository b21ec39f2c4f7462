"""``scenecls train`` and ``scenecls finetune``: run the recipe into a run folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from scenecls.cli.output import (
    Output,
    accuracy_cell,
    check_fail_under,
    fail_under_option,
    format_option,
    precision_options,
    project_option,
)
from scenecls.cli.types import FiniteFloatRange, rate_type
from scenecls.config import LR_SCHEDULES, TrainConfig
from scenecls.data.augment import NO_AUGMENTATION, AugmentConfig
from scenecls.training.strategy import MODES as DISTRIBUTE_MODES

DEFAULTS = TrainConfig()


def _backbone_choice() -> click.Choice:
    from scenecls.models.registry import backbone_names

    return click.Choice(backbone_names())


def _add_options(func, options: list):
    """``func`` with ``options`` added, listed by ``--help`` in their order."""
    for option in reversed(options):
        func = option(func)
    return func


def run_options(func):
    """Options shared by train and finetune: where runs go and how results print."""
    return _add_options(
        func,
        [
            project_option(),
            click.option("--name", default=None, help="Run folder name; a number is added when taken."),
            click.option(
                "--batch-size", "-b", type=click.IntRange(1), default=DEFAULTS.batch_size, show_default=True
            ),
            click.option(
                "--patience",
                type=click.IntRange(1),
                default=None,
                help="Stop a phase after this many epochs without a better val accuracy; "
                "the best weights are restored.",
            ),
            click.option(
                "--lr-schedule",
                type=click.Choice(LR_SCHEDULES),
                default=DEFAULTS.lr_schedule,
                show_default=True,
                help="cosine: decay to 0 over each phase; plateau: x0.2 after "
                "2 epochs without a better val loss.",
            ),
            click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True),
            click.option(
                "--cache-images", is_flag=True, help="Keep decoded images in memory (RAM permitting)."
            ),
            click.option(
                "--tensorboard",
                is_flag=True,
                help="TensorBoard logs in the run folder (see them with: tensorboard --logdir runs).",
            ),
            precision_options,
            click.option(
                "--distribute",
                type=click.Choice(DISTRIBUTE_MODES),
                default="auto",
                show_default=True,
                help="tf.distribute: mirrored = this machine's GPUs, multiworker = the cluster TF_CONFIG "
                "names; auto picks one of them when there are several GPUs or a cluster.",
            ),
            format_option("table", "json"),
        ],
    )


def choose_distribution(out: Output, mode: str):
    """The strategy, made before anything else touches TensorFlow (a multi-worker one must be)."""
    out.load_tensorflow()
    from scenecls.training.strategy import choose

    distribution = choose(mode)
    if not distribution.chief:
        out.log(f"This process is {distribution.task} of {distribution.workers}; the chief writes the runs")
    return distribution


class MapAugment(click.ParamType):
    """``none`` or a comma list of ``flip`` and ``crop``, in that order."""

    name = "none|flip|crop|flip,crop"

    def convert(self, value, param, ctx):
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
        if parts in (["none"], []):
            return "none"
        unknown = [p for p in parts if p not in MAP_AUGMENTATIONS]
        if unknown:
            self.fail(f"{', '.join(unknown)} is not one of none, flip, crop", param, ctx)
        return ",".join(m for m in MAP_AUGMENTATIONS if m in parts)


MAP_AUGMENTATIONS = ("flip", "crop")


def finetune_cache_options(func):
    """The caches' switch and the fine-tuning activation cache's copies: for every command that fine-tunes."""
    return _add_options(
        func,
        [
            click.option(
                "--no-cache",
                "no_cache",
                is_flag=True,
                help="Train on images every epoch: no cached backbone features (phase 1) and no cached "
                "activations below the unfrozen blocks (fine-tuning).",
            ),
            click.option(
                "--finetune-copies",
                type=click.IntRange(0),
                default=DEFAULTS.finetune_copies,
                show_default=True,
                help="Augmented copies of each training image whose activations below the unfrozen "
                "blocks are cached for fine-tuning (epoch e trains on copy e mod K); 0 = fine-tune on "
                "images, freshly augmented every epoch.",
            ),
            click.option(
                "--finetune-map-aug",
                type=MapAugment(),
                default=DEFAULTS.finetune_map_aug,
                show_default=True,
                help="Change the cached activation maps in every fine-tuning epoch, for more variety "
                "from the same copies: flip (half of them mirrored left-right), crop (a random 80-100 % "
                "window resized back), both as flip,crop, or none.",
            ),
        ],
    )


def cache_options(func):
    """The caches' options for train and sweep, whose runs have a phase 1 as well."""
    func = click.option(
        "--cache-aug",
        type=click.IntRange(0),
        default=DEFAULTS.cache_aug,
        show_default=True,
        help="Augmented copies per image in the feature cache, besides the image itself.",
    )(func)
    return finetune_cache_options(func)


def recipe_options(func):
    """The recipe's options shared by train and sweep: data, weights, head sizes, epochs, rates."""
    return _add_options(
        func,
        [
            click.option(
                "--data",
                type=click.Path(path_type=Path),
                help="Data set folder or CSV  [default: the fetch-data set]",
            ),
            click.option(
                "--weights",
                default=DEFAULTS.weights,
                show_default=True,
                help="imagenet, none, or a weights file.",
            ),
            click.option(
                "--image-size",
                type=click.IntRange(16),
                default=None,
                help="Input size  [default: the backbone's]",
            ),
            click.option("--units", type=click.IntRange(1), default=DEFAULTS.units, show_default=True),
            click.option(
                "--dropout",
                type=FiniteFloatRange(0, 1, max_open=True),
                default=DEFAULTS.dropout,
                show_default=True,
            ),
            click.option(
                "--epochs",
                type=click.IntRange(0),
                default=DEFAULTS.epochs,
                show_default=True,
                help="Phase 1 epochs (frozen backbone).",
            ),
            click.option("--lr", type=rate_type(), default=DEFAULTS.lr, show_default=True),
            click.option(
                "--finetune-epochs",
                type=click.IntRange(0),
                default=DEFAULTS.finetune_epochs,
                show_default=True,
                help="Epochs of each fine-tuning stage.",
            ),
            click.option(
                "--finetune-lr",
                type=rate_type(),
                default=DEFAULTS.finetune_lr,
                show_default=True,
            ),
            click.option(
                "--val-split",
                type=FiniteFloatRange(0, 1, max_open=True),
                default=DEFAULTS.val_split,
                show_default=True,
                help="Fraction held out for validation when there is no val/ folder; 0 trains on every "
                "image, the last epoch being the model.",
            ),
            click.option(
                "--warmup-epochs",
                type=click.IntRange(0),
                default=DEFAULTS.warmup_epochs,
                show_default=True,
                help="Raise each phase's rate linearly from 0 over this many epochs.",
            ),
            click.option(
                "--label-smoothing",
                type=FiniteFloatRange(0, 1, max_open=True),
                default=DEFAULTS.label_smoothing,
                show_default=True,
                help="Smooth the targets: 1 - S + S/k for the true class, S/k for the others.",
            ),
            click.option(
                "--mixup",
                type=FiniteFloatRange(0, 100),
                default=DEFAULTS.mixup,
                show_default=True,
                metavar="ALPHA",
                help="MixUp: blend pairs of images and labels by Beta(ALPHA, ALPHA); 0 = off.",
            ),
            click.option(
                "--cutmix",
                type=FiniteFloatRange(0, 100),
                default=DEFAULTS.cutmix,
                show_default=True,
                metavar="ALPHA",
                help="CutMix: paste a box of another image, labels by area; 0 = off. With --mixup, "
                "each batch uses one of the two.",
            ),
            click.option(
                "--ema",
                type=FiniteFloatRange(0, 1, max_open=True),
                default=DEFAULTS.ema,
                is_flag=False,
                flag_value=0.99,
                metavar="[MOMENTUM]",
                help="Validate and save a moving average of the weights (--ema alone: momentum 0.99); "
                "0 = off.",
            ),
            *augment_options(),
            click.option("--class-weights", is_flag=True, help="Weight the loss to balance unequal classes."),
        ],
    )


AUGMENT_OPTIONS = tuple(field.name for field in dataclasses.fields(AugmentConfig))


def augment_options(inherited: bool = False) -> list:
    """Whether and how strongly to augment, each strength unset by default: a new run takes the
    default ranges, a fine-tuning run (``inherited``) its parent's."""
    ranges = AugmentConfig()

    def default(value: str) -> str:
        return "  [default: the run's]" if inherited else f"  [default: {value}]"

    return [
        click.option("--no-augment", is_flag=True, help="Train without augmentation."),
        click.option(
            "--rotation", type=FiniteFloatRange(0, 180), default=None, metavar="DEG",
            help="Rotate by up to DEG degrees either way" + default(f"{ranges.rotation:g}"),
        ),
        click.option(
            "--shift", type=FiniteFloatRange(0, 1), default=None, metavar="FRAC",
            help="Shift by up to FRAC of the width and height" + default(f"{ranges.shift:g}"),
        ),
        click.option(
            "--zoom", type=FiniteFloatRange(0, 1, max_open=True), default=None, metavar="FRAC",
            help="Zoom in or out by up to FRAC" + default(f"{ranges.zoom:g}"),
        ),
        click.option(
            "--shear", type=FiniteFloatRange(0, 80), default=None, metavar="DEG",
            help="Shear by up to DEG degrees either way" + default(f"{ranges.shear:g}"),
        ),
        click.option(
            "--flip/--no-flip", default=None, help="Mirror half the images left to right" + default("flip"),
        ),
    ]  # fmt: skip


def finetune_augment_options(func):
    """The augmentation options for ``finetune``, whose unset strengths are the parent run's."""
    return _add_options(func, augment_options(inherited=True))


def augment_from_options(base: AugmentConfig, no_augment: bool, options: dict) -> AugmentConfig:
    """``base`` with the augmentation options given on the command line (taken out of ``options``)."""
    from scenecls.errors import UsageError

    given = {key: value for key in AUGMENT_OPTIONS if (value := options.pop(key, None)) is not None}
    if no_augment:
        if given:
            names = ", ".join(f"--{key}" for key in given)
            raise UsageError(f"--no-augment turns augmentation off: give it or {names}, not both")
        return NO_AUGMENTATION
    return dataclasses.replace(base, **given)


def config_from_options(data: Path | None, no_augment: bool, no_cache: bool, options: dict) -> TrainConfig:
    """A run's configuration from the recipe and run options as click passes them."""
    augment = augment_from_options(AugmentConfig(), no_augment, options)
    data_path = str(data) if data else None
    return TrainConfig(data=data_path, feature_cache=not no_cache, augment=augment, **options)


@click.command("train")
@click.option("--backbone", type=_backbone_choice(), default=DEFAULTS.backbone, show_default=True)
@click.option(
    "--dense",
    type=click.IntRange(0),
    default=DEFAULTS.dense,
    show_default=True,
    help="Hidden dense layers in the head.",
)
@click.option(
    "--unfreeze",
    default=DEFAULTS.unfreeze,
    show_default=True,
    help="Blocks to fine-tune: N, all, or stages like 1,3,5; 0 = frozen backbone only.",
)
@click.option(
    "--unfreeze-layers",
    type=click.IntRange(1),
    default=None,
    help="Fine-tune the last K layers instead of blocks.",
)
@click.option(
    "--resume",
    "resume",
    default=None,
    metavar="RUN",
    help="Continue an interrupted run (folder or name) with its own options; with --epochs or "
    "--finetune-epochs, give a finished run's last phase more epochs (the new total).",
)
@click.option("--exist-ok", is_flag=True, help="Reuse --name even if it exists.")
@recipe_options
@cache_options
@run_options
@fail_under_option()
@click.option("--no-export", is_flag=True, help="Do not write best.tflite (fast predict) when the run ends.")
@click.pass_obj
def train(
    out: Output,
    resume: str | None,
    exist_ok: bool,
    project: Path,
    name: str | None,
    fmt: str,
    fail_under: float | None,
    no_export: bool,
    no_augment: bool,
    no_cache: bool,
    data: Path | None,
    distribute: str,
    **options,
) -> None:
    """Train a classifier: the head on a frozen backbone, then fine-tune the last blocks.

    Every epoch updates runs/NAME/ (history.csv, last.keras, best.keras, state.json); Ctrl-C keeps
    them and prints how to resume.
    """
    from scenecls import runs
    from scenecls.paths import data_source

    distribution = choose_distribution(out, distribute)
    if resume:
        run_dir = runs.trained_run(resume, project)
        ctx = click.get_current_context()
        more = {
            key: options[key]
            for key in ("epochs", "finetune_epochs")
            if ctx.get_parameter_source(key) == click.core.ParameterSource.COMMANDLINE
        }
        if more and distribution.chief:
            from scenecls.training.state import extend_run

            extend_run(run_dir, **more)
        config = TrainConfig.from_dict(runs.read_json(run_dir / runs.CONFIG))
        _run(out, config, run_dir, fmt, fail_under, distribution, resume=True)
        return
    config = config_from_options(data, no_augment, no_cache, options)
    config.export_tflite = not no_export
    data_source(config.data)  # no data set: say so before a runs/ folder is made for nothing
    run_dir = _new_run_dir(distribution, project, name or "train", exist_ok)
    _run(out, config, run_dir, fmt, fail_under, distribution)


def _new_run_dir(distribution, project: Path, name: str, exist_ok: bool) -> Path:
    """The chief makes the run folder; a worker only names it (it trains in a scratch copy)."""
    from scenecls import runs

    if distribution.chief:
        return runs.create_run_dir(project, name, exist_ok=exist_ok)
    return project / name


@click.command("finetune")
@click.argument("run", required=False)
@click.option("--data", type=click.Path(path_type=Path), help="Data set  [default: the run's]")
@click.option(
    "--backbone",
    type=_backbone_choice(),
    default=None,
    help="Refuse the run unless its model has this backbone.",
)
@click.option("--unfreeze", default="5", show_default=True, help="Blocks to fine-tune: N, all, or 1,3,5.")
@click.option("--unfreeze-layers", type=click.IntRange(1), default=None)
@click.option(
    "--finetune-epochs", type=click.IntRange(1), default=DEFAULTS.finetune_epochs, show_default=True
)
@click.option("--finetune-lr", type=rate_type(), default=DEFAULTS.finetune_lr, show_default=True)
@finetune_augment_options
@finetune_cache_options
@run_options
@fail_under_option()
@click.option("--no-export", is_flag=True, help="Do not write best.tflite (fast predict) when the run ends.")
@click.pass_obj
def finetune(
    out: Output,
    run: str | None,
    data: Path | None,
    backbone: str | None,
    project: Path,
    name: str | None,
    fmt: str,
    fail_under: float | None,
    no_export: bool,
    no_cache: bool,
    no_augment: bool,
    distribute: str,
    **options,
) -> None:
    """Fine-tune a run's best model again, into a new run folder that records its parent.

    RUN is a run folder or name (default: the latest run).
    """
    from scenecls import runs
    from scenecls.errors import ModelError

    distribution = choose_distribution(out, distribute)
    parent = runs.trained_run(run, project)
    parent_config = TrainConfig.from_dict(runs.read_json(parent / runs.CONFIG))
    if backbone and backbone != parent_config.backbone:
        raise ModelError(f"{parent} holds a {parent_config.backbone} model, not {backbone}")
    augment = augment_from_options(parent_config.augment, no_augment, options)
    config = TrainConfig.from_dict(
        {
            **parent_config.to_dict(),
            **options,
            "augment": augment.to_dict(),
            "data": str(data) if data else parent_config.data,
            "epochs": 0,
            "weights": "none",
            "parent": str(parent),
            "split_seed": parent_config.validation_seed,  # validate on what the parent held out
            "export_tflite": not no_export,
            "feature_cache": not no_cache,
        }
    )
    run_dir = _new_run_dir(distribution, project, name or f"{parent.name}-ft", False)
    _run(out, config, run_dir, fmt, fail_under, distribution, start_model=parent / runs.BEST)


def _run(
    out: Output,
    config: TrainConfig,
    run_dir: Path,
    fmt: str,
    fail_under: float | None,
    distribution,
    *,
    resume: bool = False,
    start_model: Path | None = None,
) -> None:
    from scenecls.training.loop import TrainingInterrupted
    from scenecls.training.loop import train as run_training

    if distribution.chief:
        out.log(f"Run folder: {run_dir}")
    try:
        result = run_training(
            config, run_dir, reporter=out.reporter(), resume=resume, start_model=start_model,
            distribution=distribution,
        )  # fmt: skip
    except TrainingInterrupted as exc:
        where = exc.run_dir if distribution.chief else run_dir  # a worker's own copy is gone
        click.echo(f"Interrupted. Resume with: scenecls train --resume {where}", err=True)  # even with -q
        raise click.exceptions.Exit(130) from None
    if not distribution.chief:  # the results are the chief's to report
        best = accuracy_cell(result.best_val_accuracy)
        out.log(f"{distribution.task}: training finished (best val accuracy {best})")
        return
    if result.status == "finished":
        from scenecls.fast_predict import export_after_training

        export_after_training(run_dir, out.reporter())
    _render(out, result, fmt)
    # The gate judges the test split when there is one, else the best validation accuracy.
    if result.test_accuracy is not None:
        check_fail_under(out, result.test_accuracy, fail_under, "test accuracy")
    else:
        check_fail_under(out, result.best_val_accuracy, fail_under, "best validation accuracy")


def _render(out: Output, result, fmt: str) -> None:
    if fmt == "json":
        out.json(result.to_dict())
        return
    last = "" if result.best_val_accuracy is not None else "; the last: no validation images"
    out.table(
        ["", ""],
        [
            ["best val accuracy", accuracy_cell(result.best_val_accuracy)],
            ["best epoch", f"{result.best_epoch} ({result.best_phase}){last}"],
            ["test accuracy", accuracy_cell(result.test_accuracy)],
            ["epochs", str(result.epochs) + (" (stopped early)" if result.stopped_early else "")],
            ["time", f"{result.seconds:.0f} s"],
            ["run folder", str(result.run_dir)],
        ],
        title="Training finished",
    )
