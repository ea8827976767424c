"""forgetscale reference: run the base model once over the forgetting corpus and cache it."""

from __future__ import annotations

import argparse

from forgetscale.commands._common import (
    add_corpus_arguments,
    add_model_arguments,
    deferred_warnings,
    int_at_least,
    positive_int,
)

NAME = "reference"
HELP = "cache the base model's predictions on a forgetting corpus"
DESCRIPTION = """\
Run the base model M once over the forgetting corpus and store, per predicted
position, its top-1 token (the target of the paper's forgetting loss), its top-K
(token, log-prob) pairs and the remaining tail mass, with a fingerprint of model,
tokenizer, corpus, block size and K. The file (safetensors) is what `measure`,
`train` and the training callback compare fine-tuned models against.

example:
  forgetscale reference --model smollm2-135m --data pydoc --out pydoc.ref.safetensors
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_corpus_arguments(parser)
    parser.add_argument(
        "--block-size",
        type=int_at_least(2),
        default=512,
        help="tokens per block; the paper uses 512 (default: %(default)s)",
    )
    parser.add_argument(
        "--top-k",
        type=positive_int,
        default=64,
        help="base tokens kept per position for the soft metrics; the rest is one lumped "
        "tail (default: %(default)s)",
    )
    parser.add_argument(
        "--max-blocks",
        type=positive_int,
        help="use only the first N blocks of the corpus (a quicker, coarser reference)",
    )
    parser.add_argument("--out", required=True, help="file to write (.safetensors)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from forgetscale.corpus import check_split, load_corpus, pack_documents
    from forgetscale.errors import UserError
    from forgetscale.models import load_model, max_context, output_vocab_size, resolve_device
    from forgetscale.outputs import check_output, check_space
    from forgetscale.reference import ReferenceCache, build_reference

    # before any work: where the result goes, and the device it is computed on
    check_split(args.data, args.split, option="--split")
    out = check_output(
        args.out,
        inputs=[(args.data, "--data"), (args.model, "--model")],
        what="--out",
        kind="reference",
    )
    resolve_device(args.device)
    with deferred_warnings():
        corpus = load_corpus(args.data, text_field=args.text_field, split=args.split)
        loaded = load_model(
            args.model,
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
            device=args.device,
        )
        context = max_context(loaded.model)
        if context is not None and args.block_size > context:
            raise UserError(
                f"--block-size {args.block_size} exceeds the model's context of {context} tokens"
            )
        blocks = pack_documents(corpus.documents, loaded.tokenizer, args.block_size)
        if args.max_blocks is not None:
            blocks = blocks[: args.max_blocks]
        vocab = output_vocab_size(loaded.model)
        if args.top_k > vocab:
            raise UserError(
                f"--top-k must be between 1 and the vocabulary size {vocab}, got {args.top_k}"
            )
        size = ReferenceCache.file_size(blocks.shape[0], blocks.shape[1], args.top_k)
        check_space(out, size + (1 << 16))  # before the base pass, not after it
        cache = build_reference(
            loaded.model,
            loaded.tokenizer,
            blocks,
            top_k=args.top_k,
            batch_size=args.batch_size,
            model_name=args.model,
            corpus_source=args.data,
            corpus_sha256=corpus.sha256,
            progress=not args.no_progress,
        )
        cache.save(out)
    print(f"wrote {out}: {cache.describe()}")
    print(
        f"base model on its own predictions: L_f = {cache.base_forgetting_loss:.4f} nats, "
        f"entropy = {cache.base_entropy:.4f} nats"
    )
    return 0
