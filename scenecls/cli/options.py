"""Command-line options made from the config: each training option's default, range and help is
written once, in :class:`scenecls.config.TrainConfig`'s field metadata, and :func:`option` makes its
click option; the groups of options several commands share are here too."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from scenecls.cli.output import EXIT_BELOW_THRESHOLD
from scenecls.cli.types import FiniteFloatRange, rate_type
from scenecls.config import MAP_AUGMENTATIONS, TrainConfig, option_of
from scenecls.config_fields import Option, declared_option
from scenecls.data.augment import NO_AUGMENTATION, AugmentConfig
from scenecls.training import DISTRIBUTE_MODES

FORMATS = ("table", "json", "csv")


def format_option(*choices: str, default: str = "table"):
    """The ``--format`` option for a command that prints results."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices or FORMATS),
        default=default,
        show_default=True,
        help="How to print results on stdout.",
    )


trust_model_option = click.option(
    "--trust-model",
    is_flag=True,
    help="Load a SavedModel even when its graph holds ops a classifier does not need (file, process or "
    "network ops): only for a model you trust.",
)


def precision_options(func):
    """``--mixed-precision`` and ``--jit``, for the commands that train or run a Keras model."""
    return option("mixed_precision")(option("jit")(func))


def fail_under_option():
    """``--fail-under X``: an accuracy gate for scripts and CI jobs."""
    return click.option(
        "--fail-under",
        type=FiniteFloatRange(0, 1),
        default=None,
        metavar="ACC",
        help=f"Exit with code {EXIT_BELOW_THRESHOLD} (after writing every output) when the accuracy is "
        "below ACC, a fraction such as 0.93.",
    )


def project_option():
    """``--project``: the folder that holds the run folders."""
    return click.option(
        "--project",
        type=click.Path(path_type=Path),
        default=Path("runs"),
        show_default=True,
        help="Folder that holds the run folders.",
    )


def backbone_choice() -> click.Choice:
    from scenecls.models.registry import backbone_names

    return click.Choice(backbone_names())


def option(name: str, config: type | None = None, **changes: Any):
    """The click option of field ``name`` (``--name-with-dashes``) of ``config`` (a dataclass whose
    fields declare their options; :class:`~scenecls.config.TrainConfig` when not given), from its
    :class:`Option` and default; ``changes`` adjust the option for one command (its own help)."""
    spec, default = option_of(name) if config is None else declared_option(config, name)
    return _click_option(name, dataclasses.replace(spec, **changes), default)


def _click_option(name: str, spec: Option, default: Any):
    flag = f"--{name.replace('_', '-')}"
    if spec.kind == "switch":
        return click.option(f"{flag}/--no-{flag[2:]}", default=default, help=spec.help)
    declarations = [flag, *spec.aliases, *([spec.short] if spec.short else [])]
    if spec.kind == "flag":
        return click.option(*declarations, is_flag=True, help=spec.help)
    settings: dict[str, Any] = {"default": default, "help": spec.help, "metavar": spec.metavar}
    if spec.kind != "text":
        settings["type"] = _click_type(spec)
    if default is not None and spec.show_default:
        settings["show_default"] = True
    if spec.flag_value is not None:
        settings.update(is_flag=False, flag_value=spec.flag_value)
    return click.option(*declarations, **settings)


def _click_type(spec: Option) -> click.ParamType | type:
    if spec.kind == "int":
        bounded = spec.low is not None or spec.high is not None
        return click.IntRange(_int(spec.low), _int(spec.high)) if bounded else int
    if spec.kind == "float":
        return FiniteFloatRange(spec.low, spec.high, max_open=spec.high_open)
    if spec.kind == "rate":
        return rate_type()
    if spec.kind == "choice":
        return click.Choice(spec.choices)
    if spec.kind == "backbone":
        return backbone_choice()
    if spec.kind == "map_aug":
        return MapAugment()
    raise ValueError(f"unknown option kind {spec.kind!r}")


def _int(bound: float | None) -> int | None:
    return None if bound is None else int(bound)


def _add_options(func, options: list):
    """``func`` with ``options`` added, listed by ``--help`` in their order."""
    for item in reversed(options):
        func = item(func)
    return func


