"""The README's tables of command-line options, generated from the parsers.

    python tests/_cli_docs.py     # prints the tables; paste them under "## Command-line options"

``tests/test_cli_docs.py`` checks that README.md holds exactly this text, so that an option
added to a parser (or a changed help text) cannot go undocumented.
"""

from __future__ import annotations

import argparse


def parsers() -> list[argparse.ArgumentParser]:
    from yolo11_jax import evaluate, predict, train

    return [train.build_parser(), evaluate.build_parser(), predict.build_parser()]


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("<", "&lt;").replace(">", "&gt;")


def table(ap: argparse.ArgumentParser) -> str:
    fmt = ap._get_formatter()
    rows = []
    for a in ap._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        if not a.option_strings:
            name = a.metavar or a.dest
        elif isinstance(a, argparse.BooleanOptionalAction):
            name = " / ".join(a.option_strings)
        else:
            name = ", ".join(a.option_strings)
        text = fmt._expand_help(a) if a.help else ""
        if a.choices and not all(str(c) in text for c in a.choices):
            text += f" (one of: {', '.join(map(str, a.choices))})"
        rows.append(f"| `{name}` | {_cell(text)} |")
    return (f"**`{ap.prog}`**\n\n| option | what it does |\n|---|---|\n" + "\n".join(rows) + "\n")


def markdown() -> str:
    return "\n".join(table(ap) for ap in parsers())


if __name__ == "__main__":
    print(markdown(), end="")
