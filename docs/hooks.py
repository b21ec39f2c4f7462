"""MkDocs hooks: pages made from the project itself, so that the site cannot drift from it.

- A page whose front matter says ``command: NAME`` is that command's reference, made from the command's
  own click declaration: its description, usage, and every option as ``scenecls NAME --help`` shows
  it (the same help, default and range).
- A page whose front matter says ``include: PATH`` is that file of the project (the changelog, the
  benchmark figures), its links rewritten as seen from ``docs/`` (``../docs/images/x.png`` in
  ``benchmarks/README.md`` is ``images/x.png`` here), so that one file serves the repository and the
  site, and ``mkdocs build --strict`` checks its links.
"""

from __future__ import annotations

import html
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "include" in page.meta:
        source = ROOT / page.meta["include"]
        return source.read_text(encoding="utf-8").replace("](../docs/", "](")
    if "command" in page.meta:
        return command_page(page.meta["command"])
    return markdown


def command_page(name: str) -> str:
    """The reference of ``scenecls NAME`` in Markdown."""
    import click

    from scenecls.cli import cli

    parent = click.Context(cli, info_name="scenecls")
    command = cli.get_command(parent, name)
    if command is None:
        raise ValueError(f"docs: no command named {name!r}")
    context = click.Context(command, info_name=name, parent=parent)
    lines = [f"# `scenecls {name}`", "", *_description(command.help or ""), ""]
    lines += [
        "## Usage",
        "",
        "```text",
        " ".join(command.collect_usage_pieces(context)).join([f"scenecls {name} ", ""]),
        "```",
        "",
        "## Options",
        "",
        "| option | what it does |",
        "|---|---|",
    ]
    for param in command.get_params(context):
        record = param.get_help_record(context) if isinstance(param, click.Option) else None
        if record is not None:
            lines.append(f"| <code>{_cell(record[0])}</code> | {_cell(record[1]) or ' '} |")
    if command.epilog:
        lines += ["", command.epilog]
    return "\n".join(lines) + "\n"


def _description(help_text: str) -> list[str]:
    """Click's help text in Markdown: paragraphs, and ``\\b`` blocks (kept as typed) as code."""
    import inspect

    out: list[str] = []
    for paragraph in inspect.cleandoc(help_text).split("\n\n"):
        if paragraph.startswith("\b\n"):
            out += ["```text", paragraph[2:].rstrip(), "```", ""]
        else:
            out += [" ".join(paragraph.split()), ""]
    return out


def _cell(text: str) -> str:
    """One table cell: one line, HTML's specials and the table's ``|`` escaped."""
    text = " ".join(text.split())
    return html.escape(text).replace("|", "&#124;").replace("[", "&#91;")
