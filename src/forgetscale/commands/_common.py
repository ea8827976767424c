"""Argument groups shared by several subcommands (model and corpus selection)."""

from __future__ import annotations

import argparse


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
        "--batch-size", type=int, default=4, help="blocks per forward pass (default: %(default)s)"
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
