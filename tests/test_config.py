"""Config dataclasses, YAML loading, --key=value overrides and the run id."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgetscale.config import (
    TrainConfig,
    evaluation_schedule,
    load_config,
    parse_overrides,
    run_id,
)
from forgetscale.errors import UserError

# the minimal config of issue 3, as shipped in configs/ (it must run as it is)
MINIMAL = (Path(__file__).resolve().parent.parent / "configs" / "minimal.yaml").read_text()


def _write(tmp_path, text=MINIMAL):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    (tmp_path / "task.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "general.jsonl").write_text('{"text": "b"}\n')
    (tmp_path / "tiny-model").mkdir(exist_ok=True)
    return p


def test_minimal_yaml_from_issue(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(_write(tmp_path))
    assert cfg.method == "lora" and cfg.rank == 4 and cfg.learning_rate == 1e-3
    assert cfg.eval_steps == [0, 1, 2, 4, 8, 12]
    assert cfg.evaluation_steps() == [0, 1, 2, 4, 8, 12]
    assert cfg.model == str((tmp_path / "tiny-model").resolve())
    assert cfg.task_data == str((tmp_path / "task.jsonl").resolve())
    assert cfg.store == str((tmp_path / "results.db").resolve())
    assert cfg.rslora is True and cfg.target_modules == "all-linear"


def test_paths_resolve_against_config_folder(tmp_path, monkeypatch):
    p = _write(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(p)
    assert cfg.task_data == str((tmp_path / "task.jsonl").resolve())
    # embedded corpus names and hub ids are kept as written
    cfg = load_config(p, ["--task_data=shakespeare", "--model=HuggingFaceTB/SmolLM2-135M"])
    assert cfg.task_data == "shakespeare" and cfg.model == "HuggingFaceTB/SmolLM2-135M"


def test_overrides_are_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        _write(tmp_path),
        [
            "--rank=16",
            "--learning-rate=3e-4",
            "--eval_steps=0,5,12",
            "--target_modules=q_proj,v_proj",
            "--layers=[0, 1]",
            "--gradient_checkpointing",
            "--max_grad_norm=null",
            "--rslora=false",
            "--alpha",
            "8",
        ],
    )
    assert cfg.rank == 16 and isinstance(cfg.rank, int)
    assert cfg.learning_rate == 3e-4
    assert cfg.eval_steps == [0, 5, 12]
    assert cfg.target_modules == ["q_proj", "v_proj"]
    assert cfg.layers == [0, 1]
    assert cfg.gradient_checkpointing is True
    assert cfg.max_grad_norm is None
    assert cfg.rslora is False
    assert cfg.alpha == 8.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("--learnig_rate=1", "did you mean learning_rate"),
        ("--rank=abc", "rank must be an integer"),
        ("--method=dora", "method='dora' is not one of"),
        ("--batch_size=0", "batch_size must be positive"),
        ("--eval_steps=0,99", "outside 0..max_steps"),
        ("--rslora=maybe", "rslora must be true or false"),
    ],
)
def test_bad_overrides(tmp_path, monkeypatch, override, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        load_config(_write(tmp_path), [override])


def test_unknown_yaml_key(tmp_path):
    p = _write(tmp_path, MINIMAL + "lerning_rate: 0.1\n")
    with pytest.raises(UserError, match="unknown config key 'lerning_rate'.*learning_rate"):
        load_config(p)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(p)


def test_run_id_ignores_where_results_go(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _write(tmp_path)
    a = load_config(p)
    b = load_config(p, ["--store=other.db", "--progress=false", "--name=x", "--checkpoint_dir=ck"])
    c = load_config(p, ["--learning_rate=2e-3"])
    assert run_id(a) == run_id(b) == a.run_id
    assert run_id(a) != run_id(c)
    assert len(a.run_id) == 16


def test_every_field_has_help():
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f.name


def test_parse_overrides():
    assert parse_overrides(["--a=1", "b=x", "--c", "[1,2]", "--flag"]) == {
        "a": 1,
        "b": "x",
        "c": [1, 2],
        "flag": True,
    }
    with pytest.raises(UserError):
        parse_overrides(["positional"])


def test_evaluation_schedule():
    assert evaluation_schedule(12, explicit=[8, 0, 4, 4]) == [0, 4, 8]
    s = evaluation_schedule(260, log_points=8)
    assert s[0] == 0 and s[-1] == 260 and s == sorted(set(s))
    assert len(s) == 9  # step 0 + 8 log-spaced points including 1 and 260
    assert evaluation_schedule(10, log_points=0, every=5) == [0, 5, 10]
    assert evaluation_schedule(1) == [0, 1]
