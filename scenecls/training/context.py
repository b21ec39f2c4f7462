"""A run's context, built once, and the model it starts from.

Every command that trains (``train``, ``finetune``, ``sweep``) or tries a recipe (``lr-find``, the
sweep's ``--dry-run``) needs the same set-up: a seeded Keras, the precision resolved, the backbone's
spec, the input size, the data set scanned and split, and then a model (a checkpoint to resume, a
model to fine-tune, or a new classifier) with its block map checked against every phase of the
recipe. :func:`start_run` and :func:`prepare_model` are that set-up, written once; the rest of
``training`` takes the :class:`RunContext` instead of a dozen loose arguments (as fastai's
``Learner`` carries its run, so that ``lr_find`` and ``fine_tune`` reuse one set-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from scenecls import runs
from scenecls.classifier import build_classifier, check_compatible, find_backbone, load_model
from scenecls.config import TrainConfig
from scenecls.data.pipeline import PreparedData, prepare_data
from scenecls.models.registry import BackboneSpec, get_spec
from scenecls.paths import data_source
from scenecls.precision import dtype_policy_name, resolve_precision
from scenecls.progress import NullReporter, Reporter
from scenecls.tracking import NO_TRACKING, Tracker
from scenecls.training.recipe import Phase, plan_phases
from scenecls.training.strategy import OFF, Distribution
from scenecls.unfreeze import UnfreezePolicy, UnfreezeReport, apply_unfreeze, check_policy


@dataclass(frozen=True)
class RunContext:
    """What a run is: its recipe, its data and where it reports and writes. Frozen: a change (the
    global batch of a cluster, a loaded model's input size) makes a new context with ``replace``."""

    config: TrainConfig  # the recipe, its precision resolved
    data: PreparedData | None  # the data set, split; None for a preview that trains nothing
    classes: tuple[str, ...]
    size: int  # input images are size x size
    spec: BackboneSpec
    reporter: Reporter
    distribution: Distribution = field(default_factory=lambda: OFF)
    run_dir: Path | None = None  # None: nothing is written (lr-find, a preview)
    tracker: Tracker = NO_TRACKING  # where each epoch is also logged (MLflow), besides the run folder
    # A student's (see distill.py): a row of class probabilities per image of data.train, which holds
    # the unlabelled images too; None: the labels are the targets.
    targets: Any = None
    distillation: dict | None = None  # what a student learns from, as config.json records it

    @cached_property
    def phases(self) -> list[Phase]:
        return plan_phases(self.config)


def start_run(
    config: TrainConfig,
    *,
    reporter: Reporter | None = None,
    distribution: Distribution = OFF,
    run_dir: Path | None = None,
    tracker: Tracker = NO_TRACKING,
) -> RunContext:
    """Seed Keras, resolve the precision and read the data set: the context of one run.

    A fresh Keras state per run: the same seed gives the same initial weights whatever ran before in
    this process (a sweep runs many), and earlier runs' graphs are freed.
    """
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    config = replace(config, mixed_precision=resolve_precision(config.mixed_precision))
    reporter = reporter or NullReporter()
    spec = get_spec(config.backbone)
    data = prepare_data(
        data_source(config.data), val_split=config.val_split, seed=config.validation_seed, reporter=reporter,
        exclude=config.exclude,
    )  # fmt: skip
    size = config.image_size or spec.default_size
    return RunContext(config, data, tuple(data.classes), size, spec, reporter, distribution, run_dir, tracker)


def preview_context(config: TrainConfig, num_classes: int) -> RunContext:
    """A context for looking at a recipe without data or weights (what would train, and how much)."""
    spec = get_spec(config.backbone)
    config = replace(config, weights=None)
    classes = tuple(str(i) for i in range(num_classes))
    return RunContext(config, None, classes, config.image_size or spec.default_size, spec, NullReporter())


@dataclass
class Learner:
    """A context's model, ready for its phases: the backbone found and its block map checked."""

    context: RunContext
    model: Any  # keras.Model: the whole classifier
    backbone: Any
    block_map: Any
    compiled: bool  # loaded with its optimizer's state (a resumed checkpoint)
    # The fine-tuning phase's activation cache entry, when the head phase built it in the same pass over
    # the images as its features (see caches/one_pass.py); None once used, or when it was not.
    built_activations: Any = None
    # The epoch source of the last phase this process trained: the end of the run reads the validation
    # rows it holds (cached features or activations) instead of the images, to fit the temperature.
    last_source: Any = None

    def unfreeze(self, policy: UnfreezePolicy) -> UnfreezeReport:
        """Make ``policy``'s part of the backbone trainable (the rest frozen) and say what trains."""
        return apply_unfreeze(self.backbone, self.block_map, policy, model=self.model)


def prepare_model(context: RunContext, start_model: Path | None = None, *, resume: bool = False) -> Learner:
    """The model a run starts from: ``last.keras`` when resuming a run that has one, ``start_model``
    (a run's best model to fine-tune), or a new classifier; its backbone's blocks checked against every
    phase of the recipe, so that a wrong ``--unfreeze`` stops the run before its first epoch.

    A model loaded from a file keeps its input size: the context's size follows it.
    """
    config, reporter = context.config, context.reporter
    last = context.run_dir / runs.LAST if context.run_dir is not None else None
    compiled = False
    if resume and last is not None and last.is_file():
        reporter.log(f"Resuming from {last}")
        model, compiled = load_model(last, compile=True), True
    elif start_model is not None:
        model = load_model(start_model)
        recorded = runs.model_classes(start_model, None)
        check_compatible(model, list(context.classes), recorded, backbone=config.backbone)
        saved = next(layer for layer in find_backbone(model).layers if layer.weights).dtype_policy.name
        if saved != dtype_policy_name(config.mixed_precision):
            reporter.warn(
                f"{start_model} computes in {saved}; --mixed-precision {config.mixed_precision} applies "
                f"to new models only, so this run computes as the model was saved"
            )
    else:
        model = build_classifier(
            config.backbone, len(context.classes), size=context.size, weights=config.weights, head=config.head
        )
    size = int(model.input_shape[1])
    if size != context.size:
        context = replace(context, size=size)
    backbone = find_backbone(model)
    block_map = context.spec.block_map(backbone)
    for phase in context.phases:
        check_policy(block_map, phase.policy)
    return Learner(context, model, backbone, block_map, compiled)
