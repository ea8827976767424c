"""What several subcommands share: argument groups (model, corpus), the argparse types
for numeric options, JSON output and warning handling, and the options of the commands
that run a sweep (``sweep``, ``study``).

Where numbers are checked: the numeric options of ``measure``, ``reference``
and ``evaluate`` (the model group included) are parsed by :func:`positive_int`,
:func:`nonneg_int`, :func:`int_at_least` or :func:`finite_float`, so argparse refuses an
out-of-range or non-finite number (exit code 2, naming the option) before any work. The
fit options of ``fit``, ``compare`` and ``predict`` are read by argparse as plain ``int``
or ``float`` and checked by :mod:`forgetscale.laws.options` (the checks the Python API
shares); ``--workers`` of ``sweep``/``study`` by the executor's options
(:mod:`forgetscale.sweep.options`); train config keys by :mod:`forgetscale.config`. Each
refuses a bad value in one line, exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------------------------------
# numeric option types


def int_at_least(low: int, what: str | None = None) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers ``>= low`` (``what`` words the rule)."""
    rule = what or f"an integer of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


positive_int = int_at_least(1, "a positive integer")
"""An argparse ``type``: an integer >= 1."""
nonneg_int = int_at_least(0, "an integer >= 0")
"""An argparse ``type``: an integer >= 0."""


def finite_float(
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """An argparse ``type`` accepting finite floats in [low, high] (ends open if asked)."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    rule = f"a finite number in {left}{low:g}, {high:g}{right}"

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text.strip()}")
        return value

    parse.__name__ = "number"
    return parse


# ------------------------------------------------------------------------------------------
# output


@contextmanager
def deferred_warnings() -> Iterator[None]:
    """Hold back warnings while a command works; show forgetscale's own only if it succeeds.

    A warning printed and then followed by an error line would make the user read two
    problems where there is one; library warnings (torch, transformers) are dropped,
    as ``-v`` shows the library logs.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    said: set[str] = set()
    for w in caught:
        if issubclass(w.category, UserWarning) and "forgetscale" in (w.filename or ""):
            if str(w.message) not in said:  # once, however many fits met it
                said.add(str(w.message))
                print(f"warning: {w.message}", file=sys.stderr)


# ------------------------------------------------------------------------------------------
# argument groups


def add_model_arguments(parser: argparse.ArgumentParser, *, adapter: bool = False) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="smollm2-135m",
        help="embedded default name (smollm2-135m), local model folder, .gguf file or hub id "
        "(default: %(default)s)",
    )
    if adapter:
        group.add_argument("--adapter", help="PEFT adapter folder to apply on top of --model")
    group.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="precision to run the model in (default: %(default)s; bfloat16 is faster on "
        "CPUs with AMX but moves the base's own top-1 token on a few percent of positions)",
    )
    group.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps (default: %(default)s)",
    )
    group.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow model code from the hub (off unless you ask)",
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=4,
        help="blocks per forward pass (default: %(default)s)",
    )


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("forgetting corpus")
    group.add_argument(
        "--data",
        default="pydoc",
        help="embedded corpus (pydoc, shakespeare), .txt file, folder of .txt files, "
        ".jsonl or .parquet file, or hf:NAME[:CONFIG] (default: %(default)s)",
    )
    group.add_argument(
        "--text-field", default="text", help="field holding the text in .jsonl/.parquet/hf data"
    )
    group.add_argument("--split", default="train", help="split of an hf: dataset")


