"""The ``scenecls`` command: a thin layer that parses options, calls the library and renders results.

Subcommands are imported only when invoked (or listed by ``--help``), and none of their modules import
TensorFlow at import time, so ``scenecls --help`` answers at once.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from pathlib import Path

import click

from scenecls import __version__
from scenecls.cli.output import Output
from scenecls.errors import SceneclsError, first_line, redact

# name -> "module:function", in the order --help lists them
COMMANDS = {
    "fetch-data": "scenecls.cli.fetch:fetch_data",
    "inspect": "scenecls.cli.inspect:inspect",
    "train": "scenecls.cli.train:train",
    "finetune": "scenecls.cli.train:finetune",
    "sweep": "scenecls.cli.sweep:sweep",
    "evaluate": "scenecls.cli.evaluate:evaluate",
    "calibrate": "scenecls.cli.calibrate:calibrate",
    "predict": "scenecls.cli.predict:predict",
    "suggest": "scenecls.cli.suggest:suggest",
    "plot": "scenecls.cli.plot:plot",
    "explain": "scenecls.cli.explain:explain",
    "report": "scenecls.cli.report:report",
    "export": "scenecls.cli.export:export",
    "serve": "scenecls.cli.serve:serve",
    "ensemble": "scenecls.cli.ensemble:ensemble",
    "lr-find": "scenecls.cli.lr_find:lr_find",
    "log-mlflow": "scenecls.cli.log_mlflow:log_mlflow",
    "backbones": "scenecls.cli.backbones:backbones",
    "cache": "scenecls.cli.cache:cache",
}

EXIT_CODES_HELP = (
    "Exit codes: 0 success, 1 error, 2 bad usage, 3 finished but some inputs failed, 4 every input failed,"
    " 5 accuracy below --fail-under, 130 interrupted, 141 output pipe closed."
)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool that `head` stopped reading
QUIET_HELP = "Only errors on stderr; results still go to stdout."


class CliError(click.ClickException):
    """A :class:`SceneclsError` shown the click way: ``Error: ...`` on stderr, its exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(redact(message))
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
        command = getattr(importlib.import_module(module), attr)
        _accept_quiet(command)
        return command

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
        except BrokenPipeError:
            # The reader (head, grep -m) has what it wanted: stop quietly, as Unix tools do. Point
            # stdout at /dev/null so that Python's final flush does not fail a second time.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_BROKEN_PIPE)
        except OSError as exc:
            if debug or not exc.errno or not exc.strerror:
                raise
            raise CliError(_os_error_message(exc)) from None
        except Exception as exc:
            if debug:
                raise
            raise CliError(
                f"unexpected {type(exc).__name__}: {first_line(exc)} (run with --debug for the traceback)"
            ) from None


def _os_error_message(exc: OSError) -> str:
    """A system error (disk full, read-only, no permission) as a sentence; the saved files are intact
    because every file is replaced atomically."""
    where = f": {exc.filename}" if exc.filename else ""
    advice = {
        errno.ENOSPC: "; free some space and run again (files already saved are intact)",
        errno.EDQUOT: "; free some space and run again (files already saved are intact)",
        errno.EROFS: "; choose a writable folder",
        errno.EACCES: "; choose a folder you may write to",
        errno.EPERM: "; choose a folder you may write to",
    }.get(exc.errno, "")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and _in_data_home(exc.filename):
        from scenecls.paths import data_home

        advice = (
            f"; the folder for caches and data sets ({data_home()}) is not writable: set SCENECLS_HOME to a "
            f"writable folder, or train with --no-cache"
        )
    return f"{exc.strerror}{where}{advice}"


def _in_data_home(filename) -> bool:
    from scenecls.paths import data_home

    if not filename:
        return False
    home = data_home().absolute()
    path = Path(os.fsdecode(filename)).absolute()
    return path == home or home in path.parents


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and isinstance(ctx.obj, Output):
        ctx.obj.set_quiet()


def _accept_quiet(command: click.Command) -> None:
    """Let ``-q`` follow the subcommand too (``scenecls train ... -q``), as users type it."""
    if any(param.name == "quiet" for param in command.params):
        return
    command.params.append(
        click.Option(
            ["-q", "--quiet"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=_set_quiet,
            help=QUIET_HELP,
        )
    )


@click.group(cls=SceneclsGroup, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="scenecls")
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, debug: bool) -> None:
    """Classify scenes by transfer learning from ImageNet CNNs.

    \b
    A first session (MobileNetV2 is the quickest backbone on a CPU):
      scenecls fetch-data
      scenecls inspect --backbone mobilenet_v2
      scenecls train --backbone mobilenet_v2
      scenecls predict photo.jpg
      scenecls report
    """
    ctx.obj = Output(quiet=quiet, debug=debug)


def main() -> None:
    """Console-script entry point."""
    # TensorFlow's C++ start-up chatter is noise for a command-line tool; --debug keeps it.
    if "--debug" not in sys.argv:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    else:
        os.environ["SCENECLS_DEBUG"] = "1"  # native libraries' own messages stay visible
    cli.main(prog_name="scenecls")
