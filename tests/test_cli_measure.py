"""`forgetscale reference` / `measure` from the command line, and their user errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import one_line_error

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


# ------------------------------------------------------------------------------------------
# outputs: never an input, checked before any work, nothing half-written


def test_reference_out_that_is_an_input_is_refused(tiny_model_dir, general_jsonl, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(general_jsonl.read_bytes())
    weights = tiny_model_dir / "model.safetensors"
    before = weights.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(corpus)
    base = ["reference", "--model", str(tiny_model_dir), "--data", str(corpus)]
    for out in (corpus, link):
        one_line_error(capsys, [*base, "--out", str(out)], "is the input given to --data")
    one_line_error(capsys, [*base, "--out", str(weights)], "inside the input folder")
    assert corpus.read_bytes() == general_jsonl.read_bytes()
    assert weights.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["corpus.jsonl", "link.jsonl"]


def test_reference_on_a_full_disk_is_one_line_and_leaves_nothing(
    tiny_model_dir, general_jsonl, tmp_path, capsys, monkeypatch
):
    from filesystems import full_disk

    import forgetscale.outputs
    import forgetscale.reference

    def no_base_pass(*args, **kwargs):
        raise AssertionError("the base pass ran though its file cannot be written")

    with full_disk(tmp_path / "full") as folder:
        out = folder / "r.safetensors"
        argv = ["reference", "--model", str(tiny_model_dir), "--data", str(general_jsonl),
                "--block-size", "64", "--top-k", "16", "--no-progress", "--out", str(out)]  # fmt: skip
        with monkeypatch.context() as m:  # the size is known before the base pass
            m.setattr(forgetscale.reference, "build_reference", no_base_pass)
            one_line_error(capsys, argv, f"cannot write --out {out}: it needs about")
        # a disk that fills up while the reference is built: the write fails cleanly
        monkeypatch.setattr(forgetscale.outputs, "check_space", lambda *a, **k: None)
        one_line_error(capsys, argv, f"cannot write reference {out}: the disk is full")
        assert os.listdir(folder) == ["filler"]


def test_reference_into_a_read_only_folder_fails_before_any_work(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    from filesystems import readonly_folder

    import forgetscale.corpus

    def no_work(*args, **kwargs):
        raise AssertionError("the corpus was read before the output was checked")

    monkeypatch.setattr(forgetscale.corpus, "load_corpus", no_work)
    with readonly_folder(tmp_path / "ro") as folder:
        out = folder / "r.safetensors"
        argv = ["reference", "--model", str(tiny_model_dir), "--out", str(out)]
        one_line_error(capsys, argv, f"cannot write --out {out}")


# ------------------------------------------------------------------------------------------
# numeric options: refused by argparse, naming the option, before any work


def argparse_error(capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and match in err, err
    return err


@pytest.mark.parametrize(
    "option, value, rule",
    [
        ("--batch-size", "-1", "must be a positive integer, got -1"),
        ("--batch-size", "0", "must be a positive integer, got 0"),
        ("--batch-size", "inf", "must be a positive integer, got 'inf'"),
        ("--batch-size", "2.5", "must be a positive integer, got '2.5'"),
        ("--block-size", "1", "must be an integer of at least 2, got 1"),
        ("--block-size", "-64", "must be an integer of at least 2, got -64"),
        ("--top-k", "0", "must be a positive integer, got 0"),
        ("--top-k", "-5", "must be a positive integer, got -5"),
        ("--max-blocks", "0", "must be a positive integer, got 0"),
        ("--max-blocks", "nan", "must be a positive integer, got 'nan'"),
    ],
)
def test_reference_numeric_options_are_checked(
    tiny_model_dir, general_jsonl, tmp_path, capsys, option, value, rule
):
    """``--batch-size -1`` used to write a reference of uninitialised memory and exit 0."""
    out = tmp_path / "r.safetensors"
    argv = ["reference", "--model", str(tiny_model_dir), "--data", str(general_jsonl),
            "--out", str(out), option, value]  # fmt: skip
    argparse_error(capsys, argv, f"argument {option}: {rule}")
    assert not out.exists()


@pytest.mark.parametrize(
    "option, value, rule",
    [
        ("--batch-size", "-2", "must be a positive integer, got -2"),
        ("--max-blocks", "-3", "must be a positive integer, got -3"),
        ("--max-blocks", "0", "must be a positive integer, got 0"),
        ("--show", "-1", "must be an integer >= 0, got -1"),
        ("--show", "1e9", "must be an integer >= 0, got '1e9'"),
    ],
)
def test_measure_numeric_options_are_checked(
    tiny_model_dir, tiny_reference, capsys, option, value, rule
):
    argv = ["measure", "--model", str(tiny_model_dir), "--reference", str(tiny_reference),
            option, value]  # fmt: skip
    argparse_error(capsys, argv, f"argument {option}: {rule}")


def test_top_k_beyond_the_vocabulary_is_refused(tiny_model_dir, general_jsonl, tmp_path, capsys):
    out = tmp_path / "r.safetensors"
    argv = ["reference", "--model", str(tiny_model_dir), "--data", str(general_jsonl),
            "--block-size", "64", "--top-k", "100000", "--out", str(out)]  # fmt: skip
    one_line_error(capsys, argv, "--top-k must be between 1 and the vocabulary size 320")
    assert not out.exists()


# ------------------------------------------------------------------------------------------
# devices, damaged references, broken models


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps", "tpu", "meta"])
def test_a_device_this_machine_lacks_is_one_line(
    tiny_model_dir, tiny_reference, general_jsonl, tmp_path, capsys, device
):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        if device == "cuda" or torch.cuda.device_count() > 7:
            pytest.skip("this machine has that CUDA device")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    measure = ["measure", "--model", str(tiny_model_dir), "--reference", str(tiny_reference)]
    reference = ["reference", "--model", str(tiny_model_dir), "--data", str(general_jsonl),
                 "--out", str(tmp_path / "r.safetensors")]  # fmt: skip
    for argv in (measure, reference):
        one_line_error(capsys, [*argv, "--device", device], device)
    assert not (tmp_path / "r.safetensors").exists()


def test_a_damaged_reference_is_not_measured(tiny_model_dir, tiny_reference, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tiny_reference), framework="pt") as fh:
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        metadata = fh.metadata()
    tensors["topk_ids"][0, 0, 0] = 10_000
    bad = save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    assert bad is None
    argv = [
        "measure",
        "--model",
        str(tiny_model_dir),
        "--reference",
        str(tmp_path / "bad.safetensors"),
    ]
    one_line_error(capsys, argv, "is damaged: topk_ids holds token id 10000, outside [0, 320)")
    save_file(tensors, str(tmp_path / "nofp.safetensors"), metadata={"format": metadata["format"]})
    argv[-1] = str(tmp_path / "nofp.safetensors")
    one_line_error(capsys, argv, "has no fingerprint in its header")


@pytest.fixture(scope="module")
def nan_model_dir(tiny_model_dir, tmp_path_factory):
    """A copy of the tiny model whose output head is NaN (a broken fine-tune)."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("nan-model") / "model"
    shutil.copytree(tiny_model_dir, folder)
    state = load_file(folder / "model.safetensors")
    state["lm_head.weight"][:] = float("nan")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_a_model_with_non_finite_outputs_is_one_line(nan_model_dir, tiny_reference, capsys):
    argv = ["measure", "--model", str(nan_model_dir), "--reference", str(tiny_reference)]
    one_line_error(capsys, [*argv, "--json"], "the model's outputs are not finite")
    capsys.readouterr()
    # the precision warning of bfloat16 is held back: the error line comes alone
    err = one_line_error(capsys, [*argv, "--dtype", "bfloat16", "--no-progress"], "not finite")
    assert "warning" not in err


