"""Throughput of `measure` and `reference` against a plain transformers forward pass.

    python benchmarks/bench_measure.py [--model smollm2-135m] [--blocks 8] [--block-size 512]

For each, on the same token blocks and batches:
- measure:   forgetscale.metrics.evaluate_forgetting (hard + soft L_f, KL, agreement)
  vs. plain: model(input_ids).logits -> F.cross_entropy against the base's top-1 tokens
             (the hard forgetting loss alone, nothing kept)
- reference: forgetscale.reference.build_reference (top-1, top-K, tail mass, entropy)
  vs. plain: model(input_ids).logits -> argmax (the paper's target alone)
Repeats are interleaved (ours, plain, ours, plain, ...) and the best of each is
reported, so background load on the machine hits both alike. Also prints the
load time of the model from its converted cache.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from forgetscale.corpus import load_documents, pack_documents
from forgetscale.metrics import evaluate_forgetting
from forgetscale.models import load_model
from forgetscale.reference import build_reference


def best_tokens_per_s(fn, tokens: int, repeats: int) -> list[float]:
    return [tokens / _timed(fn) for _ in range(repeats)]


def _timed(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def cpu_name() -> str:
    from forgetscale.environment import cpu_name as name

    return f"{name()} ({os.cpu_count()} cores)"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="pydoc")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    args = parser.parse_args()

    load_model(args.model, device="cpu")  # make sure the converted cache exists first
    start = time.perf_counter()
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    load_s = time.perf_counter() - start
    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    blocks = pack_documents(load_documents(args.data), tokenizer, args.block_size)[: args.blocks]
    tokens = blocks.shape[0] * (args.block_size - 1)
    batches = [b.to(device) for b in blocks.split(args.batch_size)]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"machine: {platform.machine()} {where or ''}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; model {args.model} ({args.dtype}, {device}) "
          f"loaded in {load_s:.2f} s")  # fmt: skip
    print(
        f"{blocks.shape[0]} blocks x {args.block_size} tokens, batch {args.batch_size}, top-{args.top_k}"
    )

    reference = build_reference(model, tokenizer, blocks, top_k=args.top_k,
                                batch_size=args.batch_size, progress=False)  # fmt: skip

    @torch.inference_mode()
    def plain_hard_loss() -> float:
        total = 0.0
        start = 0
        for batch in batches:
            logits = model(input_ids=batch).logits[:, :-1].float()
            target = reference.target_ids[start : start + batch.shape[0]].to(device).long()
            total += float(F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum"))
            start += batch.shape[0]
        return total / tokens

    @torch.inference_mode()
    def plain_top1() -> None:
        for batch in batches:
            model(input_ids=batch).logits[:, :-1].float().argmax(-1)

    def ours_measure() -> None:
        evaluate_forgetting(model, reference, batch_size=args.batch_size)

    def ours_reference() -> None:
        build_reference(model, tokenizer, blocks, top_k=args.top_k,
                        batch_size=args.batch_size, progress=False)  # fmt: skip

    # same number: the plain loop computes the hard L_f we report
    ours_value = evaluate_forgetting(model, reference, batch_size=args.batch_size).forgetting_loss
    assert abs(ours_value - plain_hard_loss()) < 1e-4, "plain and ours disagree"

    for name, ours, plain in [("measure", ours_measure, plain_hard_loss),
                              ("reference", ours_reference, plain_top1)]:  # fmt: skip
        ours_rates, plain_rates = [], []
        for _ in range(args.repeats):
            ours_rates += best_tokens_per_s(ours, tokens, 1)
            plain_rates += best_tokens_per_s(plain, tokens, 1)
        o, p = max(ours_rates), max(plain_rates)
        print(f"{name:<10} ours {o:8.0f} tok/s   plain forward {p:8.0f} tok/s   ratio {o / p:.3f}")


if __name__ == "__main__":
    main()
