"""Bad data files handed to any command: one line on stderr, exit 2, nothing written.

Non-UTF-8 JSONL, text fields that are not strings, and a split asked of a source that has
none are refused in words by every command that reads data (reference, train, evaluate)."""

from __future__ import annotations

import json
import re

import pytest

from forgetscale.cli import main

LATIN1 = b'{"text": "caf\xe9 au lait"}\n'


def refused(capsys, argv, pattern):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert re.search(pattern, err[0]), err
    return err[0]


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "name, content, pattern",
    [
        ("latin1.jsonl", LATIN1, r"latin1\.jsonl:1: not UTF-8 text \(invalid continuation byte"),
        ("second.jsonl", b'{"text": "ok"}\n' + LATIN1, r"second\.jsonl:2: not UTF-8 text"),
        ("number.jsonl", b'{"text": 5}\n', r"record 1: field 'text' holds a value of type int"),
        ("list.jsonl", b'{"text": "a"}\n{"text": ["b"]}\n', r"record 2: field 'text' .* list"),
    ],
)
def test_reference_data_that_is_not_text(workdir, capsys, name, content, pattern):
    (workdir / name).write_bytes(content)
    before = files_in(workdir)
    argv = ["reference", "--model", "tiny-model", "--data", name, "--out", "r.safetensors"]
    refused(capsys, argv, pattern)
    assert files_in(workdir) == before


def test_a_jsonl_file_with_a_byte_order_mark_is_read(workdir, capsys):
    text = (workdir / "general.jsonl").read_text()
    (workdir / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    argv = ["reference", "--model", "tiny-model", "--data", "bom.jsonl", "--block-size", "32",
            "--out", "r.safetensors", "--no-progress"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert (workdir / "r.safetensors").is_file()


@pytest.mark.parametrize("data", ["pydoc", "general.jsonl"])
def test_reference_split_of_a_source_without_splits(workdir, capsys, data):
    before = files_in(workdir)
    argv = ["reference", "--model", "tiny-model", "--data", data, "--split", "test",
            "--out", "r.safetensors"]  # fmt: skip
    refused(capsys, argv, rf"--split 'test' given for {data}, which has no splits")
    assert files_in(workdir) == before


@pytest.mark.parametrize(
    "override, content, pattern",
    [
        ("task_data", LATIN1, r"bad\.jsonl:1: not UTF-8 text"),
        ("forgetting_data", LATIN1, r"bad\.jsonl:1: not UTF-8 text"),
        ("task_data", b'{"text": 5}\n', r"field 'text' holds a value of type int"),
        (
            "task_data",
            b'{"prompt": 5, "response": "x"}\n',
            r"field 'prompt' holds a value of "
            "type int",
        ),
        (
            "task_data",
            b'{"messages": [{"role": "user", "content": ["a"]}, '
            b'{"role": "assistant", "content": "b"}]}\n',
            r"'messages\[\]\.content' .* list",
        ),
    ],
)
def test_train_data_that_is_not_text(workdir, capsys, override, content, pattern):
    (workdir / "bad.jsonl").write_bytes(content)
    refused(capsys, ["train", "run.yaml", f"--{override}=bad.jsonl"], pattern)


@pytest.mark.parametrize(
    "key, data", [("task_split", "task_data"), ("forgetting_split", "forgetting_data")]
)
def test_train_split_of_a_local_file_is_refused_before_any_write(workdir, capsys, key, data):
    before = files_in(workdir)
    line = refused(capsys, ["train", "run.yaml", f"--{key}=test"], rf"{key} 'test' given for")
    assert "has no splits" in line
    assert files_in(workdir) == before  # refused with the config: no store made


@pytest.mark.parametrize(
    "spec, content",
    [
        ("mc", b'{"question": "caf\xe9?", "choices": ["a", "b"], "answer": 0}\n'),
        ("refusal", b'{"prompt": "caf\xe9?", "harmful": true}\n'),
        ("generations", b'{"prompt": "caf\xe9?"}\n'),
    ],
)
def test_evaluate_question_files_that_are_not_utf8(workdir, capsys, spec, content):
    (workdir / "q.jsonl").write_bytes(content)
    argv = ["evaluate", "--model", "tiny-model", "--suite", f"{spec}:q.jsonl", "--no-cache",
            "--out", "e.json"]  # fmt: skip
    refused(capsys, argv, r"q\.jsonl:1: not UTF-8 text")
    assert not (workdir / "e.json").exists()


def test_the_records_read_are_the_strings_written(workdir):
    from pathlib import Path

    from forgetscale.corpus import load_documents

    texts = ["café", "naïve ✓", "plain"]
    path = Path("utf8.jsonl")
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    assert load_documents(str(path)) == texts


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (
            ["--workers", "100000"],
            r"--workers: workers must be at most 256 on one machine, got "
            r"100000 \(each worker is a process with its own copy of the model",
        ),
        (["--local-threads=5000"], r"threads must be at most 256 on one machine, got 5000"),
    ],
)
@pytest.mark.parametrize("command", ["sweep", "study"])
def test_local_workers_are_bounded_even_in_a_dry_run(workdir, capsys, command, argv, pattern):
    (workdir / "s.yaml").write_text("base: ./run.yaml\ngrid: {rank: [1, 2]}\n")
    before = files_in(workdir)
    refused(capsys, [command, "s.yaml", "--dry-run", *argv], pattern)
    assert files_in(workdir) == before


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (
            ["evaluate", "--model", "someorg/not-cached", "--suite", "probe"],
            r"model someorg/not-cached is not in the local Hugging Face cache and the hub cannot "
            r"be reached \(127\.0\.0\.1: .*\); give a local model folder",
        ),
        (
            [
                "reference",
                "--model",
                "tiny-model",
                "--data",
                "hf:someorg/not-cached",
                "--out",
                "r.safetensors",
            ],
            r"data set someorg/not-cached \(split train\) is not in the local cache and the "
            r"Hugging Face hub cannot be reached",
        ),
    ],
)
def test_an_unreachable_hub_fails_at_once_in_one_line(workdir, tmp_path_factory, argv, pattern):
    """Offline, huggingface_hub retries every request with back-off (tens of warning lines,
    half a minute) before it says the files are not cached: asked once, it is one line."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens on port 9
           "HF_HOME": str(tmp_path_factory.mktemp("hf-home")), "OMP_NUM_THREADS": "1"}  # fmt: skip
    env.pop("HF_HUB_OFFLINE", None)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "forgetscale", *argv], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "Retry" not in proc.stderr and not (workdir / "r.safetensors").exists()
    assert time.monotonic() - start < 120
