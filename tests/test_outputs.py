"""Output paths: checked before any work, written atomically, cleaned up after a kill."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from filesystems import full_disk, readonly_folder

from forgetscale.errors import UserError
from forgetscale.outputs import (
    atomic_output,
    atomic_write,
    check_output,
    remove_stale_tmp,
    tmp_name,
)


def test_an_output_that_is_an_input_is_refused(tmp_path):
    store = tmp_path / "results.db"
    store.write_bytes(b"precious")
    link = tmp_path / "link.db"
    link.symlink_to(store)
    for out in (store, link, tmp_path / "." / "results.db"):
        with pytest.raises(UserError, match="is an input of this command"):
            check_output(out, inputs=(None, str(store)))
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(UserError, match="inside the input folder"):
        check_output(model / "model.safetensors", inputs=(model,))
    assert check_output(model / "new.safetensors", inputs=(model,)) == model / "new.safetensors"
    assert store.read_bytes() == b"precious"


def test_folders_and_missing_folders_are_refused(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        check_output(tmp_path, what="--save")
    with pytest.raises(UserError, match="--save .* folder .* does not exist"):
        check_output(tmp_path / "no" / "x.csv", what="--save")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        check_output(tmp_path / "file" / "x.csv")
    assert check_output(tmp_path / "no" / "x.csv", create_parents=True)
    assert not (tmp_path / "no").exists()  # the check creates nothing
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_unwritable_folder_is_found_before_any_work(tmp_path):
    with readonly_folder(tmp_path / "ro") as folder:
        with pytest.raises(
            UserError, match=r"cannot write --out .*x\.csv: .*(read-only|permission)"
        ):
            check_output(folder / "x.csv")


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    with full_disk(tmp_path / "full") as folder:
        out = folder / "table.csv"
        with pytest.raises(UserError, match=r"cannot write --out .*table\.csv: the disk is full"):
            atomic_write(out, "x" * 100_000)
        assert sorted(os.listdir(folder)) == ["filler"]


def test_dev_full_is_written_in_place_and_fails_cleanly():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    assert check_output("/dev/full") == check_output("/dev/full")
    with pytest.raises(UserError, match="cannot write --out /dev/full: the disk is full"):
        atomic_write("/dev/full", b"x" * 10_000)
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    out = tmp_path / "table.csv"
    out.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert out.read_text() == "old"
    assert os.listdir(tmp_path) == ["table.csv"]
    atomic_write(out, "new")
    assert out.read_text() == "new"
    assert os.listdir(tmp_path) == ["table.csv"]


def test_library_errors_naming_an_os_error_become_one_line(tmp_path):
    with pytest.raises(UserError, match="cannot write reference .*: the disk is full"):
        with atomic_output(tmp_path / "r.safetensors", what="reference"):
            raise RuntimeError("Error while serializing: I/O error: No space left (os error 28)")


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    out = tmp_path / "ref.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    stale = tmp_name(out).name.split(".")
    stale[-3] = str(dead_pid)  # .NAME.HOST.PID.RANDOM.tmp
    stale_path = tmp_path / ".".join(stale)
    stale_path.write_bytes(b"half a reference")
    live = tmp_path / tmp_name(out).name.replace(f".{os.getpid()}.", f".{os.getppid()}.")
    live.write_bytes(b"being written")
    unrelated = tmp_path / ".ref.safetensors.notours"
    unrelated.write_bytes(b"")
    assert remove_stale_tmp(out) == [stale_path]
    assert not stale_path.exists() and live.exists() and unrelated.exists()


def test_other_errors_are_not_dressed_as_user_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_output(tmp_path / "x.csv"):
            pass  # a writer that wrote nothing is a bug, not the user's disk
    with pytest.raises(ValueError, match="os error 2"):
        with atomic_output(tmp_path / "x.csv"):
            raise ValueError("something (os error 2)")
    assert os.listdir(tmp_path) == []


def test_check_space_compares_with_the_free_space(tmp_path):
    from forgetscale.outputs import check_space

    check_space(tmp_path / "small.bin", 1024)
    with pytest.raises(UserError, match=r"cannot write --out .*big\.bin: it needs about .* free"):
        check_space(tmp_path / "not" / "yet" / "big.bin", 1 << 60)
