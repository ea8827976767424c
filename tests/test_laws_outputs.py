"""Outputs are checked before any work and written all at once, or not at all."""

from __future__ import annotations

import errno
import json
import math

import numpy as np
import pytest

from forgetscale.errors import UserError
from forgetscale.laws.outputs import (
    StagedOutputs,
    check_output_file,
    check_output_folder,
    json_safe,
)
from forgetscale.store import open_store


def test_json_safe_turns_nan_and_inf_into_null_with_notes():
    obj = {"a": math.nan, "b": [1.0, math.inf, np.float64(-np.inf)], "c": np.array([0.5, np.nan])}
    clean, notes = json_safe(obj)
    assert json.loads(json.dumps(clean, allow_nan=False)) == {
        "a": None,
        "b": [1.0, None, None],
        "c": [0.5, None],
    }
    assert notes == [
        "a was nan (written as null)",
        "b[1] was inf (written as null)",
        "b[2] was -inf (written as null)",
        "c[1] was nan (written as null)",
    ]
    assert json_safe({"x": 1, "y": "s", "z": None}) == ({"x": 1, "y": "s", "z": None}, [])


def test_staged_outputs_replace_all_files_or_none(tmp_path):
    old = tmp_path / "a.txt"
    old.write_text("old")

    def full_disk(tmp):
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match="--out: cannot write .*b.txt: No space left on device"):
        with StagedOutputs() as out:
            out.write_text(old, "new", "--out")
            out.write(tmp_path / "new" / "deeper" / "b.txt", full_disk, "--out")
    assert old.read_text() == "old"  # the first file was staged, never renamed in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no tmp, no folders
    with StagedOutputs() as out:
        out.write_text(old, "new", "--out")
        out.write_text(tmp_path / "sub" / "b.txt", "b", "--out")
    assert old.read_text() == "new" and (tmp_path / "sub" / "b.txt").read_text() == "b"
    assert not list(tmp_path.rglob("*.tmp"))


def test_check_output_file_refuses_what_would_lose_data(tmp_path):
    store = tmp_path / "results.db"
    open_store(store).close()
    table = tmp_path / "runs.csv"
    table.write_text("run_id,step\n")
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    inputs = [(table, "--from")]
    cases = {
        store: "is a SQLite file",
        table: "is the input given to --from",
        other: "exists and is not a forgetscale fit",
        tmp_path: "is a folder, not a file",
        tmp_path / "runs.csv" / "fit.json": "is not a folder",
    }
    for path, needle in cases.items():
        with pytest.raises(UserError, match=needle):
            check_output_file(
                path, "--save", inputs=inputs, replaceable=lambda p: False, what="a forgetscale fit"
            )
    fresh = tmp_path / "new" / "fit.json"
    assert check_output_file(fresh, "--save", inputs=inputs) == fresh
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(UserError, match="no room in .*bytes free"):
        check_output_file(fresh, "--save", size=2**62)


def test_check_output_folder(tmp_path):
    table = tmp_path / "figs" / "residuals.csv"
    table.parent.mkdir()
    table.write_text("x\n")
    with pytest.raises(UserError, match="--plots: .*residuals.csv is the input given to --from"):
        check_output_folder(table.parent, "--plots", ["residuals.csv"], inputs=[(table, "--from")])
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output_folder(table, "--plots", ["a.png"])
    assert check_output_folder(tmp_path / "new", "--plots", ["a.png"]) == tmp_path / "new"
