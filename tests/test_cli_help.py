"""Every command's --help: each flag says what it does (and its default, when it has one worth
saying), and the help ends with two examples."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from duplexd.cli import EXAMPLES, _parser

pytestmark = pytest.mark.unit


def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def help_text(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        _parser().parse_args([command, "--help"])
    assert done.value.code == 0
    return out.getvalue()


def test_every_command_has_examples() -> None:
    assert set(commands()) == set(EXAMPLES)


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_every_flag_says_what_it_does(command: str) -> None:
    for action in commands()[command]._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"duplexd {command} {'/'.join(action.option_strings)}: no help"


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_the_help_ends_with_two_examples(command: str) -> None:
    lines = help_text(command).rstrip().splitlines()
    assert lines[-3] == "examples:"
    assert all(f"duplexd {command}" in line for line in lines[-2:]), lines[-2:]


def test_a_default_worth_saying_is_said() -> None:
    text = " ".join(help_text("say").split())
    assert "(default: ws://127.0.0.1:8765/v1)" in text
    assert "(default: None)" not in text and "(default: )" not in text
    assert "(default: 0.5)" in " ".join(help_text("chat").split())
