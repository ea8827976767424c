"""The training run on tiny random models: the shipped minimal config, the store, resume after
SIGKILL, divergence, bad inputs, one process per run."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import one_line_error, tiny_config

from forgetscale.cli import main
from forgetscale.errors import UserError
from forgetscale.store import EXPORT_COLUMNS, read_measurements
from forgetscale.training import train

# ------------------------------------------------------------------------------------------
# the shipped minimal config through the command line


def test_minimal_config_runs_and_rerun_writes_nothing(workdir, capsys):
    assert main(["train", "run.yaml"]) == 0
    out = capsys.readouterr()
    assert "P = 4,096" in out.err  # shown at start
    df = read_measurements(workdir / "results.db")
    assert list(df.columns) == list(EXPORT_COLUMNS)
    assert df.step.tolist() == [0, 1, 2, 4, 8, 12]
    assert (df.params_trained == 4096).all() and (df["rank"] == 4).all()
    first = df.iloc[0]
    assert abs(first.kl) < 1e-6 and first.agreement == 1.0 and math.isnan(first.train_loss)
    assert df.finetune_loss.iloc[-1] < df.finetune_loss.iloc[0]
    assert df.tokens_seen.tolist() == [0, 128, 256, 512, 1024, 1536]
    assert df.wall_s.is_monotonic_increasing
    assert not (workdir / "results.db.checkpoints").exists()  # cleaned up when finished

    # the same config again: nothing to do, nothing written twice
    assert main(["train", "run.yaml", "--progress=false"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    with sqlite3.connect(workdir / "results.db") as c:
        assert c.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 6
        assert c.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
        status, versions = c.execute("SELECT status, versions FROM runs").fetchone()
    assert status == "finished" and "peft" in json.loads(versions)

    # runs / export
    assert main(["runs", "--from", "results.db"]) == 0
    listing = capsys.readouterr().out
    assert "finished" in listing and "4,096" in listing and "12/12" in listing
    assert main(["export", "--from", "results.db", "--format", "csv", "--out", "m.csv"]) == 0
    assert (
        main(["export", "--from", "results.db", "--format", "parquet", "--out", "m.parquet"]) == 0
    )
    for back in (pd.read_csv("m.csv"), pd.read_parquet("m.parquet")):
        assert list(back.columns) == list(EXPORT_COLUMNS) and len(back) == 6
        assert back.forgetting_loss.tolist() == df.forgetting_loss.tolist()


def test_reference_is_reused_by_fingerprint(workdir, capsys):
    train(tiny_config(workdir, max_steps=1, eval_steps=[0, 1]), log=print)
    train(tiny_config(workdir, max_steps=2, eval_steps=[0, 2]), log=print)
    out = capsys.readouterr().out
    assert out.count("reference: building") == 1 and "reference: reusing" in out
    assert len(list((workdir / "references").glob("*.safetensors"))) == 1


# ------------------------------------------------------------------------------------------
# resume after SIGKILL


def _train_cmd(cfg: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "forgetscale", "train", str(cfg), "--progress=false", *extra]


@pytest.mark.parametrize("torch_compile", [False, True], ids=["eager", "compiled"])
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, torch_compile):
    """Really kill a training process mid-run, start it again, compare with an uninterrupted run
    (eagerly and with compiled blocks: each process compiles again)."""
    from conftest import save_tiny_model_dir

    # a somewhat larger model so that the run lasts a few seconds after the first checkpoint
    model_dir = save_tiny_model_dir(tmp_path / "model", hidden=96)
    from pydoc_data.topics import topics

    keys = sorted(topics)
    with (tmp_path / "task.jsonl").open("w") as fh:
        for k in keys[:30]:
            fh.write(json.dumps({"text": topics[k][:3000]}) + "\n")
    with (tmp_path / "general.jsonl").open("w") as fh:
        for k in keys[-10:]:
            fh.write(json.dumps({"text": topics[k][:2000]}) + "\n")
    base = {
        "model": str(model_dir),
        "task_data": "task.jsonl",
        "forgetting_data": "general.jsonl",
        "rank": 4,
        "block_size": 64,
        "batch_size": 8,
        "learning_rate": 2e-3,
        "max_steps": 120,
        "eval_steps": [0, 1, 5, 10, 20, 40, 60, 80, 100, 120],
        "forgetting_max_tokens": 2048,
        "dropout": 0.1,  # uses the RNG during training: resume must restore it
        "seed": 7,
        "torch_compile": torch_compile,
    }
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(
            "\n".join(f"{k}: {json.dumps(v)}" for k, v in {**base, "store": f"{name}.db"}.items())
        )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    # a: uninterrupted
    subprocess.run(_train_cmd(tmp_path / "a.yaml"), cwd=tmp_path, env=env, check=True)

    # b: killed with SIGKILL right after its checkpoint at step 10 appears, then resumed
    ck_root = tmp_path / "b.db.checkpoints"
    proc = subprocess.Popen(_train_cmd(tmp_path / "b.yaml"), cwd=tmp_path, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in ck_root.glob("*/step-*") if int(p.name[5:]) >= 10]
        if done:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(tmp_path / "b.db") as c:
        (status,) = c.execute("SELECT status FROM runs").fetchone()
        n_before = c.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    assert status == "running" and 4 <= n_before < len(base["eval_steps"])

    resumed = subprocess.run(
        _train_cmd(tmp_path / "b.yaml"), cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from the checkpoint at step" in resumed.stderr

    a = read_measurements(tmp_path / "a.db")
    b = read_measurements(tmp_path / "b.db")
    assert a.run_id.iloc[0] == b.run_id.iloc[0]  # store path is not part of the run id
    assert a.step.tolist() == b.step.tolist() == base["eval_steps"]
    cols = [
        "finetune_loss",
        "forgetting_loss",
        "forgetting_loss_soft",
        "kl",
        "agreement",
        "train_loss",
        "tokens_seen",
    ]
    diff = (a[cols].fillna(0) - b[cols].fillna(0)).abs().to_numpy().max()
    print(f"resumed vs uninterrupted: max abs difference {diff}")
    assert diff <= 1e-5, f"resumed run differs by {diff}"
    assert a.finetune_loss.iloc[-1] < a.finetune_loss.iloc[0]


# ------------------------------------------------------------------------------------------
# divergence


def test_divergence_marks_run_and_keeps_earlier_measurements(workdir, capsys):
    cfg = tiny_config(
        workdir, learning_rate=1e30, max_grad_norm=None, max_steps=6, eval_steps=[0, 1, 2, 4, 6]
    )
    result = train(cfg)
    assert result.status == "diverged" and result.diverged_step is not None
    with sqlite3.connect(workdir / "results.db") as c:
        status, step, message = c.execute(
            "SELECT status, diverged_step, message FROM runs"
        ).fetchone()
    assert status == "diverged" and step == result.diverged_step
    assert "nan" in message.lower() or "inf" in message.lower()
    df = read_measurements(workdir / "results.db")
    assert 0 in df.step.tolist() and (df.step < step).all()
    assert df[["finetune_loss", "forgetting_loss"]].notna().all().all()
    # running the same config again does not retry a diverged run
    assert train(cfg).status == "diverged"
    # and through the command line
    main(["runs", "--from", "results.db"])
    assert f"diverged@{step}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# bad inputs: one clear line, exit code 2


def _cli_error(capsys, *args) -> str:
    # status lines may come first; the error is one line, without a traceback
    argv = ["train", "run.yaml", "--progress=false", *args]
    return one_line_error(capsys, argv, command="train", after_status=True)


def test_bad_inputs_exit_2(workdir, capsys, other_tiny_model_dir):
    (workdir / "empty.jsonl").write_text("\n")
    assert "empty" in _cli_error(capsys, "--task_data=empty.jsonl")

    (workdir / "chat.jsonl").write_text(json.dumps({"question": "hi", "answer": "ho"}) + "\n")
    err = _cli_error(capsys, "--task_data=chat.jsonl")
    assert "none of the expected fields" in err and "messages" in err
    err = _cli_error(capsys, "--task_data=chat.jsonl", "--task_format=prompt_response")
    assert "lacks 'prompt'" in err

    assert "did you mean rank" in _cli_error(capsys, "--rnak=3")
    assert "unknown target module" in _cli_error(capsys, "--target_modules=nope")

    # a reference built from another model (another tokenizer)
    from forgetscale.corpus import pack_documents
    from forgetscale.models import load_model
    from forgetscale.reference import build_reference

    other = load_model(str(other_tiny_model_dir))
    blocks = pack_documents(["some text " * 50], other.tokenizer, 32)
    build_reference(other.model, other.tokenizer, blocks, top_k=8, progress=False).save(
        workdir / "other.ref.safetensors"
    )
    err = _cli_error(capsys, "--reference=other.ref.safetensors")
    assert "another tokenizer" in err
    assert not (workdir / "results.db").exists() or read_measurements("results.db").empty


def test_missing_config_and_paths(workdir, capsys):
    assert main(["train", "nope.yaml"]) == 2
    assert "not found" in capsys.readouterr().err
    assert "model not found" in _cli_error(capsys, "--model=./no-model")


def test_a_run_cannot_be_trained_twice_at_once(workdir):
    from forgetscale.training.lock import RunLock
    from forgetscale.training.outputs import lock_path

    cfg = tiny_config(workdir, max_steps=1, eval_steps=[0, 1])
    lock = RunLock(lock_path(cfg), cfg.run_id)
    try:
        with pytest.raises(UserError, match="being trained by another process"):
            train(cfg)
    finally:
        lock.release()
    assert train(cfg).status == "finished"
    assert not (workdir / "results.db.checkpoints").exists()


# ------------------------------------------------------------------------------------------
# nothing of the user's is lost


def test_a_user_checkpoint_dir_keeps_the_users_files(workdir):
    mine = workdir / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    cfg = tiny_config(workdir, max_steps=2, eval_steps=[0, 1, 2], checkpoint_dir=str(mine))
    assert train(cfg).status == "finished"
    assert train(cfg, restart=True).status == "finished"
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "my notes"
    # a folder of the user's that is named like a checkpoint is refused, not replaced
    (mine / "step-000001").mkdir()
    (mine / "step-000001" / "data.csv").write_text("1,2")
    with pytest.raises(UserError, match="already holds step-000001, which this run did not write"):
        train(cfg, restart=True)
    assert (mine / "step-000001" / "data.csv").read_text() == "1,2"


def test_a_checkpoint_belongs_to_one_run(workdir, capsys):
    shared = str(workdir / "shared-ck")
    a = tiny_config(workdir, max_steps=2, eval_steps=[0, 1, 2], checkpoint_dir=shared)
    b = tiny_config(workdir, max_steps=2, eval_steps=[0, 1, 2], checkpoint_dir=shared, rank=2)
    assert a.run_id != b.run_id
    a_kept = tiny_config(
        workdir, max_steps=2, eval_steps=[0, 1, 2], checkpoint_dir=shared, keep_checkpoint=True
    )
    assert train(a_kept).status == "finished"
    assert list((workdir / "shared-ck").glob("step-*"))
    with pytest.raises(UserError, match=f"holds checkpoints of another run \\({a.run_id}\\)"):
        train(b)
    assert read_measurements(workdir / "results.db").run_id.unique().tolist() == [a.run_id]


def test_restart_keeps_the_finished_run_when_the_new_one_cannot_start(workdir):
    cfg = tiny_config(workdir, max_steps=2, eval_steps=[0, 1, 2])
    assert train(cfg).status == "finished"
    (workdir / "task.jsonl").write_text("")  # the same config can no longer start
    with pytest.raises(UserError):
        train(cfg, restart=True)
    df = read_measurements(workdir / "results.db")
    assert df.step.tolist() == [0, 1, 2]


def test_output_dir_is_checked_before_training_and_never_overwritten(workdir, tiny_lora_dir):
    import shutil

    taken = workdir / "taken"
    shutil.copytree(tiny_lora_dir, taken)
    before = (taken / "adapter_config.json").read_text()
    cfg = tiny_config(workdir, max_steps=2, eval_steps=[0, 2], output_dir=str(taken))
    with pytest.raises(UserError, match="already holds a model or adapter"):
        train(cfg)
    assert (taken / "adapter_config.json").read_text() == before
    assert not (workdir / "results.db").exists()  # refused before anything started
    (workdir / "a-file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        train(tiny_config(workdir, max_steps=2, eval_steps=[0, 2], output_dir="a-file"))
    out = workdir / "mine"
    done = train(tiny_config(workdir, max_steps=2, eval_steps=[0, 2], output_dir=str(out)))
    assert done.status == "finished" and (out / "adapter_config.json").is_file()
    again = tiny_config(workdir, max_steps=2, eval_steps=[0, 2], output_dir=str(out))
    assert train(again, restart=True).status == "finished"  # its own output: rewritten


def test_the_lock_holds_across_checkpoint_folders(workdir):
    from forgetscale.training.lock import RunLock
    from forgetscale.training.outputs import lock_path

    one = tiny_config(workdir, max_steps=1, eval_steps=[0, 1], checkpoint_dir="ck-one")
    two = tiny_config(workdir, max_steps=1, eval_steps=[0, 1], checkpoint_dir="ck-two")
    assert one.run_id == two.run_id
    lock = RunLock(lock_path(one), one.run_id)
    try:
        with pytest.raises(UserError, match="being trained by another process"):
            train(two)
    finally:
        lock.release()


def test_a_damaged_checkpoint_says_restart_discards_it(workdir):
    cfg = tiny_config(workdir, max_steps=2, eval_steps=[0, 1, 2], keep_checkpoint=True)
    assert train(cfg).status == "finished"
    with sqlite3.connect(workdir / "results.db") as c:  # as if killed after step 1
        c.execute("UPDATE runs SET status='running'")
        c.execute("DELETE FROM measurements WHERE step = 2")
    (ck,) = (workdir / "results.db.checkpoints" / cfg.run_id).glob("step-*")
    weights = ck / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="is damaged.*--restart"):
        train(cfg)
    assert train(cfg, restart=True).status == "finished"


def test_train_refuses_a_sqlite_file_that_is_not_a_store(workdir):
    with sqlite3.connect(workdir / "other.db") as c:
        c.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(UserError, match="not a forgetscale results store.*invoices"):
        train(tiny_config(workdir, max_steps=1, eval_steps=[0, 1], store="other.db"))
    with sqlite3.connect(workdir / "other.db") as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert tables == ["invoices"]


def test_a_store_locked_by_another_process_is_one_clear_line(workdir, monkeypatch):
    import forgetscale.store as store_module

    cfg = tiny_config(workdir, max_steps=1, eval_steps=[0, 1])
    store_module.open_store(cfg.store).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)",
            cfg.store,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(store_module, "LOCK_WAIT_S", 0.5)
        with pytest.raises(UserError, match="is locked by another process"):
            train(cfg)
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------------------------------
# downstream suites inside a run


def test_downstream_suites_run_at_their_steps_and_resume_without_repeats(workdir):
    from forgetscale.store import open_store

    ds = {"suites": ["probe"], "steps": [0, "last"], "limit": 16, "batch_size": 8}
    cfg = tiny_config(workdir, max_steps=2, eval_steps=[0, 1, 2], downstream=ds)
    assert cfg.run_id != tiny_config(workdir, max_steps=2, eval_steps=[0, 1, 2]).run_id
    result = train(cfg)
    assert result.status == "finished" and result.downstream_s > 0
    with open_store(workdir / "results.db") as store:
        df = store.downstream(cfg.run_id)
    assert sorted(set(df.step)) == [0, 2]
    base = df[(df.step == 0) & (df.metric == "agreement")]
    assert base.value.tolist() == [1.0] and base.n.tolist() == [16]  # the base agrees with itself
    assert set(df.metric) >= {"acc", "acc_norm", "agreement"}
    assert train(cfg).status == "finished"  # finished: nothing measured twice
    with open_store(workdir / "results.db") as store:
        assert len(store.downstream(cfg.run_id)) == len(df)


def test_a_bad_downstream_block_is_refused_before_any_work(workdir):
    with pytest.raises(UserError, match="downstream.suites: unknown suite 'nope'"):
        tiny_config(workdir, downstream={"suites": ["nope"]})
    with pytest.raises(UserError, match="downstream.steps"):
        tiny_config(workdir, downstream={"suites": ["probe"], "steps": [-1]})


def test_runs_and_export_show_downstream_results(workdir, capsys):
    ds = {"suites": ["probe"], "steps": ["last"], "limit": 8}
    cfg = tiny_config(workdir, max_steps=1, eval_steps=[0, 1], downstream=ds)
    assert train(cfg).status == "finished"
    capsys.readouterr()
    assert main(["runs", "--from", "results.db"]) == 0
    out = capsys.readouterr().out
    assert "probe" in out.splitlines()[0] and "downstream columns: probe = acc" in out
    assert main(["runs", "--from", "results.db", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert set(row["downstream"]) == {"probe:acc"}
    assert main(["export", "--from", "results.db", "--table", "downstream", "--out", "d.csv"]) == 0
    table = pd.read_csv(workdir / "d.csv")
    assert list(table.columns[:4]) == ["run_id", "step", "suite", "metric"]
    assert set(table.step) == {1} and (table.n == 8).all()
