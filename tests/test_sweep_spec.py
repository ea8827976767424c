"""Sweep files: expansion (grid, zip, overrides), run ids shared with `train`, bad input refused
before anything starts, the store's merge, P on the meta device. No training here."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import yaml

from forgetscale.cli import main
from forgetscale.config import load_config
from forgetscale.errors import UserError
from forgetscale.store import open_store
from forgetscale.sweep.spec import load_sweep

MINIMAL = (Path(__file__).resolve().parent.parent / "configs" / "minimal.yaml").read_text()

# the minimal sweep file, as it is
MINIMAL_SWEEP = """\
base: ./run.yaml             # any train config; keys given here override it
store: ./sweep/results.db
grid:
  rank: [2, 4]
  seed: [0, 1]
"""


@pytest.fixture
def sweepdir(tmp_path, monkeypatch, tiny_model_dir, general_jsonl) -> Path:
    (tmp_path / "tiny-model").symlink_to(tiny_model_dir, target_is_directory=True)
    (tmp_path / "task.jsonl").write_text(general_jsonl.read_text())
    (tmp_path / "general.jsonl").write_text(general_jsonl.read_text())
    (tmp_path / "run.yaml").write_text(MINIMAL)
    (tmp_path / "sweep.yaml").write_text(MINIMAL_SWEEP)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def test_minimal_file_expands_to_the_runs_train_would_make(sweepdir):
    sweep = load_sweep("sweep.yaml")
    assert [r.label for r in sweep.runs] == [
        "rank=2 seed=0",
        "rank=2 seed=1",
        "rank=4 seed=0",
        "rank=4 seed=1",
    ]
    assert sweep.store == (sweepdir / "sweep" / "results.db").resolve()
    for run in sweep.runs:
        # the same run id as `forgetscale train run.yaml --rank=R --seed=S`
        same = load_config("run.yaml", [f"--{k}={v}" for k, v in run.values.items()])
        assert run.run_id == same.run_id
        assert run.run_dir == sweep.folder / "runs" / run.run_id
        assert Path(run.config.store) == run.run_dir / "results.db"
        assert Path(run.config.reference_dir) == sweep.folder / "references"
        assert run.config.progress is False and run.config.name == run.label


def test_a_zip_may_set_replay_data_beside_replay_fraction(sweepdir, capsys):
    """replay_fraction > 0 needs replay_data: a zip that gives both, run by run, is valid
    (each value is checked with the other values of its run, not alone); a zip that pairs a
    fraction with no replay data is still refused, naming its place."""
    base = yaml.safe_load(MINIMAL)
    zipped = {"replay_data": [None, "pydoc-replay"], "replay_fraction": [0.0, 0.25]}
    _write(sweepdir / "s.yaml", {"base": base, "zip": zipped})
    sweep = load_sweep("s.yaml")
    assert [r.config.replay_fraction for r in sweep.runs] == [0.0, 0.25]
    assert [r.config.replay_data for r in sweep.runs] == [None, "pydoc-replay"]
    _write(sweepdir / "bad.yaml", {"base": base, "zip": {**zipped, "replay_fraction": [0.25, 0]}})
    with pytest.raises(UserError, match="needs replay_data"):
        load_sweep("bad.yaml")


def test_zip_overrides_and_inline_base(sweepdir):
    base = yaml.safe_load(MINIMAL)
    _write(
        sweepdir / "s.yaml",
        {
            "name": "study",
            "base": base,
            "max_steps": 6,
            "overrides": {"learning_rate": 2e-3, "eval_steps": [0, 3, 6]},
            "grid": {"seed": [0, 1, 2]},
            "zip": {"rank": [2, 4], "alpha": [4, 8]},
            "resources": {"cpus": 2, "gpus": 0},
            "executor": {"default": "local", "local": {"workers": 2}},
        },
    )
    sweep = load_sweep("s.yaml", {"batch_size": 2})
    assert sweep.name == "study" and len(sweep.runs) == 6
    assert sweep.axes == ["seed", "rank", "alpha"]
    assert {(r.config.rank, r.config.alpha) for r in sweep.runs} == {(2, 4.0), (4, 8.0)}
    assert all(r.config.max_steps == 6 and r.config.learning_rate == 2e-3 for r in sweep.runs)
    assert all(r.config.batch_size == 2 and r.config.eval_steps == [0, 3, 6] for r in sweep.runs)
    assert sweep.resources.cpus == 2 and sweep.executor_options == {"local": {"workers": 2}}
    # several zip blocks, and a list-valued key as an axis
    _write(
        sweepdir / "s2.yaml",
        {
            "base": "run.yaml",
            "zip": [{"rank": [2, 4], "alpha": [4, 8]}, {"seed": [0, 1], "learning_rate": [1, 2]}],
            "grid": {"target_modules": [["q_proj", "v_proj"], "mlp"]},
        },
    )
    sweep = load_sweep("s2.yaml")
    assert len(sweep.runs) == 8
    assert sweep.runs[0].label.startswith("target_modules=q_proj,v_proj rank=2 alpha=4")


BAD = [
    ({"grid": {}}, "grid is empty"),
    ({"grid": None}, "grid is empty"),
    ({"grid": {"rank": []}}, "grid.rank: the axis has no values"),
    ({"grid": {"rank": 4}}, "grid.rank: an axis is a list of values"),
    ({"grid": {"rnak": [2, 4]}}, "grid.rnak: unknown config key; did you mean rank?"),
    ({"grid": {"rank": [2, "four"]}}, "grid.rank[1]: rank must be an integer, got 'four'"),
    ({"grid": {"rank": [2, -1]}}, "grid.rank[1]: rank must be positive"),
    ({"grid": {"method": ["lora", "prefix"]}}, "grid.method[1]: method='prefix' is not one of"),
    ({"grid": {"learning_rate": [1e-3, "fast"]}}, "grid.learning_rate[1]: learning_rate must"),
    ({"zip": {"rank": [2, 4], "alpha": [1]}}, "zip: axes that vary together need as many"),
    ({"grid": {"rank": [2]}, "zip": {"rank": [4]}}, "rank is an axis twice"),
    ({"grid": {"rank": [2]}, "rank": 4}, "rank is both an axis (grid.rank) and an override"),
    ({"grid": {"name": ["a", "b"]}}, "are the same run"),
    ({"grid": {"checkpoint_dir": ["a", "b"]}}, "grid.checkpoint_dir: set by the sweep"),
    ({"grid": {"rank": [2]}, "stor": "x.db"}, "stor: unknown key"),
    ({"grid": {"rank": [2]}, "overrides": {"block_size": "big"}}, "block_size must be an int"),
    ({"grid": {"rank": [2]}, "resources": {"gpus": "two"}}, "resources.gpus must be an integer"),
    ({"grid": {"rank": [2]}, "executor": {"locl": {}}}, "executor.locl: unknown executor"),
    ({"grid": {"rank": [2]}, "executor": "kubernetes"}, "unknown executor 'kubernetes'"),
    ({"grid": {"rank": [2]}, "base": "./nowhere.yaml"}, "base: base config not found"),
    ({"base": "./run.yaml"}, "no grid: or zip: block"),
]


@pytest.mark.parametrize(("sweep", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_sweep_files_are_refused_with_the_keys_path(sweepdir, capsys, sweep, message):
    sweep = {"base": "./run.yaml", **sweep}
    _write(sweepdir / "bad.yaml", sweep)
    with pytest.raises(UserError) as exc:
        load_sweep("bad.yaml")
    assert message in str(exc.value)
    assert str(exc.value).startswith("bad.yaml") or "command line" in str(exc.value)
    # through the command line: one line on stderr, exit 2, nothing started or written
    assert main(["sweep", "bad.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (sweepdir / "bad").exists() and not (sweepdir / "sweep").exists()


def test_bad_command_line(sweepdir, capsys):
    for args, message in [
        (["--rank=4"], "--rank overrides the sweep axis grid.rank"),
        (["--rnk=4"], "command line.rnk: unknown config key"),
        (["--workers=0"], "workers must be >= 1"),
        (["--workers=two"], "--workers must be an integer"),
        (["--ray-address=auto"], "--ray-address is an option of --executor ray"),
        (["--local-thread=2"], "--local-thread: not an option of the local executor"),
        (["--local-threads=0"], "--local-threads"),
    ]:
        assert main(["sweep", "sweep.yaml", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (args, err)
    assert not (sweepdir / "sweep").exists()
    assert main(["sweep", "nowhere.yaml"]) == 2
    assert "sweep file not found: nowhere.yaml" in capsys.readouterr().err
    (sweepdir / "binary.yaml").write_bytes(b"\x00\xff\xfe" * 10)
    assert main(["sweep", "binary.yaml"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_merge_run_is_idempotent(tmp_path):
    metrics = {"finetune_loss": 1.0, "forgetting_loss": 2.0}
    with open_store(tmp_path / "run.db") as src, open_store(tmp_path / "sweep.db") as dst:
        src.start_run("r1", {"max_steps": 4}, method="lora", rank=2, params_trained=10)
        src.add_measurement("r1", 0, metrics)
        src.add_measurement("r1", 1, metrics)
        assert dst.merge_run(src, "r1") == 2
        assert dst.merge_run(tmp_path / "run.db", "r1") == 0  # again: nothing new
        src.add_measurement("r1", 4, {**metrics, "finetune_loss": 0.5})
        src.set_status("r1", "finished", last_step=4)
        assert dst.merge_run(src, "r1") == 1
        assert dst.merge_run(src, "nope") == 0
        rec = dst.get_run("r1")
        assert rec.status == "finished" and rec.last_step == 4 and rec.n_measurements == 3
        assert rec.params_trained == 10 and rec.rank == 2
    with sqlite3.connect(tmp_path / "sweep.db") as c:
        assert c.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 3


def test_dry_run_counts_p_from_a_config_json_alone(tmp_path, monkeypatch, capsys, general_jsonl):
    """A folder holding only a tiny Llama's config.json (no weights, no tokenizer) is enough."""
    from transformers import LlamaConfig

    model = tmp_path / "config-only"
    model.mkdir()
    LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ).to_json_file(model / "config.json")
    monkeypatch.chdir(tmp_path)
    _write(
        tmp_path / "s.yaml",
        {
            "base": {"model": str(model), "task_data": str(general_jsonl), "max_steps": 260},
            "grid": {"rank": [2, 8]},
            "zip": {"method": ["lora", "full"], "seed": [0, 1]},
        },
    )
    assert main(["sweep", "s.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    # LoRA on all 7 linear modules of 2 blocks: r * (in + out) each
    shapes = [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)]
    per_rank = 2 * sum(i + o for i, o in shapes)
    full = 2 * (sum(i * o for i, o in shapes) + 2 * 32) + 32  # blocks + their norms + final norm
    assert f"{2 * per_rank:,}" in out and f"{8 * per_rank:,}" in out
    assert f"{full:,}" in out
    assert out.count(" new ") == 4 and "260" in out
    assert not (tmp_path / "s").exists()  # a dry run writes nothing


def test_paper_sweep_dry_run(tmp_path, monkeypatch, capsys):
    """configs/paper-sweep.yaml expands to the paper's grid; with a stand-in config.json for
    the model (the real one needs the hub) its dry run counts P."""
    from transformers import LlamaConfig

    paper = Path(__file__).resolve().parent.parent / "configs" / "paper-sweep.yaml"
    sweep = load_sweep(paper, {"store": str(tmp_path / "paper" / "results.db")})
    ranks = [r.config.rank for r in sweep.runs]
    assert ranks == [8, 16, 32, 64, 128, 256]
    c = sweep.runs[0].config
    assert c.model == "meta-llama/Llama-2-7b-chat-hf" and c.rslora and c.optimizer == "adafactor"
    assert (c.batch_size, c.block_size, c.max_steps) == (32, 512, 260)
    assert c.target_modules == "all-linear" and c.task_data.startswith("hf:")
    assert c.forgetting_data.startswith("hf:wikitext:wikitext-103-raw-v1")
    assert sweep.resources.gpus == 1
    # the same file with the model's config at hand (Llama 2 7B's shapes, 2 of its 32 blocks)
    model = tmp_path / "llama2-7b-config"
    model.mkdir()
    LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=2,
        num_attention_heads=32,
    ).to_json_file(model / "config.json")
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "paper" / "results.db"
    assert main(["sweep", str(paper), "--dry-run", f"--model={model}", f"--store={store}"]) == 0
    out = capsys.readouterr().out
    per_block = 8 * (4 * (4096 + 4096) + 3 * (4096 + 11008))  # rank 8, 7 modules
    assert f"{2 * per_block:,}" in out and f"{2 * 32 * per_block:,}" in out
    assert not store.parent.exists()


