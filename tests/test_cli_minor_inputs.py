"""Small bad inputs, each one line and exit 2: a LoRA rank above a layer's width, a
reference top-k beyond the vocabulary (named as the config names it), a reference given as a
folder, a refusal record that does not say whether it is harmful."""

from __future__ import annotations

from helpers import one_line_error


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
