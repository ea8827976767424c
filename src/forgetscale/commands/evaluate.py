"""forgetscale evaluate: what the fine-tune forgot downstream — knowledge, refusals, generations."""

from __future__ import annotations

import argparse
import sys
import textwrap

from forgetscale.commands._common import add_model_arguments, nonneg_int, positive_int

NAME = "evaluate"
HELP = "downstream suites (multiple choice, refusals, generations), base vs fine-tuned"
DESCRIPTION = """\
Run downstream suites on a fine-tuned model beside its base: multiple-choice
knowledge (acc, acc_norm and agreement with the base's choice), refusal of
harmful requests and over-refusal of benign ones, and greedy generations side
by side. Every rate comes with its n and a 95% Wilson interval; every change
with a paired-bootstrap 95% interval, and a change whose interval holds 0 is
reported as within the noise. The base side is computed once per base model and
suite and cached with a fingerprint.

suites (--suite, repeatable; --list-suites describes them):
  probe                   built-in cloze probe on CPython's documentation (offline)
  mc:FILE.jsonl           your questions: {"question", "choices", "answer"?} per line
  lm-eval:TASK            an lm-evaluation-harness multiple-choice task, or a task YAML
                          (pip install "forgetscale[lm-eval]")
  refusal[:FILE.jsonl]    built-in 60 harmful + 60 benign requests, or {"prompt", "harmful"}
  generations[:FILE.jsonl] greedy answers side by side (built-in prompts, or {"prompt"})

scoring rule (multiple choice, as lm-eval scores ARC): the summed log-likelihood
of " choice" after the context; acc = argmax, acc_norm = argmax of the score
divided by the choice's length in characters.

examples:
  forgetscale evaluate --adapter ./lora --suite probe --suite refusal
  forgetscale evaluate --model ./full-finetune --base smollm2-135m --suite generations
  forgetscale evaluate --adapter ./lora --suite lm-eval:arc_challenge --json --out arc.json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, adapter=True)
    for action in parser._actions:  # the shared --batch-size means something else here
        if action.dest == "batch_size":
            action.default = 8
            action.help = "questions (contexts) or prompts per forward pass (default: %(default)s)"
    parser.add_argument(
        "--base",
        help="for a fully fine-tuned --model: the base model to compare with (with --adapter "
        "the base is --model itself)",
    )
    suites = parser.add_argument_group("suites")
    suites.add_argument(
        "--suite", action="append", default=[], metavar="SUITE", help="a suite to run (repeatable)"
    )
    suites.add_argument("--list-suites", action="store_true", help="list the suites and exit")
    suites.add_argument(
        "--judge",
        default="keyword",
        help="refusal judge: keyword (phrase list) or classifier:MODEL[@LABEL] (a "
        "text-classification model) (default: %(default)s)",
    )
    suites.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=64,
        help="tokens generated per prompt (default: %(default)s)",
    )
    suites.add_argument("--limit", type=positive_int, help="only the first N items of each suite")
    suites.add_argument(
        "--lm-eval-include",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of lm-eval task YAML files (repeatable)",
    )
    cache = parser.add_argument_group("base-side cache")
    cache.add_argument(
        "--cache-dir", help="where base-side results are cached (default: user cache)"
    )
    cache.add_argument(
        "--no-cache", action="store_true", help="recompute the base side, cache nothing"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    out.add_argument("--out", metavar="FILE", help="also write the JSON report to FILE")
    out.add_argument(
        "--generations-out",
        metavar="FILE",
        help="write the generations (refusal and generations suites) side by side as JSONL",
    )
    out.add_argument(
        "--show",
        type=nonneg_int,
        default=3,
        metavar="N",
        help="show N changed items per suite (default: 3)",
    )
    out.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _list_suites() -> int:
    from forgetscale.downstream import suite_entries

    for entry in suite_entries():
        print(f"{entry.example:<26} {entry.help}")
    return 0


def run(args: argparse.Namespace) -> int:
    from forgetscale.errors import UserError

    if args.list_suites:
        return _list_suites()
    if not args.suite:
        raise UserError("give at least one --suite (see --list-suites)")
    import warnings

    from forgetscale.downstream import SuiteOptions, evaluate
    from forgetscale.downstream.registry import split_spec
    from forgetscale.outputs import atomic_write, check_folder, check_output, dumps

    # library deprecation notices (transformers/peft/lm-eval) are not the user's business
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if not getattr(args, "verbose", False):  # lm-eval logs task-config notices as warnings
        import logging

        logging.getLogger("lm_eval").setLevel(logging.ERROR)

    # every file this command reads: a suite's questions (mc:q.jsonl) included
    suite_files = [(arg, f"--suite {spec}") for spec in args.suite for arg in [split_spec(spec)[1]]]
    inputs = [
        (args.model, "--model"),
        (args.adapter, "--adapter"),
        (args.base, "--base"),
        (args.judge, "--judge"),
        *[(path, flag) for path, flag in suite_files if path],
        *[(path, "--lm-eval-include") for path in args.lm_eval_include],
    ]
    inputs = [(path, flag) for path, flag in inputs if path]
    if args.out:
        check_output(args.out, inputs=inputs, what="--out", kind="evaluate")
    if args.generations_out:
        if args.out and _same_path(args.out, args.generations_out):
            raise UserError("--out and --generations-out are the same file; give two names")
        check_output(
            args.generations_out, inputs=inputs, what="--generations-out", kind="generations"
        )
    if args.cache_dir and not args.no_cache:
        check_folder(args.cache_dir, what="--cache-dir")
    options = SuiteOptions(
        judge=args.judge,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        lm_eval_include=tuple(args.lm_eval_include),
    )
    results = evaluate(
        args.model,
        args.suite,
        adapter=args.adapter,
        base=args.base,
        options=options,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        trust_remote_code=args.trust_remote_code,
        progress=not args.no_progress and not args.json,
    )
    report = {
        "model": args.model,
        "adapter": args.adapter,
        "base": args.base or (args.model if args.adapter else None),
        "suites": [r.as_dict() for r in results],
    }
    if args.out:
        atomic_write(args.out, dumps(report, indent=2) + "\n", what="--out")
    if args.generations_out:
        lines = [
            dumps({"suite": r.name, **row}, ensure_ascii=False) + "\n"
            for r in results
            for row in r.side_by_side()
        ]
        atomic_write(args.generations_out, "".join(lines), what="--generations-out")
    if args.json:
        print(dumps(report))
        return 0
    _print_tables(args, results)
    return 0


def _same_path(a: str, b: str) -> bool:
    import os

    return os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b))


def _fmt_rate(rate) -> str:
    return f"{rate.value:.3f} [{rate.ci_low:.3f}, {rate.ci_high:.3f}]"


def _print_tables(args: argparse.Namespace, results) -> None:
    model = args.model + (f" + adapter {args.adapter}" if args.adapter else "")
    base = args.base or (f"{args.model} without the adapter" if args.adapter else None)
    print(f"model  {model}")
    print(f"base   {base}" if base else "base   (none given: the model alone)")
    for result in results:
        print()
        cached = " (base side from cache)" if result.base_cached and result.compared else ""
        print(f"{result.name}: {result.suite.describe()}{cached}")
        if not result.compared:
            print(f"  {'metric':<18} {'value [95% CI]':<24} {'n':>5}")
            for m in result.metrics:
                print(f"  {m.metric:<18} {_fmt_rate(m.tuned):<24} {m.tuned.n:>5}")
            continue
        print(
            f"  {'metric':<18} {'base [95% CI]':<24} {'tuned [95% CI]':<24} {'n':>5}   change [95% CI]"
        )
        for m in result.metrics:
            c = m.change
            verdict = "" if c.significant else "  within noise"
            print(
                f"  {m.metric:<18} {_fmt_rate(m.base):<24} {_fmt_rate(m.tuned):<24} {m.tuned.n:>5}   "
                f"{c.value:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}]{verdict}"
            )
        if args.show:
            examples = result.suite.examples(result.tuned_records, result.base_records, args.show)
            if examples:
                print("  changed items:")
                for ex in examples:
                    for key, value in ex.items():
                        text = textwrap.shorten(
                            " ".join(str(value).split()) or "''", 90, placeholder=" ..."
                        )
                        print(f"    {key:>13}: {text}")
                    print()
    sys.stdout.flush()
