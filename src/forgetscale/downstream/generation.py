"""Greedy generation with the model's chat template, batched with a KV cache.

Prompts are wrapped in the tokenizer's chat template as one user turn (with the
generation prompt); a tokenizer without a chat template gets the plain
``"User: {prompt}\\nAssistant:"``. Batches are left-padded (so every prompt ends
at the last column and generation continues from there) and sorted by length;
``model.generate`` keeps the key/value cache. Decoding is greedy and stops at the
EOS token or after ``max_new_tokens``.

Also the ``generations`` suite: the same prompts, base vs fine-tuned, side by
side; its one metric, ``identical_to_base``, is the share of prompts whose greedy
answer did not change.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from forgetscale.downstream.registry import (
    Record,
    Suite,
    SuiteOptions,
    content_hash,
    register_suite,
)
from forgetscale.errors import UserError

PLAIN_TEMPLATE = "User: {prompt}\nAssistant:"


def chat_prompt(tokenizer: Any, prompt: str) -> str:
    """``prompt`` as one user turn in the tokenizer's chat template (or the plain fallback)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    return PLAIN_TEMPLATE.format(prompt=prompt)


def template_id(tokenizer: Any) -> str:
    """What identifies the prompt format (a hash of the chat template, or 'plain')."""
    template = getattr(tokenizer, "chat_template", None)
    return content_hash(template) if template else "plain"


@torch.inference_mode()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[str]:
    """Greedy answers to ``prompts`` (chat template, left-padded batches, KV cache)."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if device is None:
        device = next(model.parameters()).device
    encoded = [
        tokenizer.encode(chat_prompt(tokenizer, p), add_special_tokens=False) for p in prompts
    ]
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    answers: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not progress)
    watch = _FiniteLogits()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]) :] = 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=_stop_ids(model, tokenizer),
                use_cache=True,
                logits_processor=[watch],
            )
            if watch.broken:
                raise UserError(
                    f"the model's outputs are not finite on {watch.broken} of {watch.seen} "
                    "generation steps: its weights may be broken, or bfloat16 may overflow "
                    "(try --dtype float32)"
                )
            for row, i in enumerate(batch):
                answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return answers


class _FiniteLogits:
    """A logits processor that changes nothing and counts the next-token distributions
    holding a value that is not finite (greedy decoding would silently pick token 0)."""

    def __init__(self) -> None:
        self.broken = 0
        self.seen = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.seen += scores.shape[0]
        self.broken += int((~torch.isfinite(scores)).any(-1).sum())
        return scores


def _stop_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, list):
        ids.update(extra)
    return sorted(i for i in ids if i is not None)


def read_prompts(
    path: str | Path, *, fields: tuple[str, ...] = ("prompt",)
) -> list[dict[str, Any]]:
    """Records with a non-empty string ``prompt`` from a JSONL file."""
    from forgetscale.corpus import read_records

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"prompt file not found: {path}")
    if path.suffix.lower() != ".jsonl":
        raise UserError(f"prompts must come from a .jsonl file, got {path}")
    records = read_records(path)
    for number, record in enumerate(records, 1):
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{path}: record {number} needs a non-empty string field 'prompt'")
    if not records:
        raise UserError(f"{path} holds no prompts")
    return records


def shipped_records(name: str) -> list[dict[str, Any]]:
    text = resources.files("forgetscale.downstream").joinpath("data", name).read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class GenerationsSuite(Suite):
    """Greedy answers to prompts, base vs fine-tuned, side by side."""

    kind = "generations"
    metrics = ("identical_to_base",)

    def __init__(self, spec: str, prompts: list[str], source: str, options: SuiteOptions) -> None:
        super().__init__(spec)
        self.prompts = prompts[: options.limit] if options.limit else prompts
        self.source = source
        self.max_new_tokens = options.max_new_tokens

    def describe(self) -> str:
        return (
            f"{len(self.prompts)} prompts from {self.source}; greedy, chat template, "
            f"up to {self.max_new_tokens} new tokens"
        )

    def fingerprint(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "prompts_sha256": content_hash(self.prompts),
            "n": len(self.prompts),
            "max_new_tokens": self.max_new_tokens,
        }

    def run(self, model, tokenizer, *, device, batch_size, progress=False) -> list[Record]:
        answers = generate(
            model,
            tokenizer,
            self.prompts,
            max_new_tokens=self.max_new_tokens,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        return [{"response": a} for a in answers]

    def outcomes(self, records: list[Record], base: list[Record]) -> dict[str, np.ndarray]:
        same = [float(r["response"] == b["response"]) for r, b in zip(records, base, strict=True)]
        return {"identical_to_base": np.array(same)}

    def side_by_side(self, records: list[Record], base: list[Record]) -> list[dict[str, Any]]:
        return [
            {"prompt": p, "base": b["response"], "tuned": r["response"]}
            for p, r, b in zip(self.prompts, records, base, strict=True)
        ]

    def examples(self, records, base, n):
        return [row for row in self.side_by_side(records, base) if row["base"] != row["tuned"]][:n]


def _generations_suite(arg: str | None, options: SuiteOptions) -> Suite:
    if arg:
        prompts = [r["prompt"] for r in read_prompts(arg)]
        return GenerationsSuite(f"generations:{arg}", prompts, arg, options)
    prompts = [r["prompt"] for r in shipped_records("prompts.jsonl")]
    return GenerationsSuite("generations", prompts, "the built-in prompts", options)


register_suite(
    "generations",
    _generations_suite,
    help="greedy answers side by side, base vs fine-tuned (built-in 16 prompts, or a JSONL "
    'of {"prompt": ...})',
    argument="optional",
    example="generations[:FILE.jsonl]",
)
