"""`forgetscale runs`: the table, strict JSON lines, and the status filter."""

from __future__ import annotations

import json

import pytest
from test_cli_export import argparse_error, make_store

from forgetscale.cli import main


def no_constants(name):
    raise AssertionError(f"invalid JSON constant {name}")


def test_runs_json_is_one_strict_object_per_line(tmp_path, capsys):
    store = make_store(tmp_path / "results.db")
    capsys.readouterr()
    assert main(["runs", "--from", str(store), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = [json.loads(line, parse_constant=no_constants) for line in lines]
    assert [r["id"] for r in runs] == ["run-a", "run-b"]
    assert [r["measurements"] for r in runs] == [3, 3]
    assert main(["runs", "--from", str(store), "--json", "--status", "diverged"]) == 0
    assert [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()] == ["run-b"]


def test_runs_table(tmp_path, capsys):
    store = make_store(tmp_path / "results.db")
    capsys.readouterr()
    assert main(["runs", "--from", str(store), "--status", "finished"]) == 0
    out = capsys.readouterr().out
    assert "run-a" in out and "run-b" not in out


@pytest.mark.parametrize("status", ["done", "FINISHED", ""])
def test_runs_status_must_be_a_known_one(tmp_path, capsys, status):
    store = make_store(tmp_path / "results.db")
    argparse_error(capsys, ["runs", "--from", str(store), "--status", status],
                   "argument --status: invalid choice")  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [["runs"], ["export"], ["fit", "--law", "additive"], ["compare"]],
)
def test_a_study_folder_given_for_a_store_says_where_the_store_is(argv, tmp_path, capsys):
    """`--from study-out/` (what plan takes): one line saying it is a folder and naming its
    results.db, not 'results store not found' or 'unknown table format'."""
    from helpers import one_line_error

    from forgetscale.store import open_store

    with open_store(tmp_path / "results.db"):
        pass
    line = one_line_error(capsys, [*argv, "--from", str(tmp_path)], "is a folder",
                          command=argv[0])  # fmt: skip
    assert f"its results store is {tmp_path / 'results.db'}" in line
