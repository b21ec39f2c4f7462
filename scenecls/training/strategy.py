"""tf.distribute for one run: which strategy, how many replicas, and who writes.

``--distribute auto`` picks MultiWorkerMirroredStrategy when ``TF_CONFIG`` names a cluster of more than
one task, MirroredStrategy when more than one GPU is visible, and nothing otherwise. Under a strategy,
``--batch-size`` is per replica: the global batch is that times the replicas.

Every process of a cluster trains the same model in lock-step, but only the chief writes: the run
folder, checkpoints and caches. A worker trains in a private scratch copy of the run folder (the pattern
TensorFlow's own multi-worker guide uses for checkpoints), deleted when the run ends, so nothing a
worker does can clash with the chief's files on a shared filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scenecls.errors import SceneclsError, UsageError, first_line

MODES = ("auto", "off", "mirrored", "multiworker")


@dataclass
class Distribution:
    """The resolved ``--distribute``: the strategy (None: off) and this process's part in it."""

    mode: str = "off"  # off, mirrored or multiworker
    strategy: Any = None
    replicas: int = 1
    workers: int = 1
    task: str = "chief"  # "chief", or "worker N" for the others

    @property
    def chief(self) -> bool:
        return self.task == "chief"

    def scope(self):
        """The strategy's scope (everything that makes variables belongs in it), or no scope."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def global_batch(self, per_replica: int) -> int:
        return per_replica * self.replicas

    @property
    def shape(self) -> dict[str, Any]:
        """What a run records, so that ``--resume`` can tell when the cluster changed."""
        return {"mode": self.mode, "workers": self.workers, "replicas": self.replicas}

    def describe(self, per_replica: int) -> str:
        where = f"{self.workers} workers, " if self.workers > 1 else ""
        return (
            f"Distributed ({self.mode}, {where}{_count(self.replicas, 'replica')}): global batch "
            f"{self.global_batch(per_replica)} = {per_replica} per replica x {self.replicas}"
        )

    def prepare(self, model) -> None:
        """Make ``model.fit`` work under this strategy (see :func:`_patch_keras_for_multiworker`)."""
        if self.mode == "multiworker":
            _local_symbolic_build(model, self.strategy)

    def shard(self, dataset):
        """Workers split a data set by elements (batches): ours are built from tensors, not files."""
        if self.mode != "multiworker":
            return dataset
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(options)

    def barrier(self) -> None:
        """Wait until every worker got here (an all-reduce of one number)."""
        if self.mode != "multiworker":
            return
        import tensorflow as tf

        @tf.function
        def one():
            return tf.distribute.get_replica_context().all_reduce("SUM", tf.constant(1.0))

        self.strategy.run(one)

    def check_resume(self, recorded: dict[str, Any] | None, run_dir: Path) -> None:
        """Refuse to resume on another cluster shape: the global batch, the steps per epoch and so the
        schedule would silently differ from the epochs already trained."""
        recorded = recorded or OFF.shape
        if (recorded.get("workers"), recorded.get("replicas")) == (self.workers, self.replicas):
            return
        raise UsageError(
            f"{run_dir} was trained on {_shape_words(recorded)}, this process has "
            f"{_shape_words(self.shape)}; "
            f"resume it on the same shape (--distribute {recorded.get('mode', 'off')} with the same "
            f"devices or TF_CONFIG)"
        )


OFF = Distribution()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + "s" * (n != 1)


def _shape_words(shape: dict[str, Any]) -> str:
    workers, replicas = shape.get("workers", 1), shape.get("replicas", 1)
    return (f"{workers} workers and " if workers > 1 else "") + _count(replicas, "replica")


def cluster_from_env() -> dict[str, Any] | None:
    """``TF_CONFIG``'s cluster and task, or None when it is unset or names a single task."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster = config.get("cluster") or {}
        tasks = sum(len(addresses) for name, addresses in cluster.items() if name != "ps")
        task = config.get("task") or {}
    except (ValueError, AttributeError, TypeError) as exc:
        raise UsageError(f"TF_CONFIG is not valid JSON of a cluster and a task: {exc}") from exc
    if tasks <= 1:
        return None
    if "type" not in task or "index" not in task:
        raise UsageError('TF_CONFIG names a cluster but not this task ("task": {"type": ..., "index": ...})')
    return {"cluster": cluster, "task": task, "tasks": tasks}


