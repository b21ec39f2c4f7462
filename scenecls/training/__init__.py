"""Running training: a run's phases, checkpoints and state, its sweeps and range tests.

This is the package's front door; other packages import these names from here, not from its modules:

- :func:`train` runs (or resumes, or extends) one run into its folder; :class:`TrainingInterrupted` is
  what Ctrl-C or a cluster's stop leaves behind.
- :func:`finetune_config` is the recipe of fine-tuning a finished run again; :func:`extend_run` gives a
  finished run more epochs.
- :func:`lr_find` runs a learning-rate range test; :func:`calibrate_run` fits a run's temperature again.
- :func:`choose_distribution` picks the devices or cluster a run trains on.
- :func:`check_student` says what a student (``--unlabelled``, ``--teacher``) would refuse, before its
  teacher is trained.
- :mod:`scenecls.training.sweep` is the grid (imported as a module: it has many small parts).

The names load on first use, so that importing this package (as ``scenecls --help`` does through the
CLI) costs nothing and never imports TensorFlow.
"""

from __future__ import annotations

from scenecls.lazy import front_door

_FRONT = {
    "train": "scenecls.training.loop",
    "TrainingInterrupted": "scenecls.training.loop",
    "finetune_config": "scenecls.training.finetune",
    "extend_run": "scenecls.training.state",
    "lr_find": "scenecls.training.range_test",
    "calibrate_run": "scenecls.training.calibrate",
    "choose_distribution": "scenecls.training.strategy",
    "DISTRIBUTE_MODES": "scenecls.training.strategy",
    "check_student": "scenecls.training.distill",
}
_SOURCE_NAMES = {"choose_distribution": "choose", "DISTRIBUTE_MODES": "MODES"}

__all__ = sorted(_FRONT)
__getattr__ = front_door(__name__, _FRONT, _SOURCE_NAMES)
