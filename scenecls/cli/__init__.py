"""The ``scenecls`` command: a thin layer that parses options, calls the library and renders results.

Subcommands are imported only when invoked (or listed by ``--help``), and none of their modules import
TensorFlow at import time, so ``scenecls --help`` answers at once.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from scenecls import __version__
from scenecls.cli.output import Output
from scenecls.errors import SceneclsError, first_line

# name -> "module:function", in the order --help lists them
COMMANDS = {
    "fetch-data": "scenecls.cli.fetch:fetch_data",
    "train": "scenecls.cli.train:train",
    "finetune": "scenecls.cli.train:finetune",
    "sweep": "scenecls.cli.sweep:sweep",
    "evaluate": "scenecls.cli.evaluate:evaluate",
    "predict": "scenecls.cli.predict:predict",
    "plot": "scenecls.cli.plot:plot",
    "backbones": "scenecls.cli.backbones:backbones",
}

EXIT_CODES_HELP = (
    "Exit codes: 0 success, 1 error, 2 bad usage, 3 finished but some inputs failed, 4 every input failed,"
    " 130 interrupted."
)


class CliError(click.ClickException):
    """A :class:`SceneclsError` shown the click way: ``Error: ...`` on stderr, its exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SceneclsGroup(click.Group):
    """Loads subcommands lazily and turns anticipated errors into one line and an exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except SceneclsError as exc:
            if debug:
                raise
            raise CliError(first_line(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            if debug:
                raise
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except Exception as exc:
            if debug:
                raise
            raise CliError(
                f"unexpected {type(exc).__name__}: {first_line(exc)} (run with --debug for the traceback)"
            ) from None


@click.group(cls=SceneclsGroup, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="scenecls")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; results still go to stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, debug: bool) -> None:
    """Classify scenes by transfer learning from ImageNet CNNs.

    \b
    Typical session:
      scenecls fetch-data
      scenecls train --backbone xception --dense 3 --unfreeze 5
      scenecls evaluate
      scenecls predict photo.jpg
    """
    ctx.obj = Output(quiet=quiet, debug=debug)


def main() -> None:
    """Console-script entry point."""
    # TensorFlow's C++ start-up chatter is noise for a command-line tool; --debug keeps it.
    if "--debug" not in sys.argv:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cli.main(prog_name="scenecls")
