"""The command-line options are made from the config's field declarations: one default, one range."""

from __future__ import annotations

import dataclasses

import click
import pytest

from scenecls.cli import cli
from scenecls.config import TrainConfig
from scenecls.data.augment import AugmentConfig


def _defaults(command: str) -> dict[str, object]:
    """Each option's default as ``command`` would use it."""
    found = cli.get_command(click.Context(cli), command)
    context = click.Context(found)
    return {param.name: param.get_default(context) for param in found.params}


DECLARED = [item for item in dataclasses.fields(TrainConfig) if "option" in item.metadata]


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_every_declared_option_takes_its_default_from_the_config(command):
    params, defaults = _defaults(command), TrainConfig()
    grid = {"backbone", "dense", "unfreeze", "unfreeze_layers"} if command == "sweep" else set()
    for item in DECLARED:
        if item.name in grid:  # the sweep's grid options take lists
            continue
        assert item.name in params, f"--{item.name} is declared but not an option of {command}"
        assert params[item.name] == getattr(defaults, item.name), item.name


def test_finetune_and_lr_find_share_the_config_defaults():
    defaults = TrainConfig()
    finetune, lr_find = _defaults("finetune"), _defaults("lr-find")
    assert finetune["unfreeze"] == defaults.unfreeze
    assert finetune["finetune_lr"] == defaults.finetune_lr
    for name in ("backbone", "weights", "dense", "unfreeze", "batch_size", "seed"):
        assert lr_find[name] == getattr(defaults, name), name


def test_a_declared_range_is_the_option_range(tmp_path):
    from click.testing import CliRunner

    runner = CliRunner()
    for args in (["--dropout", "1"], ["--lr", "0"], ["--image-size", "8"], ["--image-size", "100000"],
                 ["--image-size", "99999999999999999999"], ["--rotation", "181"],
                 ["--zoom", "1"], ["--lr-schedule", "sometimes"]):  # fmt: skip
        result = runner.invoke(cli, ["train", *args, "--data", str(tmp_path)])
        assert result.exit_code == 2, args
        assert args[0] in result.output, args


def test_the_augmentation_help_shows_the_config_ranges():
    from click.testing import CliRunner

    help_text = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    ranges = AugmentConfig()
    for name in ("rotation", "shift", "zoom", "shear"):
        assert f"[default: {getattr(ranges, name):g}]" in help_text, name


def test_inspect_takes_its_defaults_and_ranges_from_inspect_options(tmp_path):
    from click.testing import CliRunner

    from scenecls.inspection.options import SIMILARITY_FLOOR, InspectOptions

    params, defaults = _defaults("inspect"), InspectOptions()
    for item in dataclasses.fields(InspectOptions):
        if "option" in item.metadata:
            assert params[item.name] == getattr(defaults, item.name), item.name
    below = f"{SIMILARITY_FLOOR - 0.01:.2f}"
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path), "--similarity", below])
    assert result.exit_code == 2 and "--similarity" in result.output


def _declared(config: type) -> dict[str, object]:
    instance = config()
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(config) if "option" in f.metadata}


COMMAND_DECLARATIONS = {
    "predict": "PredictOptions",
    "evaluate": "EvaluateOptions",
    "explain": "ExplainOptions",
    "export": "ExportOptions",
    "ensemble": "EnsembleOptions",
    "sweep": "SweepGrid",
}


@pytest.mark.parametrize("command", sorted(COMMAND_DECLARATIONS))
def test_each_command_takes_its_defaults_from_its_declarations(command):
    from scenecls import command_options

    config = getattr(command_options, COMMAND_DECLARATIONS[command])
    params = _defaults(command)
    for name, default in _declared(config).items():
        assert params[name] == default, f"{command} --{name}"
    for name in ("jit", "mixed_precision"):
        if name in params:
            assert params[name] == getattr(TrainConfig(), name), f"{command} --{name}"


def test_the_library_takes_the_same_defaults_as_the_commands():
    import inspect

    from scenecls import command_options
    from scenecls.ensemble import make_ensemble
    from scenecls.evaluation import evaluate_run
    from scenecls.explain import explain_into
    from scenecls.export import export_run
    from scenecls.predict import predict_inputs
    from scenecls.suggest import suggest
    from scenecls.video import segments

    calls = {
        predict_inputs: ("PredictOptions", {"smooth": None}),  # None: the option is another function's
        segments: ("PredictOptions", {"top_k": None, "batch_size": None, "every": None}),
        evaluate_run: ("EvaluateOptions", {}),
        explain_into: ("ExplainOptions", {}),
        export_run: ("ExportOptions", {"parity": "parity_images"}),
        make_ensemble: ("EnsembleOptions", {}),
        suggest: ("SuggestOptions", {}),
    }
    for function, (config, renamed) in calls.items():
        signature = inspect.signature(function).parameters
        for name, default in _declared(getattr(command_options, config)).items():
            if name in renamed and renamed[name] is None:
                continue
            parameter = signature[renamed.get(name, name)]
            assert parameter.default == default, f"{function.__name__}({name})"
