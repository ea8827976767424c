"""`forgetscale evaluate` and the Python API: suites beside the base, cache, bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from helpers import one_line_error

from forgetscale.cli import main
from forgetscale.downstream import (
    DownstreamConfig,
    SuiteMeasurement,
    SuiteOptions,
    base_fingerprint,
    get_suite,
    register_suite,
    run_suites,
)
from forgetscale.downstream.multiple_choice import MCItem, MultipleChoiceSuite
from forgetscale.errors import UserError


@pytest.fixture(scope="module")
def questions_file(tmp_path_factory):
    rng = random.Random(3)
    words = "list tuple dict set class def return yield lambda import".split()
    path = tmp_path_factory.mktemp("mc") / "questions.jsonl"
    with path.open("w") as fh:
        for i in range(15):
            choices = rng.sample(words, 4)
            record = {
                "question": f"Which keyword makes a {rng.choice(words)}? ({i})",
                "choices": choices,
            }
            if i % 3:
                record["answer"] = rng.randrange(4) if i % 2 else choices[1]
            fh.write(json.dumps(record) + "\n")
    return path


def run_json(capsys, argv):
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_mc_suite_with_adapter_reports_base_tuned_change_and_caches(
    tiny_model_dir, tiny_lora_dir, questions_file, tmp_path, capsys
):
    argv = [
        "evaluate", "--model", str(tiny_model_dir), "--adapter", str(tiny_lora_dir),
        "--suite", f"mc:{questions_file}", "--cache-dir", str(tmp_path / "cache"),
        "--out", str(tmp_path / "report.json"),
    ]  # fmt: skip
    report = run_json(capsys, argv)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    (suite,) = report["suites"]
    assert suite["compared"] and not suite["base_cached"]
    metrics = {m["metric"]: m for m in suite["metrics"]}
    assert set(metrics) == {"acc", "acc_norm", "agreement"}
    assert metrics["acc"]["tuned"]["n"] == 10  # only the labelled questions
    assert metrics["agreement"]["tuned"]["n"] == 15
    assert metrics["agreement"]["base"]["value"] == 1.0
    for m in metrics.values():
        for side in ("base", "tuned"):
            rate = m[side]
            assert rate["ci_low"] <= rate["value"] <= rate["ci_high"]
        change = m["change"]
        assert change["value"] == pytest.approx(m["tuned"]["value"] - m["base"]["value"])
        assert change["significant"] == (change["ci_low"] > 0 or change["ci_high"] < 0)
    again = run_json(capsys, argv)
    assert again["suites"][0]["base_cached"] is True
    assert again["suites"][0]["metrics"] == suite["metrics"]
    # the text report names every rate's n and says when a change is inside the noise
    capsys.readouterr()
    assert main(argv[:-2]) == 0
    text = capsys.readouterr().out
    assert "base side from cache" in text and "n" in text


def test_model_alone_and_full_finetune_against_a_base(
    tiny_model_dir, questions_file, tmp_path_factory, tmp_path, capsys
):
    from conftest import save_tiny_model_dir

    alone = run_json(capsys, [
        "evaluate", "--model", str(tiny_model_dir), "--suite", f"mc:{questions_file}", "--no-cache",
    ])  # fmt: skip
    assert alone["suites"][0]["compared"] is False
    other = save_tiny_model_dir(tmp_path_factory.mktemp("full-ft"), seed=5)  # same tokenizer
    report = run_json(capsys, [
        "evaluate", "--model", str(other), "--base", str(tiny_model_dir),
        "--suite", f"mc:{questions_file}", "--cache-dir", str(tmp_path),
    ])  # fmt: skip
    agreement = {m["metric"]: m for m in report["suites"][0]["metrics"]}["agreement"]
    assert agreement["tuned"]["value"] < 1.0  # different weights, different choices somewhere


def test_generation_suites_write_side_by_side(tiny_model_dir, tiny_lora_dir, tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    report = run_json(capsys, [
        "evaluate", "--model", str(tiny_model_dir), "--adapter", str(tiny_lora_dir),
        "--suite", "refusal", "--suite", "generations", "--limit", "3", "--max-new-tokens", "4",
        "--cache-dir", str(tmp_path), "--generations-out", str(out),
    ])  # fmt: skip
    refusal = {m["metric"]: m for m in report["suites"][0]["metrics"]}
    assert refusal["refusal_rate"]["tuned"]["n"] == 3
    assert refusal["over_refusal_rate"]["tuned"]["n"] == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["suite"] for r in rows] == ["refusal"] * 6 + ["generations"] * 3
    assert {"prompt", "base", "tuned", "base_refused", "tuned_refused"} <= set(rows[0])


@pytest.mark.parametrize(
    "lines, match",
    [
        (
            ['{"question": "q", "choices": ["a", "b"]}', "{not json"],
            "record 2" if False else ":2: not valid JSON",
        ),
        (['{"question": "q", "choices": ["only one"]}'], "at least two choices, got 1"),
        (['{"question": "q", "choices": ["a", "b"], "answer": 5}'], "answer 5 is not an index"),
        (['{"question": "q", "choices": ["a", "b"], "answer": "c"}'], "is not one of its choices"),
        (['{"choices": ["a", "b"]}'], "needs a string field 'question'"),
        (['{"question": "q", "choices": "a b"}'], "needs 'choices', a list of strings"),
        (["[1, 2]"], "expected a JSON object per line"),
        ([""], "holds no questions"),
    ],
)
def test_bad_question_files(tiny_model_dir, tmp_path, capsys, lines, match):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    one_line_error(
        capsys, ["evaluate", "--model", str(tiny_model_dir), "--suite", f"mc:{path}"], match
    )


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--suite", "nope"], "unknown suite 'nope'; known suites:"),
        (["--suite", "probe:x"], "takes no argument"),
        (["--suite", "mc"], "needs an argument"),
        (["--suite", "mc:/no/such.jsonl"], "question file not found"),
        (["--suite", "refusal:/no/such.jsonl"], "prompt file not found"),
        (["--suite", "probe", "--limit", "0"], "--limit: must be a positive integer"),
        (
            ["--suite", "probe", "--max-new-tokens", "0"],
            "--max-new-tokens: must be a positive integer",
        ),
        (["--suite", "probe", "--batch-size", "0"], "--batch-size: must be a positive integer"),
        (["--suite", "probe", "--show", "-1"], "--show: must be an integer >= 0"),
        (["--suite", "refusal", "--judge", "vibes"], "unknown judge"),
        ([], "give at least one --suite"),
        (["--suite", "probe", "--out", "/no/such/dir/report.json"], "does not exist"),
        (["--suite", "probe", "--device", "cuda:7"], "cuda"),
    ],
)
def test_bad_options(tiny_model_dir, capsys, extra, match):
    one_line_error(capsys, ["evaluate", "--model", str(tiny_model_dir), *extra], match)


def test_adapter_and_base_together_refused(
    tiny_model_dir, tiny_lora_dir, other_tiny_model_dir, capsys
):
    one_line_error(
        capsys,
        ["evaluate", "--model", str(tiny_model_dir), "--adapter", str(tiny_lora_dir),
         "--base", str(tiny_model_dir), "--suite", "probe", "--no-cache"],
        "not both",
    )  # fmt: skip
    one_line_error(
        capsys,
        ["evaluate", "--model", str(other_tiny_model_dir), "--base", str(tiny_model_dir),
         "--suite", "generations", "--limit", "1", "--max-new-tokens", "1", "--no-cache"],
        "different tokenizers",
    )  # fmt: skip


def test_list_suites(capsys):
    capsys.readouterr()
    assert main(["evaluate", "--list-suites"]) == 0
    out = capsys.readouterr().out
    for name in ("probe", "mc:FILE.jsonl", "lm-eval:TASK", "refusal", "generations"):
        assert name in out


# -- inside runs -----------------------------------------------------------------


@pytest.fixture()
def tiny_peft(tiny_model_dir, tiny_lora_dir):
    from forgetscale.models import load_model

    loaded = load_model(str(tiny_model_dir), adapter=str(tiny_lora_dir), device="cpu")
    return loaded.model, loaded.tokenizer


def test_run_suites_long_format_and_base_cache(tiny_peft, questions_file, tmp_path):
    model, tokenizer = tiny_peft
    options = SuiteOptions(limit=4, max_new_tokens=6)
    model.train()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    rows = run_suites(
        model, tokenizer, [f"mc:{questions_file}", "refusal"], base_cache_dir=tmp_path,
        device="cpu", batch_size=4, options=options,
    )  # fmt: skip
    assert model.training  # left as it was
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(isinstance(r, SuiteMeasurement) for r in rows)
    keys = [(r.suite, r.metric) for r in rows]
    assert (f"mc:{questions_file}", "agreement") in keys and ("refusal", "refusal_rate") in keys
    for r in rows:
        assert r.n > 0 and r.ci_low <= r.value <= r.ci_high
    assert len(list(tmp_path.glob("*.json"))) == 2  # one base-side file per suite
    again = run_suites(
        model,
        tokenizer,
        [f"mc:{questions_file}", "refusal"],
        base_cache_dir=tmp_path,
        options=options,
    )
    assert again == rows


def test_run_suites_plain_model_needs_the_base_side_first(tiny_model_dir, questions_file, tmp_path):
    from forgetscale.models import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu")
    key = base_fingerprint(loaded.model, loaded.tokenizer)
    # the base itself (step 0), named by its own key: agreement 1 over every question
    rows = run_suites(
        loaded.model,
        loaded.tokenizer,
        [f"mc:{questions_file}"],
        base_cache_dir=tmp_path,
        base_key=key,
    )
    assert {r.metric: r.value for r in rows}["agreement"] == 1.0
    assert {r.metric: r.n for r in rows}["agreement"] == 15
    # full fine-tuning: later steps name the step-0 key and find the base side in the cache
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    later = run_suites(
        loaded.model,
        loaded.tokenizer,
        [f"mc:{questions_file}"],
        base_cache_dir=tmp_path,
        base_key=key,
    )
    assert {r.metric for r in later} == {"acc", "acc_norm", "agreement"}
    with pytest.raises(UserError, match="run the suites on the base"):
        run_suites(
            loaded.model, loaded.tokenizer, ["refusal"], base_cache_dir=tmp_path, base_key=key
        )


def test_downstream_config_validated_at_construction():
    config = DownstreamConfig.from_dict({"suites": ["probe", "refusal"], "steps": [0, "last"]})
    assert config.resolve_steps(100) == [0, 100]
    assert DownstreamConfig(suites=("probe",), steps=(0, 10, "last", 500)).resolve_steps(40) == [
        0,
        10,
        40,
    ]
    assert not DownstreamConfig.from_dict(None).enabled
    assert config.options().judge == "keyword"
    assert DownstreamConfig.from_dict(config.to_dict()) == config
    bad = [
        ({"suites": ["nope"]}, "downstream.suites: unknown suite"),
        ({"suites": ["probe", "probe"]}, "named twice"),
        ({"suites": ["probe"], "steps": []}, "at least one step"),
        ({"suites": ["probe"], "steps": [-1]}, "integer >= 0 or 'last'"),
        ({"suites": ["probe"], "steps": ["first"]}, "integer >= 0 or 'last'"),
        ({"suites": ["probe"], "steps": [True]}, "integer >= 0 or 'last'"),
        ({"suites": ["probe"], "batch_size": 0}, "downstream.batch_size"),
        ({"suites": ["probe"], "max_new_tokens": 2.5}, "downstream.max_new_tokens"),
        ({"suites": ["probe"], "limit": 0}, "downstream.limit"),
        ({"suites": ["probe"], "judge": "vibes"}, "downstream.judge"),
        ({"suites": "probe", "stepz": [0]}, "unknown key(s) stepz"),
        ({"suites": 3}, "expected a list"),
    ]
    for data, match in bad:
        with pytest.raises(UserError, match=match.replace("(", r"\(").replace(")", r"\)")):
            DownstreamConfig.from_dict(data)


def test_a_user_suite_registers_beside_the_builtins():
    class Tiny(MultipleChoiceSuite):
        pass

    def factory(arg, options):
        return Tiny("my-suite", [MCItem("q", ("a", "b"), 0)], "inline", options)

    register_suite("my-suite", factory, help="a test suite")
    try:
        assert isinstance(get_suite("my-suite"), Tiny)
        assert get_suite("probe").kind == "multiple_choice"  # built-ins unaffected
        with pytest.raises(ValueError, match="already registered"):
            register_suite("probe", factory, help="x")
    finally:
        from forgetscale.downstream import registry

        registry._SUITES.pop("my-suite", None)
    assert np.isfinite(0.0)


def test_base_key_is_the_same_with_the_adapter_on(tiny_model_dir, tiny_lora_dir):
    """The base side cached for base + adapter is the one the base alone finds, and back."""
    from forgetscale.models import load_model

    alone = load_model(str(tiny_model_dir), device="cpu")
    wrapped = load_model(str(tiny_model_dir), adapter=str(tiny_lora_dir), device="cpu")
    assert base_fingerprint(alone.model, alone.tokenizer) == base_fingerprint(
        wrapped.model, wrapped.tokenizer
    )
    with torch.no_grad():
        next(alone.model.parameters()).add_(1e-3)
    assert base_fingerprint(alone.model, alone.tokenizer) != base_fingerprint(
        wrapped.model, wrapped.tokenizer
    )


@pytest.fixture(scope="module")
def nan_head_model_dir(tiny_model_dir, tmp_path_factory):
    """A copy of the tiny model whose output head is NaN: every logit is NaN."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("nan-head") / "model"
    shutil.copytree(tiny_model_dir, folder)
    state = load_file(folder / "model.safetensors")
    state["lm_head.weight"][:] = float("nan")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize(
    "suite, match",
    [
        ("mc", r"the model's scores are not finite on (\d+) of \1 choices"),
        ("probe", r"the model's scores are not finite on (\d+) of \1 choices"),
        ("refusal", r"the model's outputs are not finite on (\d+) of \1 generation steps"),
    ],
)
def test_a_model_with_nan_logits_is_refused_not_scored(
    nan_head_model_dir, tiny_model_dir, questions_file, tmp_path, capsys, suite, match
):
    """All-NaN logits would score every choice alike (acc 0.5, agreement 1.0, 'within noise')
    and decode token 0 forever: refused as measure refuses them, nothing written."""
    import re

    spec = f"mc:{questions_file}" if suite == "mc" else suite
    out = tmp_path / "e.json"
    argv = ["evaluate", "--model", str(nan_head_model_dir), "--base", str(tiny_model_dir),
            "--suite", spec, "--limit", "4", "--no-progress", "--no-cache", "--out", str(out)]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err
    assert not out.exists()
