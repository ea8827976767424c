"""What several subcommands share: argument groups (model, corpus), the argparse
types every numeric option goes through, JSON output and warning handling.

Every numeric option is parsed by :func:`positive_int`, :func:`nonneg_int`,
:func:`int_at_least` or :func:`finite_float`, so an out-of-range or non-finite
number is refused by argparse (exit code 2, naming the option) before any work.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
