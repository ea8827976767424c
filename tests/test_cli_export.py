"""`forgetscale export`: the measurements table, and outputs that must not harm the store."""

from __future__ import annotations

import math
import os

import pandas as pd
import pytest
from filesystems import full_disk, readonly_folder
from helpers import one_line_error

from forgetscale.cli import main
from forgetscale.store import EXPORT_COLUMNS, open_store


def make_store(path):
    with open_store(path) as store:
        for run_id, status in (("run-a", "finished"), ("run-b", "diverged")):
            store.start_run(run_id, {"model": "m", "max_steps": 4}, method="lora", rank=4,
                            params_trained=1000)  # fmt: skip
            for step in (0, 2, 4):
                store.add_measurement(run_id, step, {
                    "finetune_loss": 3.0 - 0.1 * step, "forgetting_loss": 2.0 + 0.1 * step,
                    "kl": math.nan if step == 4 else 0.01 * step, "tokens_seen": 64 * step,
                })  # fmt: skip
            store.set_status(run_id, status)
    return path


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "results.db")


def argparse_error(capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and match in err, err


def store_is_intact(path):
    with open_store(path, create=False) as s:
        return len(s.list_runs()) == 2 and len(s.measurements()) == 6


def test_export_csv_and_parquet(store, tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "m.csv"
    assert main(["export", "--from", str(store), "--out", str(out), "--status", "finished"]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == list(EXPORT_COLUMNS) and set(df.run_id) == {"run-a"}
    assert main(["export", "--from", str(store), "--out", str(tmp_path / "m.parquet")]) == 0
    assert len(pd.read_parquet(tmp_path / "m.parquet")) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet", "new", "results.db"]
    capsys.readouterr()
    assert main(["export", "--from", str(store)]) == 0
    assert capsys.readouterr().out.startswith(",".join(EXPORT_COLUMNS))


def test_export_out_that_is_the_store_is_refused(store, tmp_path, capsys):
    before = store.read_bytes()
    link = tmp_path / "link.csv"
    link.symlink_to(store)
    for out in (store, link, tmp_path / "." / store.name):
        one_line_error(capsys, ["export", "--from", str(store), "--out", str(out)],
                       "is an input of this command")  # fmt: skip
    assert store.read_bytes() == before and store_is_intact(store)


def test_export_out_that_is_a_folder_or_nowhere_is_one_line(store, tmp_path, capsys):
    argv = ["export", "--from", str(store), "--out"]
    one_line_error(capsys, [*argv, str(tmp_path)], "is a folder; give a file name")
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, [*argv, str(tmp_path / "file" / "m.csv")], "is not a folder")
    one_line_error(
        capsys, ["export", "--from", str(store), "--format", "parquet"], "parquet needs --out"
    )


def test_export_to_a_read_only_folder_is_checked_before_reading(
    store, tmp_path, capsys, monkeypatch
):
    import forgetscale.store

    def no_reading(*args, **kwargs):
        raise AssertionError("the store was read before the output was checked")

    monkeypatch.setattr(forgetscale.store, "open_store", no_reading)
    with readonly_folder(tmp_path / "ro") as folder:
        out = folder / "m.csv"
        one_line_error(capsys, ["export", "--from", str(store), "--out", str(out)],
                       f"cannot write --out {out}")  # fmt: skip


@pytest.mark.parametrize("name", ["m.csv", "m.parquet"])
def test_export_to_a_full_disk_is_one_line_and_leaves_nothing(store, tmp_path, capsys, name):
    with full_disk(tmp_path / "full", size="64k") as folder:
        out = folder / name
        one_line_error(capsys, ["export", "--from", str(store), "--out", str(out)],
                       f"cannot write --out {out}: the disk is full")  # fmt: skip
        assert os.listdir(folder) == ["filler"]


def test_export_to_dev_full_is_one_line(store, capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    one_line_error(capsys, ["export", "--from", str(store), "--out", "/dev/full"],
                   "cannot write --out /dev/full: the disk is full")  # fmt: skip
    assert not os.path.isfile("/dev/full")


def test_export_status_must_be_a_known_one(store, capsys):
    argparse_error(capsys, ["export", "--from", str(store), "--status", "done"],
                   "argument --status: invalid choice: 'done'")  # fmt: skip
