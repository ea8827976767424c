"""How much does running the base in bfloat16 instead of float32 move its own predictions?

    python benchmarks/precision.py [--model smollm2-135m] [--blocks 8] [--block-size 512]

Builds the reference twice on the same blocks, in float32 and in bfloat16, and
prints the share of positions whose top-1 token differs, the forgetting metrics of
the bfloat16 model against the float32 reference, and the time of each pass.
"""

from __future__ import annotations

import argparse
import time

from forgetscale.corpus import load_documents, pack_documents
from forgetscale.metrics import evaluate_forgetting
from forgetscale.models import load_model
from forgetscale.reference import build_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="pydoc")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    refs, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        loaded = load_model(args.model, dtype=dtype, device="cpu")
        blocks = pack_documents(load_documents(args.data), loaded.tokenizer, args.block_size)
        start = time.perf_counter()
        refs[dtype] = build_reference(loaded.model, loaded.tokenizer, blocks[: args.blocks],
                                      batch_size=args.batch_size, progress=False)  # fmt: skip
        seconds[dtype] = time.perf_counter() - start
    bf16_model = loaded.model
    moved = float((refs["float32"].target_ids != refs["bfloat16"].target_ids).float().mean())
    result = evaluate_forgetting(bf16_model, refs["float32"], batch_size=args.batch_size)
    print(f"{refs['float32'].positions:,} positions of {args.data}, model {args.model}")
    print(
        f"base top-1 token differs between float32 and bfloat16 on {100 * moved:.2f}% of positions"
    )
    print(f"bfloat16 base against the float32 reference: L_f {result.forgetting_loss:.4f} "
          f"(float32: {refs['float32'].base_forgetting_loss:.4f}), KL {result.kl:.4f}, "
          f"agreement {result.agreement:.4f}")  # fmt: skip
    print(f"reference pass: float32 {seconds['float32']:.1f} s, bfloat16 {seconds['bfloat16']:.1f} s, "
          f"speed-up {seconds['float32'] / seconds['bfloat16']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
