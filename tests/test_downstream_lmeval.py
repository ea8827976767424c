"""lm-eval tasks through our model: a local ARC-format task, the same numbers as lm-eval's HF model."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import one_line_error

from forgetscale.cli import main

lm_eval = pytest.importorskip("lm_eval")

WORDS = "list tuple dict set class def return yield lambda import module package".split()


def write_arc_task(folder: Path, n: int = 12, name: str = "arc_local") -> Path:
    """An ARC-format data file and a task YAML pointing at it (ARC's own template and metrics)."""
    rng = random.Random(0)
    data = folder / f"{name}.jsonl"
    with data.open("w") as fh:
        for i in range(n):
            k = rng.randint(3, 5)
            texts = [" ".join(rng.sample(WORDS, rng.randint(1, 3))) for _ in range(k)]
            labels = list("ABCDE"[:k])
            fh.write(json.dumps({
                "id": f"q{i}",
                "question": f"Which Python word goes with {rng.choice(WORDS)} number {i}?",
                "choices": {"text": texts, "label": labels},
                "answerKey": rng.choice(labels),
            }) + "\n")  # fmt: skip
    yaml = folder / f"{name}.yaml"
    yaml.write_text(
        textwrap.dedent(f"""\
        task: {name}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        output_type: multiple_choice
        test_split: test
        doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
        doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
        doc_to_choice: "{{{{choices.text}}}}"
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
          - metric: acc_norm
            aggregation: mean
            higher_is_better: true
        """)
    )
    return yaml


@pytest.fixture(scope="module")
def arc_task(tmp_path_factory):
    return write_arc_task(tmp_path_factory.mktemp("arc"))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_our_scorer_gives_lm_evals_numbers_on_a_local_arc_task(tiny, arc_task):
    from lm_eval.models.huggingface import HFLM

    from forgetscale.downstream import SuiteOptions, get_suite

    model, tokenizer = tiny
    suite = get_suite(f"lm-eval:{arc_task}", SuiteOptions())
    ours = suite.run(model, tokenizer, device=model.device, batch_size=4)
    theirs = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4),
        tasks=[obj for _, obj in suite.tasks],
        task_manager=suite.manager,
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = sorted(theirs["samples"]["arc_local"], key=lambda s: s["doc_id"])
    assert len(ours) == len(samples) == 12
    for record, sample in zip(ours, samples, strict=True):
        assert record["ll"] == pytest.approx([r[0] for r in sample["filtered_resps"]], abs=1e-4)
        assert record["acc"] == sample["acc"] and record["acc_norm"] == sample["acc_norm"]
    acc = sum(r["acc"] for r in ours) / len(ours)
    assert acc == pytest.approx(theirs["results"]["arc_local"]["acc,none"])


def test_cli_lm_eval_task_with_adapter(tiny_model_dir, tiny_lora_dir, arc_task, tmp_path, capsys):
    capsys.readouterr()
    argv = [
        "evaluate", "--model", str(tiny_model_dir), "--adapter", str(tiny_lora_dir),
        "--suite", "lm-eval:arc_local", "--lm-eval-include", str(arc_task.parent),
        "--cache-dir", str(tmp_path), "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    (suite,) = report["suites"]
    metrics = {m["metric"]: m for m in suite["metrics"]}
    assert set(metrics) == {"acc", "acc_norm", "agreement"}
    assert metrics["acc"]["tuned"]["n"] == 12
    assert metrics["agreement"]["base"]["value"] == 1.0
    assert main(argv) == 0  # second run: base side from the cache
    assert json.loads(capsys.readouterr().out)["suites"][0]["base_cached"] is True


def test_unknown_lm_eval_task_is_one_line(tiny_model_dir, capsys):
    one_line_error(
        capsys,
        ["evaluate", "--model", str(tiny_model_dir), "--suite", "lm-eval:no_such_task_xyz"],
        "lm-eval has no task 'no_such_task_xyz'",
    )
    one_line_error(
        capsys,
        ["evaluate", "--model", str(tiny_model_dir), "--suite", "lm-eval:/no/such/task.yaml"],
        "lm-eval task file not found",
    )


def test_generate_until_tasks_are_refused(tmp_path, tiny_model_dir, capsys):
    yaml = tmp_path / "gen_task.yaml"
    data = tmp_path / "gen.jsonl"
    data.write_text(json.dumps({"q": "hi", "a": "there"}) + "\n")
    yaml.write_text(
        f"task: gen_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: generate_until\ntest_split: test\ndoc_to_text: '{{q}}'\n"
        "doc_to_target: '{{a}}'\nmetric_list:\n  - metric: exact_match\n"
    )
    one_line_error(
        capsys,
        ["evaluate", "--model", str(tiny_model_dir), "--suite", f"lm-eval:{yaml}"],
        "multiple_choice tasks only",
    )


def test_lm_eval_not_installed_is_one_line(tiny_model_dir, tmp_path):
    """A child process in which `import lm_eval` fails, as on a machine without the extra."""
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "lm_eval" or name.startswith("lm_eval."):
                    raise ModuleNotFoundError("No module named 'lm_eval'")
        sys.meta_path.insert(0, Block())
        from forgetscale.cli import main
        sys.exit(main(["evaluate", "--model", {str(tiny_model_dir)!r}, "--suite", "lm-eval:arc_easy"]))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert 'pip install "forgetscale[lm-eval]"' in err
