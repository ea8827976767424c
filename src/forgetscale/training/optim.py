"""Optimizer, learning-rate schedule, and which training examples each update sees."""

from __future__ import annotations

import math

import torch
from torch import nn

from forgetscale.config import TrainConfig
from forgetscale.finetune_data import Examples


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params,
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
        )
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Learning-rate multiplier for update ``step`` (0-based): linear warm-up, then the schedule."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(
            s, warmup=config.warmup_steps, total=config.max_steps, schedule=config.schedule
        ),
    )


# data order: a pure function of (seed, step), so the data position needs no state


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Example indices of update ``step`` (0-based): consecutive slices of per-epoch permutations."""
    return stream_indices(step * batch_size, batch_size, n, seed)


def stream_indices(start: int, count: int, n: int, seed: int, salt: int = 0) -> torch.Tensor:
    """Positions ``start .. start+count-1`` of the endless stream of per-epoch permutations of
    ``range(n)`` (epoch e shuffled by seed ``seed * 100003 + e + salt``; another ``salt``
    gives another data source its own order)."""
    out: list[int] = []
    while len(out) < count:
        epoch, offset = divmod(start + len(out), n)
        generator = torch.Generator().manual_seed(seed * 100003 + epoch + salt)
        perm = torch.randperm(n, generator=generator)
        take = min(count - len(out), n - offset)
        out.extend(perm[offset : offset + take].tolist())
    return torch.tensor(out, dtype=torch.long)


def stream_used(total: int, n: int, seed: int, salt: int = 0) -> torch.Tensor:
    """The sorted distinct indices among the first ``total`` positions of that stream."""
    if total >= n:
        return torch.arange(n)
    return stream_indices(0, total, n, seed, salt).sort().values


class TrainingBatches:
    """The training examples of a run, served as ``(input_ids, labels, attention_mask)`` on the
    run's device; staged on an accelerator once when they fit (< 1 GiB)."""

    def __init__(self, examples: Examples, device: torch.device):
        self.examples = examples
        self.device = device
        mask = examples.attention_mask
        self.row_tokens = None if mask is None else mask.sum(1)
        tensors = [examples.input_ids, examples.labels] + ([] if mask is None else [mask])
        size = sum(t.numel() * t.element_size() for t in tensors)
        self.staged = None
        if device.type != "cpu" and size < 2**30:
            self.staged = Examples(
                examples.input_ids.to(device),
                examples.labels.to(device),
                None if mask is None else mask.to(device),
            )

    def __len__(self) -> int:
        return len(self.examples)

    def get(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.staged is not None:
            part = self.staged.select(index.to(self.device))
            return part.input_ids, part.labels, part.attention_mask
        part = self.examples.select(index)
        mask = part.attention_mask
        return (
            part.input_ids.to(self.device),
            part.labels.to(self.device),
            None if mask is None else mask.to(self.device),
        )

    def tokens(self, index: torch.Tensor, block_size: int) -> int:
        """Training tokens in the examples ``index`` (padding excluded)."""
        if self.row_tokens is None:
            return len(index) * block_size
        return int(self.row_tokens[index].sum())
