"""`forgetscale reference` / `measure` from the command line, and their user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from forgetscale.cli import main


@pytest.fixture(scope="module")
def tiny_reference(tiny_model_dir, general_jsonl, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "general.ref.safetensors"
    code = main([
        "reference", "--model", str(tiny_model_dir), "--data", str(general_jsonl),
        "--block-size", "64", "--top-k", "16", "--out", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    return out


def one_line_error(capsys, argv, match):
    """Run the CLI; expect exit code 2 and a single-line message containing ``match``."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert match in err, err
    return err


def test_measure_base_gives_zero_kl_and_full_agreement(tiny_model_dir, tiny_reference, capsys):
    capsys.readouterr()
    assert (
        main(
            [
                "measure",
                "--model",
                str(tiny_model_dir),
                "--reference",
                str(tiny_reference),
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    for key in (
        "forgetting_loss",
        "forgetting_loss_soft",
        "kl",
        "base_entropy",
        "agreement",
        "tokens",
        "reference",
    ):
        assert key in result
    assert result["kl"] == pytest.approx(0, abs=1e-6)
    assert result["agreement"] == 1.0
    assert result["reference"] == str(tiny_reference)


def test_measure_with_adapter_reports_forgetting(
    tiny_model_dir, tiny_lora_dir, tiny_reference, capsys
):
    capsys.readouterr()
    argv = ["measure", "--model", str(tiny_model_dir), "--adapter", str(tiny_lora_dir),
            "--reference", str(tiny_reference), "--no-progress", "--show", "2"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "forgetting loss L_f (hard)" in out and "most forgotten blocks" in out
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kl"] > 1e-3 and result["agreement"] < 1


def test_bfloat16_model_warns_about_precision(tiny_model_dir, tiny_reference, capsys):
    capsys.readouterr()
    argv = ["measure", "--model", str(tiny_model_dir), "--reference", str(tiny_reference),
            "--dtype", "bfloat16", "--json"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "reference was built in float32" in captured.err
    assert json.loads(captured.out)["tokens"] > 0


def test_reference_from_another_tokenizer_is_refused(other_tiny_model_dir, tiny_reference, capsys):
    one_line_error(
        capsys,
        ["measure", "--model", str(other_tiny_model_dir), "--reference", str(tiny_reference)],
        "another tokenizer",
    )


def test_user_errors_are_one_line_with_exit_code_2(
    tiny_model_dir,
    other_tiny_model_dir,
    tiny_lora_dir,
    tiny_reference,
    general_jsonl,
    tmp_path,
    capsys,
):
    model = ["--model", str(tiny_model_dir)]
    out = ["--out", str(tmp_path / "r.safetensors")]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    cases = [
        (["measure", *model, "--reference", str(tmp_path / "missing.safetensors")], "reference file not found"),
        (["reference", *model, "--data", str(tmp_path / "missing.txt"), *out], "corpus not found"),
        (["reference", *model, "--data", str(empty), *out], "is empty"),
        (["reference", *model, "--data", str(short), "--block-size", "64", *out], "shorter than one block"),
        (["measure", "--model", str(other_tiny_model_dir), "--adapter", str(tiny_lora_dir),
          "--reference", str(tiny_reference)], "does not fit this model"),
        (["reference", *model, "--data", str(general_jsonl), "--block-size", "4096", *out], "exceeds the model's context"),
        (["reference", *model, "--data", str(general_jsonl), "--out", str(tmp_path / "no" / "dir" / "r.st")], "does not exist"),
        (["reference", *model, "--data", str(general_jsonl), "--out", str(tmp_path)], "is a folder"),
        (["measure", *model, "--reference", str(general_jsonl)], "could not read reference"),
        (["measure", *model, "--adapter", str(tmp_path), "--reference", str(tiny_reference)], "adapter folder not found"),
    ]  # fmt: skip
    for argv, match in cases:
        one_line_error(capsys, argv, match)


def test_subprocess_error_has_no_traceback(tiny_model_dir, tmp_path):
    """The real console entry point: one line on stderr, exit code 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "forgetscale", "measure", "--model", str(tiny_model_dir),
         "--reference", str(tmp_path / "missing.safetensors")],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"forgetscale measure: error: reference file not found: {tmp_path / 'missing.safetensors'}"
    ]