def test_paths_are_found_next_to_the_file_that_names_them(sweepdir, capsys):
    sub = sweepdir / "study"
    sub.mkdir()
    (sub / "other.jsonl").write_text((sweepdir / "task.jsonl").read_text())
    base = {k: v for k, v in yaml.safe_load(MINIMAL).items() if k != "task_data"}
    (sweepdir / "nodata.yaml").write_text(yaml.safe_dump(base))
    _write(sub / "s.yaml", {"base": "../nodata.yaml", "grid": {"task_data": ["./other.jsonl"]}})
    sweep = load_sweep(sub / "s.yaml")
    assert sweep.runs[0].config.task_data == str(sub / "other.jsonl")
    assert sweep.runs[0].config.model == str((sweepdir / "tiny-model").resolve())
    # a key the base lacks may come from the command line
    _write(sub / "t.yaml", {"base": "../nodata.yaml", "grid": {"rank": [2]}})
    with pytest.raises(UserError, match="task_data is required"):
        load_sweep(sub / "t.yaml")
    assert main(["sweep", str(sub / "t.yaml"), "--task_data=task.jsonl", "--dry-run"]) == 0
    assert "1 new" in capsys.readouterr().out


def test_local_executor_shares_cores_and_gives_each_worker_its_gpu(tmp_path, monkeypatch):
    from forgetscale.sweep.executors import get_executor

    local = get_executor("local")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,3")
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    ex = local(local.Options(), tmp_path)  # nothing starts before start()
    assert ex.n_workers == 3 and ex.threads == 4 and ex.capacity() == 3
    assert [ex._env(i)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["0", "1", "3"]
    assert ex._env(0)["OMP_NUM_THREADS"] == "4" and ex._env(2)["FORGETSCALE_THREADS"] == "4"
    assert "1 thread" not in ex.describe() and "GPUs 0,1,3" in ex.describe()
    ex = local(local.Options(workers=2, gpus=[5]), tmp_path)
    assert [ex._env(i)["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["5", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a cap the user set is kept
    ex = local(local.Options(workers=2), tmp_path)
    assert ex.threads == 1 and ex.gpus == [] and ex.n_workers == 2
    assert ex.pending() == 0 and not any(ex.workers)