# ------------------------------------------------------------------------------------------
# the commands that run a sweep (sweep, study)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a command that runs a sweep (``sweep``, ``study``): the executor, the dry
    run, local workers, the progress bar, config overrides, and the executors' own options
    listed when help is asked for. Read back by :func:`take_own_flags` and
    :func:`load_from_args`."""
    from forgetscale.sweep.executors import EXECUTORS

    parser.add_argument(
        "--executor",
        choices=list(EXECUTORS),
        help="where the runs run (default: the sweep file's executor.default, else local)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs (id, grid values, P, steps, status, time left) and exit",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="local executor: worker processes (default: one per GPU when there are several, "
        "else 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="--key=value",
        help="train config overrides for every run, and --EXECUTOR-OPTION=value",
    )
    original = parser.format_help

    def format_help() -> str:  # executor options are listed only when help is asked for
        parser.epilog = executor_help()
        return original()

    parser.format_help = format_help  # type: ignore[method-assign]


def executor_help() -> str:
    from forgetscale.sweep.executors import EXECUTORS, get_executor

    lines = ["executor options (flags, or the sweep file's executor: {NAME: {...}} block):"]
    for name in EXECUTORS:
        try:
            cls = get_executor(name)
        except Exception as exc:  # noqa: BLE001 - help must print whatever a module does
            lines.append(f"  {name}: unavailable ({exc})")
            continue
        for f in dataclasses.fields(cls.Options):
            flag = f.metadata.get("flag") or f"--{name}-{f.name.replace('_', '-')}"
            lines.append(f"  {flag}  ({name}) {f.metadata.get('help', '')}")
    return "\n".join(lines)


def take_own_flags(
    args: argparse.Namespace,
    items: list[str],
    switches: tuple[str, ...] = ("--dry-run", "--no-progress"),
    valued: tuple[str, ...] = ("--executor", "--workers"),
) -> list[str]:
    """Our own flags may come after the sweep file, among the overrides."""
    rest: list[str] = []
    i = 0
    while i < len(items):
        item = items[i]
        key, eq, value = item.partition("=")
        key = key.replace("_", "-")
        if key in switches:
            setattr(args, key[2:].replace("-", "_"), True)
        elif key in valued:
            if not eq:
                if i + 1 >= len(items):
                    from forgetscale.errors import UserError

                    raise UserError(f"{key} needs a value")
                value = items[i + 1]
                i += 1
            setattr(args, key[2:].replace("-", "_"), value)
        else:
            rest.append(item)
        i += 1
    return rest


def split_executor_flags(
    overrides: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Separate ``--EXECUTOR-OPTION`` flags (``ray_address``) from train config overrides."""
    from forgetscale.sweep.executors import EXECUTORS

    flags: dict[str, dict[str, Any]] = {}
    train: dict[str, Any] = {}
    for key, value in overrides.items():
        owner = next((n for n in EXECUTORS if key.startswith(n + "_")), None)
        if owner is None:
            train[key] = value
        else:
            flags.setdefault(owner, {})[key[len(owner) + 1 :]] = value
    return flags, train


def load_from_args(
    args: argparse.Namespace,
    path: str | Path,
    rest: list[str],
    *,
    extra_keys: tuple[str, ...] = (),
    store: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The sweep of ``path`` with the command line's overrides (``rest``), and the flags of its
    executor; ``store`` moves the sweep's store. Shared by ``sweep`` and ``study``."""
    from forgetscale.config import parse_overrides
    from forgetscale.errors import UserError
    from forgetscale.sweep.executors import EXECUTORS
    from forgetscale.sweep.spec import load_sweep

    if args.executor is not None and args.executor not in EXECUTORS:
        raise UserError(f"unknown executor {args.executor!r}; one of: {', '.join(EXECUTORS)}")
    by_executor, train_overrides = split_executor_flags(parse_overrides(rest))
    if store is not None:
        train_overrides["store"] = store
    sweep = load_sweep(path, train_overrides, executor=args.executor, extra_keys=extra_keys)
    for name, given in by_executor.items():
        if name != sweep.executor:
            key = next(iter(given))
            raise UserError(
                f"--{name}-{key.replace('_', '-')} is an option of --executor {name} "
                f"(this sweep runs on {sweep.executor})"
            )
    flags = dict(by_executor.get(sweep.executor, {}))
    if args.workers is not None:
        try:
            flags["workers"] = int(args.workers)
        except ValueError:
            raise UserError(f"--workers must be an integer, got {args.workers!r}") from None
    return sweep, flags
