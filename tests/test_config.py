"""Config dataclasses, YAML loading, --key=value overrides and the run id."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgetscale.config import (
    TrainConfig,
    build_config,
    evaluation_schedule,
    load_config,
    parse_overrides,
    run_id,
)
from forgetscale.errors import UserError

# the minimal config as shipped in configs/ (it must run as it is)
MINIMAL = (Path(__file__).resolve().parent.parent / "configs" / "minimal.yaml").read_text()


def _write(tmp_path, text=MINIMAL):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    (tmp_path / "task.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "general.jsonl").write_text('{"text": "b"}\n')
    (tmp_path / "tiny-model").mkdir(exist_ok=True)
    return p


def test_shipped_minimal_yaml(tmp_path, monkeypatch):
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


def _numeric_keys():
    """Every config key that holds numbers, with a value outside its bounds."""
    import dataclasses

    from forgetscale.config import TrainConfig

    out = []
    for f in dataclasses.fields(TrainConfig):
        for key in ("gt", "ge", "lt", "le"):
            if key in f.metadata:
                bound = f.metadata[key]
                value = {"gt": bound, "ge": bound - 1, "lt": bound, "le": bound + 1}[key]
                out.append((f.name, value))
    return out


@pytest.mark.parametrize("key, value", _numeric_keys())
def test_every_bounded_key_refuses_out_of_range_values(tmp_path, monkeypatch, key, value):
    monkeypatch.chdir(tmp_path)
    if key in ("eval_steps", "layers"):
        value = [value]
    with pytest.raises(UserError, match=key):
        load_config(_write(tmp_path), {key: value})


def test_the_audit_covers_every_numeric_key():
    """A numeric key without bounds would accept anything: every one must declare them."""
    import dataclasses
    import typing

    from forgetscale.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    numeric = {
        f.name
        for f in dataclasses.fields(TrainConfig)
        if any(t in str(hints[f.name]) for t in ("int", "float"))
    }
    bounded = {k for k, _ in _numeric_keys()}
    assert numeric - bounded == set()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="learning_rate must be a finite number"):
        load_config(_write(tmp_path), [f"--learning_rate={value}"])


def test_negative_gradient_clipping_is_refused(tmp_path, monkeypatch):
    """A negative clipping norm would scale gradients by a negative factor: gradient ascent."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="max_grad_norm must be positive"):
        load_config(_write(tmp_path), ["--max_grad_norm=-1"])


def test_errors_name_the_file_or_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _write(tmp_path, MINIMAL + "weight_decay: -0.1\n")
    with pytest.raises(UserError, match=r"run.yaml: weight_decay must be at least 0"):
        load_config(p)
    with pytest.raises(UserError, match=r"command line: rank must be an integer"):
        load_config(_write(tmp_path), ["--rank=x"])
    # a value in range for its type but not for the key, given on the command line
    with pytest.raises(UserError, match=r"^command line: replay_fraction must be at least 0"):
        load_config(_write(tmp_path), ["--replay_fraction=-0.1"])
    with pytest.raises(UserError, match=r"^command line: replay_fraction=0.5 needs replay_data"):
        load_config(_write(tmp_path), ["--replay_fraction=0.5"])


def test_a_binary_config_file_is_one_line(tmp_path):
    p = tmp_path / "model.bin"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match="not a text"):
        load_config(p)


def test_a_config_is_validated_at_construction():
    from forgetscale.config import TrainConfig

    with pytest.raises(UserError, match="rank must be positive"):
        TrainConfig(task_data="shakespeare", rank=0)


def test_a_key_given_twice_is_refused_not_silently_the_last(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("task_data: shakespeare\nlearning_rate: 1e-4\nlearning_rate: 1e-2\n")
    with pytest.raises(UserError, match=r"duplicate key 'learning_rate' \(line 3\)"):
        load_config(p)


def test_an_empty_target_module_list_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="target_modules is empty"):
        build_config({"task_data": "shakespeare", "target_modules": []})


@pytest.mark.parametrize(
    "files, argv",
    [
        (
            {"s.yaml": "grid: {rank: [1, 2]}\ngrid: {rank: [4]}\nbase: {task_data: x}\n"},
            ["sweep", "s.yaml", "--dry-run"],
        ),
        (
            {
                "s.yaml": "base: b.yaml\ngrid: {rank: [1, 2]}\n",
                "b.yaml": "task_data: shakespeare\nrank: 2\nrank: 4\n",
            },
            ["sweep", "s.yaml", "--dry-run"],
        ),
        (
            {
                "s.yaml": "base: {task_data: shakespeare}\ngrid: {rank: [1, 2]}\n"
                "analysis: {bootstrap: 0, bootstrap: 8}\n"
            },
            ["study", "s.yaml", "--dry-run"],
        ),
        (
            {
                "t.yaml": "task_data: shakespeare\ndownstream: {suites: [probe], suites: [refusal]}\n"
            },
            ["train", "t.yaml"],
        ),
    ],
)
def test_every_yaml_file_refuses_a_key_given_twice(tmp_path, monkeypatch, capsys, files, argv):
    """Sweep files, their base configs, study files and a config's downstream: block are all
    read by read_yaml_file: a key given twice is one line, nothing is written."""
    from forgetscale.cli import main

    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "duplicate key" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)


def test_a_folder_given_as_a_yaml_file_says_so(tmp_path):
    (tmp_path / "cfg").mkdir()
    with pytest.raises(UserError, match="is a folder; give the config file's path"):
        load_config(tmp_path / "cfg")