def resolve_mode(mode: str, *, gpus: int, cluster: dict[str, Any] | None) -> str:
    """What ``auto`` means here: multiworker with a cluster, mirrored with several GPUs, else off."""
    if mode not in MODES:
        raise UsageError(f"--distribute takes {', '.join(MODES)}; got {mode!r}")
    if mode != "auto":
        return mode
    if cluster is not None:
        return "multiworker"
    return "mirrored" if gpus > 1 else "off"


def choose(mode: str = "auto") -> Distribution:
    """The strategy for ``--distribute mode``; create it before anything else uses TensorFlow."""
    if mode == "off":
        return OFF
    import tensorflow as tf

    cluster = cluster_from_env()
    # Physical devices: listing logical ones would start TensorFlow's runtime, after which a
    # multi-worker strategy can no longer be made.
    gpus = len(tf.config.list_physical_devices("GPU"))
    resolved = resolve_mode(mode, gpus=gpus, cluster=cluster)
    if resolved == "off":
        return OFF
    if resolved == "mirrored":
        # The GPUs; without any, the CPU devices (one, unless logical devices were configured).
        devices = [d.name for d in tf.config.list_logical_devices("GPU" if gpus else "CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
        return Distribution("mirrored", strategy, strategy.num_replicas_in_sync)
    if cluster is None:
        raise UsageError("--distribute multiworker needs TF_CONFIG naming a cluster of two or more tasks")
    _patch_keras_for_multiworker()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as exc:
        raise SceneclsError(f"cannot join the cluster TF_CONFIG names: {exc}") from exc
    task_type, task_id = cluster["task"]["type"], int(cluster["task"]["index"])
    has_chief = "chief" in cluster["cluster"]
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return Distribution(
        "multiworker",
        strategy,
        strategy.num_replicas_in_sync,
        workers=cluster["tasks"],
        task="chief" if is_chief else f"{task_type} {task_id}",
    )


@contextlib.contextmanager
def private_run_dir(run_dir: Path, distribution: Distribution, *, resume: bool):
    """Where this process writes the run: ``run_dir`` for the chief; for a worker a scratch copy (of
    the chief's folder when resuming), removed afterwards."""
    if distribution.chief:
        yield run_dir
        return
    scratch = Path(tempfile.mkdtemp(prefix="scenecls-worker-"))
    try:
        target = scratch / run_dir.name
        if resume:
            if not run_dir.is_dir():
                raise SceneclsError(
                    f"{run_dir} is not visible to {distribution.task}: to resume, every worker needs the "
                    f"project folder on a shared filesystem"
                )
            shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("tensorboard", "*.tflite"))
        else:
            target.mkdir()
        yield target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def cluster_stopped(exc: BaseException, distribution: Distribution) -> SceneclsError | None:
    """The one-line error for a collective operation that failed because another process of the
    cluster died, in TensorFlow's own words without the function and device it names first; None for
    any other exception."""
    if distribution.mode != "multiworker":
        return None
    import tensorflow as tf

    lost = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
            tf.errors.DeadlineExceededError, tf.errors.InternalError)  # fmt: skip
    if not isinstance(exc, lost):
        return None
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", str(exc)).strip() or type(exc).__name__
    return SceneclsError(f"a process of the cluster stopped ({first_line(SceneclsError(text), 120)})")


# --------------------------------------------------------------------- Keras 3 under multiple workers
#
# Keras 3's TensorFlow trainer does not run under MultiWorkerMirroredStrategy as released
# (keras-team/keras#20585): it reduces the first batch across workers to build the model
# symbolically, and reduces scalar logs "along axis 0". Both only need a shape or a mean. The two
# fixes below are applied only when a multi-worker strategy is chosen.


def _local_symbolic_build(model, strategy) -> None:
    """Build ``model`` from this worker's own first batch instead of a cross-worker reduction of it."""
    import tensorflow as tf
    from keras.src import tree

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(local, next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = build


_PATCHED = False


def _patch_keras_for_multiworker() -> None:
    """Reduce logs across workers as whole values (a scalar has no axis 0)."""
    global _PATCHED
    if _PATCHED:
        return
    import keras.src.backend.tensorflow.trainer as trainer
    from keras.src import tree

    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_per_replica
    _PATCHED = True
