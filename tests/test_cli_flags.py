"""The same flags everywhere: an option that several commands take is spelled, typed and
accepted the same way by each of them."""

from __future__ import annotations

import argparse
import json

import pytest

from forgetscale.cli import build_parser, main
from forgetscale.store import open_store

PROGRESS_COMMANDS = ("train", "reference", "measure", "evaluate", "sweep", "study")


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_a_shared_option_is_the_same_kind_of_option_in_every_command():
    seen: dict[str, dict[str, tuple]] = {}
    for name, parser in commands().items():
        for action in parser._actions:
            choices = tuple(action.choices) if action.choices is not None else None
            shape = (type(action).__name__, action.type, action.nargs, choices)
            for option in action.option_strings:
                seen.setdefault(option, {})[name] = shape
    shared = {opt: by for opt, by in seen.items() if len(by) > 1}
    assert {"--no-progress", "--json", "--device", "--out", "--store"} <= set(shared)
    for option, by_command in shared.items():
        if option in ("-h", "--help"):
            continue
        shapes = set(by_command.values())
        assert len(shapes) == 1, f"{option} differs between commands: {by_command}"


def test_every_command_with_a_progress_bar_takes_no_progress():
    parsers = commands()
    for name in PROGRESS_COMMANDS:
        options = {o for a in parsers[name]._actions for o in a.option_strings}
        assert "--no-progress" in options, name


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "run.yaml", "--no-progress", "--print-config"],
        ["train", "--no-progress", "run.yaml", "--print-config"],
        ["train", "run.yaml", "--no_progress", "--print-config"],
    ],
)
def test_train_takes_no_progress_wherever_it_is_given(workdir, capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert json.loads(out.split("\n", 1)[1])["progress"] is False


def test_runs_and_export_take_store_as_train_spells_it(tmp_path, capsys):
    db = tmp_path / "s.db"
    with open_store(db) as s:
        s.start_run("run-a", {"model": "m"}, method="lora", rank=4, params_trained=1)
        s.add_measurement("run-a", 0, {"finetune_loss": 3.0, "forgetting_loss": 2.0})
    for command in ("runs", "export"):
        assert main([command, "--from", str(db)]) == 0
        by_from = capsys.readouterr().out
        assert main([command, "--store", str(db)]) == 0
        assert capsys.readouterr().out == by_from and "run-a" in by_from


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "--from", "r.db"],
        ["export", "--from", "r.db"],
        ["runs", "--from", "r.db"],
        ["fit", "--from", "r.db", "--law", "additive"],
        ["predict", "--law", "additive"],
        ["plan", "--budget", "kl<=1", "--ranks", "2", "--steps", "5"],
    ],
)
def test_an_unknown_flag_is_the_commands_own_one_line_error(argv, capsys):
    """`forgetscale compare --bootstrap 5` (a flag another command has): the line names the
    command, as every other refusal of it does, not the bare program."""
    from helpers import one_line_error

    one_line_error(capsys, [*argv, "--no-such-flag", "5"], "unrecognized arguments: --no-such",
                   command=argv[0])  # fmt: skip
