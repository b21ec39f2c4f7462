"""A configuration field's command-line form, declared beside its default.

:class:`~scenecls.config.TrainConfig` and :class:`~scenecls.data.augment.AugmentConfig` declare their
fields with :func:`option_field`; ``scenecls.cli.options`` turns the declarations into click options.
Nothing here imports click: the library says what an option is, the CLI how it is parsed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Option:
    """How a configuration field is given on the command line, beside its default: its help, and the
    kind and range of values it takes, so that each default, range and help is written once, beside
    the field (as in Ultralytics' ``default.yaml``).

    ``kind``: ``int``, ``float`` (finite), ``rate`` (a learning rate: above 0, at most 10), ``choice``
    (one of ``choices``), ``backbone`` (a registered backbone), ``map_aug`` (see
    ``config.MAP_AUGMENTATIONS``), ``flag``, ``switch`` (``--x/--no-x``) or ``text``. ``low`` and
    ``high`` bound a number (``high_open``: below ``high``)."""

    help: str | None = None
    kind: str = "text"
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    flag_value: Any = None  # the value of the option given without one (``--ema`` alone)
    short: str | None = None  # e.g. "-b"
    aliases: tuple[str, ...] = ()  # other spellings, e.g. one from before a rename
    show_default: bool = True  # beside the help (a default that is None is never shown)


def batch_size_field(default: int = 32) -> Any:
    """``--batch-size``/``-b``: images per batch, declared alike by every command that runs a model."""
    return option_field(default, "Images per batch.", kind="int", low=1, short="-b")


def option_field(default: Any, help: str | None = None, **how: Any) -> Any:
    """A dataclass field with its command-line :class:`Option` (a callable ``default`` is a factory)."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"option": Option(help, **how)})


def declared_option(config: type, name: str) -> tuple[Option, Any]:
    """The :class:`Option` of field ``name`` of the dataclass ``config``, and the field's default."""
    for item in dataclasses.fields(config):
        if item.name == name and "option" in item.metadata:
            default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
            return item.metadata["option"], default
    raise KeyError(f"{name} is not a command-line option of {config.__name__}")
