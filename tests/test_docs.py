"""The documentation site builds strictly (no broken link or anchor), has a page per command made
from the command itself, and the README stays a short first read with its two set-up commands."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from scenecls.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists():
        pytest.fail("mkdocs is not installed: pip install -e '.[test]' installs it")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return out


def _text(page: Path) -> str:
    body = page.read_text(encoding="utf-8")
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def test_every_command_has_a_page_listing_each_of_its_options(site):
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    parent = click.Context(cli, info_name="scenecls")
    for name in COMMANDS:
        assert f"commands/{name}.md" in nav, f"{name} is not in the site's navigation"
        text = _text(site / "commands" / name / "index.html")
        command = cli.get_command(parent, name)
        assert f"scenecls {name}" in text
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                for flag in param.opts:
                    assert flag in text, f"{flag} of {name} is missing from its page"
                if param.help:
                    first_words = " ".join(param.help.split()[:4])
                    assert first_words in " ".join(text.split()), f"{name} {param.opts[0]}: {first_words}"


def test_the_changelog_and_benchmark_pages_are_the_project_files(site):
    changelog = " ".join(_text(site / "changelog" / "index.html").split())
    assert "Keep a Changelog" in changelog and "[Unreleased]" in changelog
    figures = _text(site / "benchmarks" / "index.html")
    assert "Input pipeline throughput" in figures
    assert (site / "images" / "time-to-accuracy.png").is_file()


def test_every_option_of_every_command_says_what_it_does():
    parent = click.Context(cli, info_name="scenecls")
    for name in COMMANDS:
        command = cli.get_command(parent, name)
        silent = [
            p.opts[0] for p in command.params if isinstance(p, click.Option) and not p.hidden and not p.help
        ]
        assert not silent, f"scenecls {name}: {', '.join(silent)} without a help line"


def test_the_readme_is_a_short_first_read_with_the_two_set_up_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    assert "pip install . && scenecls fetch-data && scenecls train" in readme
    assert "pip install -e '.[test]' && pytest" in readme
    for name in COMMANDS:
        assert f"`{name}`" in readme, f"{name} is not in the README's list of commands"
