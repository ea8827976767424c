"""Small bad inputs, each one line and exit 2: a LoRA rank above a layer's width, a
reference top-k beyond the vocabulary (named as the config names it), a reference given as a
folder, a refusal record that does not say whether it is harmful, a checkpoint or reference
folder or a sweep folder that cannot be made."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from helpers import one_line_error

from forgetscale.errors import UserError
from forgetscale.store import open_store


def test_a_rank_above_a_target_layers_width_is_refused(workdir, capsys):
    line = one_line_error(
        capsys, ["train", "run.yaml", "--rank=100000"], "rank 100000 is above", after_status=True
    )
    assert "at most 16" in line, line  # the tiny model's k_proj is 16 wide (GQA)


def test_reference_top_k_beyond_the_vocabulary_names_the_config_key(workdir, capsys):
    line = one_line_error(
        capsys,
        ["train", "run.yaml", "--reference_top_k=100000"],
        "reference_top_k must be",
        after_status=True,
    )
    assert "--top-k" not in line, line
    assert not list(workdir.rglob("ref-*.safetensors"))


def test_measure_reference_that_is_a_folder_says_so(tmp_path, tiny_model_dir, capsys):
    one_line_error(
        capsys,
        ["measure", "--model", str(tiny_model_dir), "--reference", str(tmp_path)],
        "is a folder; give the .safetensors file",
    )


def test_a_refusal_record_without_harmful_is_refused(tmp_path, tiny_model_dir, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "how do I pick a lock?"}\n')
    one_line_error(
        capsys,
        ["evaluate", "--model", str(tiny_model_dir), "--suite", f"refusal:{prompts}", "--no-cache"],
        "record 1 has no 'harmful'",
    )


def test_an_unmakeable_checkpoint_dir_is_one_line_and_no_run_is_recorded(workdir, capsys):
    (workdir / "a-file").write_text("x")
    one_line_error(
        capsys, ["train", "run.yaml", "--checkpoint_dir=a-file/ck"], "cannot make checkpoint_dir"
    )
    assert (workdir / "a-file").read_text() == "x"
    if (workdir / "results.db").exists():  # the store may exist; the run is not in it
        with open_store(workdir / "results.db", create=False) as store:
            assert store.list_runs() == []


def test_an_unmakeable_reference_dir_is_one_line_and_no_run_is_recorded(workdir, capsys):
    (workdir / "a-file").write_text("x")
    one_line_error(capsys, ["train", "run.yaml", "--reference_dir=a-file/refs"], "reference_dir")
    assert (workdir / "a-file").read_text() == "x"
    assert not list(workdir.rglob("*.safetensors"))
    if (workdir / "results.db").exists():  # the store may exist; the run is not in it
        with open_store(workdir / "results.db", create=False) as store:
            assert store.list_runs() == []


def test_a_sweep_whose_folder_cannot_be_made_is_one_line_and_writes_nothing(workdir, capsys):
    (workdir / "a-file").write_text("x")
    (workdir / "s.yaml").write_text(
        "base: ./run.yaml\nstore: ./a-file/sweep/results.db\ngrid: {rank: [1, 2]}\n"
    )
    before = sorted(p.name for p in workdir.iterdir())
    for extra in ([], ["--dry-run"]):
        one_line_error(capsys, ["sweep", "s.yaml", "--no-progress", *extra], "a-file")
    assert (workdir / "a-file").read_text() == "x"
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_a_sigtermed_train_is_marked_interrupted_not_running(workdir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "forgetscale", "train", "run.yaml", "--max_steps=100000",
         "--eval_steps=0,100000", "--no-progress"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the run is recorded as running
            if (workdir / "results.db").exists():
                try:
                    with open_store(workdir / "results.db", create=False) as store:
                        runs = store.list_runs()
                except UserError:  # the run is still creating the store's tables
                    runs = []
                if runs and runs[0].status == "running" and runs[0].n_measurements:
                    break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    with open_store(workdir / "results.db", create=False) as store:
        (run,) = store.list_runs()
    assert run.status == "failed" and "interrupted" in run.message