def test_a_base_model_with_non_finite_outputs_builds_no_reference(
    nan_model_dir, general_jsonl, tmp_path, capsys
):
    out = tmp_path / "r.safetensors"
    argv = ["reference", "--model", str(nan_model_dir), "--data", str(general_jsonl),
            "--block-size", "64", "--top-k", "4", "--no-progress", "--out", str(out)]  # fmt: skip
    err = one_line_error(capsys, argv, "the base model's outputs are not finite")
    assert os.listdir(tmp_path) == []
    # every position is broken, and each is counted once: "on N of N positions"
    assert re.search(r"not finite on (\d+) of \1 positions", err), err


def test_measure_json_is_strict_json(tiny_model_dir, tiny_lora_dir, tiny_reference, capsys):
    capsys.readouterr()
    argv = ["measure", "--model", str(tiny_model_dir), "--adapter", str(tiny_lora_dir),
            "--reference", str(tiny_reference), "--json", "--show", "2"]  # fmt: skip
    assert main(argv) == 0

    def no_constants(name):
        raise AssertionError(f"invalid JSON constant {name}")

    result = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert len(result["most_forgotten"]) == 2


def test_json_helpers_turn_non_finite_numbers_into_null():
    import math

    import numpy as np

    from forgetscale.outputs import dumps

    text = dumps({"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": np.float64("nan"),
                       "d": (np.int64(3),), "e": "nan"})  # fmt: skip
    assert json.loads(text) == {"a": None, "b": [None, None, 1.5], "c": None, "d": [3], "e": "nan"}


class _RunsCode:
    """Unpickling this runs a command: it leaves a marker file where a pickle was loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["measure", "evaluate"])
def test_a_pickled_adapter_beside_other_safetensors_is_never_loaded(
    tiny_model_dir, tiny_lora_dir, tiny_reference, tmp_path, capsys, command
):
    """PEFT loads adapter_model.bin (a pickle) whenever adapter_model.safetensors is missing,
    whatever other .safetensors files lie beside it: such a folder is refused before PEFT."""
    import pickle
    import shutil

    folder = tmp_path / "adapter"
    shutil.copytree(tiny_lora_dir, folder)
    (folder / "adapter_model.safetensors").rename(folder / "unrelated.safetensors")
    marker = tmp_path / "unpickled"
    with open(folder / "adapter_model.bin", "wb") as fh:
        pickle.dump({"w": _RunsCode(marker)}, fh)
    rest = (["--reference", str(tiny_reference)] if command == "measure"
            else ["--suite", "probe", "--limit", "2", "--no-cache"])  # fmt: skip
    argv = [command, "--model", str(tiny_model_dir), "--adapter", str(folder), *rest]
    err = one_line_error(capsys, argv, f"adapter folder {folder} has no adapter_model.safetensors")
    assert "pickle format (adapter_model.bin)" in err and "convert them to safetensors" in err
    assert not marker.exists()
    (folder / "adapter_model.bin").unlink()
    one_line_error(capsys, argv, "has no adapter_model.safetensors (the file PEFT's")
