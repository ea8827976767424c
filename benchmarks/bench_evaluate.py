"""Multiple-choice scoring: forgetscale's scorer against lm-eval's HF model, same items, same rule.

    python benchmarks/bench_evaluate.py [--model smollm2-135m] [--set phrases|probe] [--items 278]

Two item sets, written as a local lm-eval task (a JSONL data file and a task YAML):
- probe:   the built-in cloze probe (278 questions x 4 one-word choices; most choices
           are one token, where lm-eval's HF model already runs each context once);
- phrases: ARC-like, multi-token choices: sentences of the same documentation with
           their last four words as the right choice and the last four words of three
           other sentences as distractors (seeded).
Three runs on the same
loaded model, each timed around the scoring call only (the task index is built
once, outside the timings):

- lm-eval:     lm_eval.simple_evaluate with lm_eval.models.huggingface.HFLM(pretrained=model)
- ours/lm-eval: lm_eval.simple_evaluate with our model bridge (forgetscale.downstream.lmeval),
               lm-eval builds the requests and computes acc/acc_norm, our scorer supplies
               the log-likelihoods
- ours:        forgetscale's MultipleChoiceSuite.run (the `forgetscale evaluate` path)

Both scorers see the same number of choices per forward pass: HFLM's batch size
is ours (questions per pass) times the mean number of choices. Repeats are
interleaved and the best of each is reported, as wall time and as CPU time of
this process (steadier on a shared machine). Prints acc and acc_norm of each
(they must be equal: the same scoring rule), the largest per-choice
log-likelihood difference, the times and the ratio lm-eval / ours.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch


def cpu_name() -> str:
    from forgetscale.environment import cpu_name as name

    return f"{name()} ({os.cpu_count()} cores)"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def phrase_items(n: int):
    """ARC-like items with multi-token choices from CPython's documentation (deterministic)."""
    import random

    from forgetscale.corpus import load_documents
    from forgetscale.downstream.multiple_choice import MCItem
    from forgetscale.downstream.probe import _PLAIN, _prose_sentences

    sentences = []
    for sentence in _prose_sentences(load_documents("pydoc")):
        words = sentence[:-1].split()
        if _PLAIN.fullmatch(sentence) and 10 <= len(words) <= 30 and sentence not in sentences:
            sentences.append(sentence)
    endings = [" ".join(s[:-1].split()[-4:]) for s in sentences]
    rng = random.Random(0)
    items = []
    for i, sentence in enumerate(sentences[:n]):
        others = rng.sample([e for j, e in enumerate(endings) if j != i and e != endings[i]], 3)
        choices = [endings[i], *others]
        rng.shuffle(choices)
        prefix = " ".join(sentence[:-1].split()[:-4])
        items.append(
            MCItem(prefix, tuple(choices), choices.index(endings[i]), template="{question}")
        )
    return items


def write_task(folder: Path, items) -> Path:
    data = folder / "bench_mc.jsonl"
    with data.open("w") as fh:
        for item in items:
            record = {"context": item.context, "choices": list(item.choices), "answer": item.answer}
            fh.write(json.dumps(record) + "\n")
    yaml = folder / "bench_mc.yaml"
    yaml.write_text(
        textwrap.dedent(f"""\
        task: bench_mc
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        output_type: multiple_choice
        test_split: test
        doc_to_text: "{{{{context}}}}"
        doc_to_target: "{{{{answer}}}}"
        doc_to_choice: "{{{{choices}}}}"
        metric_list:
          - metric: acc
          - metric: acc_norm
        """)
    )
    return yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", choices=["phrases", "probe"], default="phrases")
    parser.add_argument("--items", type=int, default=278, help="first N questions")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per forward pass")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from forgetscale.downstream import SuiteOptions
    from forgetscale.downstream.lmeval import load_tasks, make_lm
    from forgetscale.downstream.multiple_choice import MultipleChoiceSuite
    from forgetscale.downstream.probe import load_probe
    from forgetscale.models import load_model

    for name in ("lm_eval", "datasets"):
        import logging

        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()

    items = load_probe()[0][: args.items] if args.set == "probe" else phrase_items(args.items)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    mean_choices = float(np.mean([len(it.choices) for it in items]))
    hf_batch = max(1, round(args.batch_size * mean_choices))
    with tempfile.TemporaryDirectory() as tmp:
        manager, tasks = load_tasks(str(write_task(Path(tmp), items)))
        task_objs = [obj for _, obj in tasks]

        def via_lm_eval(lm):
            out = lm_eval.simple_evaluate(
                model=lm, tasks=task_objs, task_manager=manager, log_samples=True,
                bootstrap_iters=0, verbosity="ERROR",
            )  # fmt: skip
            samples = sorted(out["samples"]["bench_mc"], key=lambda s: s["doc_id"])
            lls = [[r[0] for r in s["filtered_resps"]] for s in samples]
            res = out["results"]["bench_mc"]
            return res["acc,none"], res["acc_norm,none"], lls

        suite = MultipleChoiceSuite("bench", items, "probe", SuiteOptions())

        def ours_direct():
            records = suite.run(model, tokenizer, device=device, batch_size=args.batch_size)
            acc = float(np.mean([r["acc"] for r in records]))
            acc_norm = float(np.mean([r["acc_norm"] for r in records]))
            return acc, acc_norm, [r["ll"] for r in records]

        hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=hf_batch, device=str(device))
        bridge = make_lm(model, tokenizer, batch_size=args.batch_size, device=device)
        runs = {
            "lm-eval HFLM": lambda: via_lm_eval(hflm),
            "ours via lm-eval": lambda: via_lm_eval(bridge),
            "ours": ours_direct,
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        results = {}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                _sync()
                start, start_cpu = time.perf_counter(), time.process_time()
                results[name] = fn()
                _sync()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)

    print(
        f"model   {args.model} ({args.dtype}) on {device}; {cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name()}"
    )
    print(
        f"threads {torch.get_num_threads()}; torch {torch.__version__}; lm-eval {lm_eval.__version__}"
    )
    print(
        f"items   {len(items)} {args.set} questions, {sum(len(i.choices) for i in items)} choices; "
        f"ours {args.batch_size} questions/pass, HFLM {hf_batch} choices/pass"
    )
    print()
    ref = results["lm-eval HFLM"]
    print(
        f"{'scorer':<18} {'acc':>7} {'acc_norm':>9} {'max |dll|':>10} "
        f"{'wall s':>7} {'ratio':>6} {'cpu s':>7} {'ratio':>6}"
    )
    theirs_wall, theirs_cpu = min(times["lm-eval HFLM"]), min(cpu["lm-eval HFLM"])
    for name, (acc, acc_norm, lls) in results.items():
        diff = max(
            abs(a - b) for x, y in zip(lls, ref[2], strict=True) for a, b in zip(x, y, strict=True)
        )
        wall, used = min(times[name]), min(cpu[name])
        print(
            f"{name:<18} {acc:>7.4f} {acc_norm:>9.4f} {diff:>10.2e} "
            f"{wall:>7.2f} {theirs_wall / wall:>5.2f}x {used:>7.2f} {theirs_cpu / used:>5.2f}x"
        )
    same = all(r[0] == ref[0] and r[1] == ref[1] for r in results.values())
    print()
    print(f"same acc and acc_norm: {'yes' if same else 'NO'}")
    print(
        f"lm-eval / ours (direct): {theirs_wall / min(times['ours']):.2f}x wall, "
        f"{theirs_cpu / min(cpu['ours']):.2f}x CPU"
    )


if __name__ == "__main__":
    main()
