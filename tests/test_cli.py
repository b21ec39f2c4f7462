"""The command line itself: start-up without TensorFlow, version, error lines."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from scenecls import __version__
from scenecls.cli import COMMANDS, cli

PROBE = """
import sys
from scenecls.cli import cli
try:
    cli.main({args!r}, prog_name="scenecls")
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
heavy = sorted(m for m in ("tensorflow", "keras", "matplotlib") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


@pytest.mark.parametrize("args", [["--help"], *[[name, "--help"] for name in COMMANDS]])
def test_help_does_not_import_tensorflow(args):
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().endswith("HEAVY:"), result.stdout + result.stderr
    assert "%%" not in result.stdout, "click prints help text as written: a '%%' shows doubled"


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "scenecls", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and __version__ in result.stdout
