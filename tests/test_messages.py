"""User-facing messages: one line each, no traceback, no repeated path."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flanmix.cli import main
from tests.test_mix import FIXTURE


@pytest.mark.parametrize(
    "argv", [["train", "mix"], ["evaluate", "mix", "--model", "tiny"], ["demo"]]
)
def test_train_commands_without_the_train_extra_say_how_to_install_it(argv, tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"  # as if torch were not installed
        "from flanmix.cli import main; sys.exit(main(sys.argv[1:]))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "needs the [train] extra" in r.stderr and "pip install 'flanmix[train]'" in r.stderr


def test_existing_output_is_named_once(tmp_path, capsys):
    out = tmp_path / "out"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: t\nclusters: all\nholdout: {{clusters: [qa]}}\ncatalog: {FIXTURE}\n")
    assert main(["compile", str(spec), "-o", str(out), "--offline", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["compile", str(spec), "-o", str(out), "--offline"]) == 2
    err = capsys.readouterr().err
    assert err.count(str(out)) == 1 and "already exists" in err and "--overwrite" in err


def _options_without_help(parser, name=""):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _options_without_help(sub, f"{name} {sub_name}".strip())
        elif not action.help:
            yield f"flanmix {name} {'/'.join(action.option_strings) or action.dest}"


def test_every_command_option_and_argument_has_help():
    from flanmix.cli import build_parser

    assert list(_options_without_help(build_parser())) == []