def run_options(func):
    """Options shared by train and finetune: where runs go and how results print."""
    return _add_options(
        func,
        [
            project_option(),
            click.option("--name", default=None, help="Run folder name; a number is added when taken."),
            option("batch_size"),
            option("patience"),
            option("lr_schedule"),
            option("seed"),
            option("cache_images"),
            option("tensorboard"),
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
            option("finetune_copies"),
            option("finetune_map_aug"),
            option("cache_runtime"),
        ],
    )


def cache_options(func):
    """The caches' options for train and sweep, whose runs have a phase 1 as well."""
    func = option("cache_aug")(func)
    return finetune_cache_options(func)


def distill_options(func):
    """Learning from unlabelled images and a teacher's targets (train)."""
    names = ["unlabelled", "teacher", "targets", "pseudo_confidence", "distill_weight", "distill_temperature"]
    return _add_options(func, [option(name) for name in names])


def recipe_options(func):
    """The recipe's options shared by train and sweep: data, weights, head sizes, epochs, rates."""
    data = click.option(
        "--data",
        type=click.Path(path_type=Path),
        help="Data set folder or CSV  [default: the fetch-data set]",
    )
    recipe = ["weights", "image_size", "units", "dropout", "epochs", "lr", "finetune_epochs", "finetune_lr",
              "val_split", "warmup_epochs", "label_smoothing", "mixup", "cutmix", "ema"]  # fmt: skip
    return _add_options(
        func, [data, option("exclude"), *map(option, recipe), *augment_options(), option("class_weights")]
    )


AUGMENT_OPTIONS = tuple(field.name for field in dataclasses.fields(AugmentConfig))


def augment_options(inherited: bool = False) -> list:
    """Whether and how strongly to augment, each strength unset by default: a new run takes the
    default ranges, a fine-tuning run (``inherited``) its parent's."""
    options = [click.option("--no-augment", is_flag=True, help="Train without augmentation.")]
    for name in ("rotation", "shift", "zoom", "shear", "flip"):
        spec, default = declared_option(AugmentConfig, name)
        shown = name if spec.kind == "switch" else f"{default:g}"
        text = spec.help + ("  [default: the run's]" if inherited else f"  [default: {shown}]")
        options.append(_click_option(name, dataclasses.replace(spec, help=text, show_default=False), None))
    return options


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
    options["exclude"] = absolute_exclude(options.get("exclude"))
    return TrainConfig(data=data_path, feature_cache=not no_cache, augment=augment, **options)


def absolute_exclude(path: str | None) -> str | None:
    """``--exclude``'s file as an absolute path (a resumed run finds it from anywhere); it must exist."""
    if path is None:
        return None

    from scenecls.files import check_input_file

    resolved = Path(path).expanduser().absolute()
    check_input_file(resolved, "--exclude")
    return str(resolved)


def tracking_options(func):
    """MLflow tracking, for every command that trains or evaluates (see ``scenecls/tracking``)."""
    return _add_options(
        func,
        [
            click.option(
                "--mlflow/--no-mlflow",
                "mlflow",
                default=None,
                help="Log to the MLflow tracking server that MLFLOW_TRACKING_URI names  "
                "[default: on when it is set]",
            ),
            click.option(
                "--mlflow-experiment",
                metavar="NAME",
                default=None,
                help="MLflow experiment  [default: the project's folder name]",
            ),
            click.option("--mlflow-log-model", is_flag=True, help="Upload best.keras to MLflow too (large)."),
        ],
    )


def tracking_from(out, options: dict, project: Path):
    """The MLflow settings the tracking options ask for (taken out of ``options``), or None when off."""
    from scenecls.tracking import TrackingSettings, require_client, tracking_requested

    flag = options.pop("mlflow", None)
    experiment = options.pop("mlflow_experiment", None)
    log_model = options.pop("mlflow_log_model", False)
    if not tracking_requested(flag):
        return None
    if not require_client(explicit=flag is True):
        out.warn("MLFLOW_TRACKING_URI is set but the MLflow client is not installed: not tracking "
                 "(pip install 'scenecls[mlflow]')")  # fmt: skip
        return None
    return TrackingSettings(experiment or default_experiment(project), log_model)


def default_experiment(project: Path) -> str:
    """The project's folder name: the folder that holds ``runs/`` (or the --project folder itself when it
    is named otherwise)."""
    folder = Path(project).resolve()
    return (folder.parent if folder.name == "runs" else folder).name or "scenecls"
