"""The README documents every command-line option: its "Command-line options" section is
exactly what ``tests/_cli_docs.py`` generates from the parsers of train, evaluate and predict."""

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli_docs  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_options_section_matches_the_parsers():
    text = README.read_text()
    m = re.search(r"<!-- cli-options:start -->\n(.*?)<!-- cli-options:end -->", text, re.S)
    assert m, "README.md has no cli-options section"
    assert m.group(1) == _cli_docs.markdown(), (
        "README.md's command-line options are out of date: run `python tests/_cli_docs.py` and paste "
        "its output between the cli-options markers")


def test_every_option_has_help_and_appears_in_the_readme():
    text = README.read_text()
    for ap in _cli_docs.parsers():
        for action in ap._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{ap.prog}: {action.option_strings or action.dest} has no help text"
            for flag in action.option_strings:
                assert f"`{flag}" in text or f" {flag}`" in text, f"{ap.prog} {flag} is not in README.md"
