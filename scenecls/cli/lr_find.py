"""``scenecls lr-find``: the learning-rate range test, as a plot and a suggested rate."""

from __future__ import annotations

from pathlib import Path

import click

from scenecls.cli.options import absolute_exclude, format_option, option, project_option
from scenecls.cli.output import Output
from scenecls.cli.types import rate_type


@click.command("lr-find")
@click.option(
    "--run", "run_ref", default=None, metavar="RUN", help="Start from a run's best model (its recipe)."
)
@click.option(
    "--phase",
    type=click.Choice(["head", "finetune"]),
    default=None,
    help="head: the frozen-backbone phase; finetune: the first --unfreeze stage  [default: head, or "
    "finetune with --run]",
)
@click.option(
    "--data", type=click.Path(path_type=Path), help="Data set  [default: the run's, or fetch-data's]"
)
@option("exclude", help="Leave out the images this file lists  [default: the run's]")
@option("backbone")
@option("weights", help="imagenet, none, or a file.")
@option("image_size")
@option("dense")
@option("unfreeze", help="Blocks for --phase finetune.")
@option("batch_size")
@option("seed")
@click.option(
    "--start-lr", type=rate_type(), default=1e-7, show_default=True, help="Learning rate of the first batch."
)
@click.option(
    "--end-lr", type=rate_type(), default=1.0, show_default=True, help="Learning rate of the last batch."
)
@click.option("--steps", type=click.IntRange(10), default=100, show_default=True, help="Batches to try.")
@click.option("--no-cache", is_flag=True, help="Head phase on images instead of cached features.")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="[default: PROJECT/lr_find_PHASE.png]")
@project_option()
@format_option("table", "json")
@click.pass_obj
def lr_find(
    out: Output,
    run_ref: str | None,
    phase: str | None,
    data: Path | None,
    project: Path,
    output: Path | None,
    fmt: str,
    start_lr: float,
    end_lr: float,
    steps: int,
    no_cache: bool,
    **options,
) -> None:
    """Find a learning rate: train a few dozen batches at exponentially growing rates, plot the loss
    against the rate, and print a suggested rate (a tenth of the rate at the lowest loss; from a trained
    model, whose loss stays flat and then rises, a tenth of the rate where it starts to rise).

    Use the suggestion as --lr (head phase) or --finetune-lr (fine-tuning).
    """
    out.load_tensorflow()
    from scenecls import plots, runs
    from scenecls.config import TrainConfig
    from scenecls.training import lr_find as range_test

    exclude = absolute_exclude(options.pop("exclude"))
    start_model = None
    if run_ref:
        run_dir = runs.trained_run(run_ref, project)
        config = runs.Run(run_dir).config
        config.unfreeze, config.unfreeze_layers = options["unfreeze"], None
        config.finetune_epochs = max(config.finetune_epochs, 1)
        start_model, phase = run_dir / runs.BEST, phase or "finetune"
        if data:
            config.data = str(data)
        config.exclude = exclude or config.exclude
    else:
        config = TrainConfig(data=str(data) if data else None, exclude=exclude, **options)
        config.finetune_epochs = max(config.finetune_epochs, 1)
    config.feature_cache = not no_cache
    phase = phase or "head"
    result = range_test(
        config, phase=phase, start_model=start_model, start_lr=start_lr, end_lr=end_lr, steps=steps,
        reporter=out.reporter(),
    )  # fmt: skip
    target = output or project / f"lr_find_{phase}.png"
    out.log(f"Saved {plots.plot_lr_find(result, target)}")
    option = "--lr" if phase == "head" else "--finetune-lr"
    if fmt == "json":
        out.json({**result.to_dict(), "plot": str(target), "option": option})
        return
    out.table(
        ["", ""],
        [
            ["suggested rate", f"{result.suggestion:.2e}  ({option}; {result.rule})"],
            ["rate at the lowest loss", f"{result.min_loss_lr:.2e}"],
            ["steepest descent", f"{result.steepest_lr:.2e}"],
            ["edge of the flat loss", f"{result.edge_lr:.2e}"],
            ["batches tried", str(len(result.losses))],
            ["plot", str(target)],
        ],
        title=f"Learning-rate range test ({phase})",
    )
