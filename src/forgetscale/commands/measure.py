"""forgetscale measure: how much has a model forgotten, against a reference cache."""

from __future__ import annotations

import argparse
import textwrap

from forgetscale.commands._common import (
    add_model_arguments,
    deferred_warnings,
    nonneg_int,
    positive_int,
)
from forgetscale.outputs import dumps

NAME = "measure"
HELP = "forgetting loss, KL and agreement of a model against a reference"
DESCRIPTION = """\
Run a (fine-tuned) model over the reference's token blocks and report the
paper's forgetting loss L_f (cross-entropy against the base model's top-1
token), the soft forgetting loss, KL(base || model), the base entropy, top-1
agreement with the base and the token count, with the base model's own value
(step 0) beside L_f, and the blocks that were forgotten most.

examples:
  forgetscale measure --model ./my-finetune --reference pydoc.ref.safetensors
  forgetscale measure --model smollm2-135m --adapter ./lora --reference pydoc.ref.safetensors --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, adapter=True)
    parser.add_argument("--reference", required=True, help="file from `forgetscale reference`")
    parser.add_argument(
        "--max-blocks",
        type=positive_int,
        metavar="N",
        help="measure only the first N blocks of the reference",
    )
    parser.add_argument(
        "--show",
        type=nonneg_int,
        default=3,
        metavar="N",
        help="show the N most-forgotten blocks (largest KL) with their text (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (forgetting_loss, forgetting_loss_soft, kl, base_entropy, "
        "agreement, tokens, reference, ...)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from forgetscale.errors import UserError
    from forgetscale.metrics import measure
    from forgetscale.models import resolve_device

    resolve_device(args.device)  # before any work
    with deferred_warnings():
        try:
            result = measure(
                args.model,
                args.reference,
                adapter=args.adapter,
                dtype=args.dtype,
                batch_size=args.batch_size,
                max_blocks=args.max_blocks,
                report_blocks=args.show,
                trust_remote_code=args.trust_remote_code,
                device=args.device,
                progress=not args.no_progress and not args.json,
            )
        except FloatingPointError as exc:
            raise UserError(
                f"the model's outputs are not finite on the reference's blocks ({exc}); "
                "its weights may be broken, or bfloat16 may overflow: try --dtype float32"
            ) from exc
    if args.json:
        print(dumps(result.as_dict()))
        return 0
    from forgetscale.metrics import hard_below_base_note

    print(f"model      {args.model}" + (f" + adapter {args.adapter}" if args.adapter else ""))
    print(f"reference  {args.reference} ({result.tokens:,} predicted tokens)")
    print()
    delta = result.forgetting_loss - result.base_forgetting_loss
    rows = [
        ("forgetting loss L_f (hard)", result.forgetting_loss, f"base {result.base_forgetting_loss:.4f}, {delta:+.4f}"),
        ("forgetting loss (soft)", result.forgetting_loss_soft, f"base {result.base_entropy:.4f}"),
        ("KL(base || model)", result.kl, "base 0"),
        ("base entropy", result.base_entropy, ""),
        ("top-1 agreement", result.agreement, "base 1"),
    ]  # fmt: skip
    for label, value, note in rows:
        print(f"  {label:<28} {value:>9.4f}   {note}")
    print(f"  {'tokens':<28} {result.tokens:>9,}")
    note = hard_below_base_note(result.forgetting_loss, result.base_forgetting_loss, result.kl)
    if note:
        print(textwrap.fill(f"note: {note}.", 96))
    forgotten = [b for b in result.most_forgotten if b.kl > 1e-6]
    if result.most_forgotten and not forgotten:
        print("\nno block differs from the base (KL below 1e-6 on every block)")
    if forgotten:
        print("\nmost forgotten blocks (largest KL):")
        for block in forgotten:
            print(
                f"  block {block.block}: KL {block.kl:.4f}, L_f {block.forgetting_loss:.4f}, "
                f"agreement {block.agreement:.3f}"
            )
            if block.text:
                snippet = " ".join(block.text.split())[:200]
                print(textwrap.indent(textwrap.fill(snippet, 96), "    | "))
    return 0
