"""What each update trains on, and the KL-to-base term added to its loss.

- :class:`ReplayMixer` says which task and which replay blocks update ``step`` holds
  (:func:`forgetscale.mitigation.replay_count` of them replay blocks), as an :class:`UpdatePlan`;
  both sources are served in per-epoch permutations of their own, a pure function of
  ``(seed, step)``, so a resumed run sees what an uninterrupted one sees. With no replay the
  plan is the plain run's :func:`~forgetscale.training.optim.batch_indices`.
- :class:`MixedBatches` turns a plan into ``(input_ids, labels, attention_mask)``: the task
  rows first, then the replay rows (every replay token is a target).
- :class:`KLPenalty` is ``KL(base || model)`` on the plan's blocks of one source (task or
  replay), against a top-K reference of exactly the blocks the run will use, built once
  before the method is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forgetscale.finetune_data import IGNORE_INDEX, Examples
from forgetscale.metrics import kl_to_base
from forgetscale.mitigation import replay_blocks_before
from forgetscale.reference import ReferenceCache
from forgetscale.training.optim import TrainingBatches, stream_indices, stream_used

REPLAY_SALT = 7_777_777
"""Offsets the replay stream's permutation seeds from the task stream's."""


@dataclass(frozen=True)
class UpdatePlan:
    """The task example indices and replay block indices of one update (or micro-batch)."""

    task: torch.Tensor
    replay: torch.Tensor

    def __len__(self) -> int:
        return len(self.task) + len(self.replay)

    def micro(self, m: int, size: int) -> UpdatePlan:
        """Micro-batch ``m`` of ``size`` blocks: a slice of the task rows, then the replay rows."""
        lo, hi, n_task = m * size, (m + 1) * size, len(self.task)
        return UpdatePlan(
            self.task[min(lo, n_task) : min(hi, n_task)],
            self.replay[max(lo - n_task, 0) : max(hi - n_task, 0)],
        )


class ReplayMixer:
    """Which blocks update ``step`` holds: ``batch_size`` blocks, a ``fraction`` of them replay."""

    def __init__(self, n_task: int, n_replay: int, batch_size: int, fraction: float, seed: int):
        self.n_task, self.n_replay = n_task, n_replay
        self.batch_size, self.fraction, self.seed = batch_size, fraction, seed

    def replay_before(self, step: int) -> int:
        return replay_blocks_before(step, self.fraction, self.batch_size)

    def plan(self, step: int) -> UpdatePlan:
        r0, r1 = self.replay_before(step), self.replay_before(step + 1)
        task_start, n_task = step * self.batch_size - r0, self.batch_size - (r1 - r0)
        task = stream_indices(task_start, n_task, self.n_task, self.seed)
        if r1 == r0:
            return UpdatePlan(task, torch.zeros(0, dtype=torch.long))
        return UpdatePlan(task, stream_indices(r0, r1 - r0, self.n_replay, self.seed, REPLAY_SALT))

    def used(self, steps: int) -> UpdatePlan:
        """The distinct task and replay blocks of updates ``0 .. steps-1`` (sorted)."""
        replay = self.replay_before(steps)
        task = stream_used(steps * self.batch_size - replay, self.n_task, self.seed)
        if replay == 0:
            return UpdatePlan(task, torch.zeros(0, dtype=torch.long))
        return UpdatePlan(task, stream_used(replay, self.n_replay, self.seed, REPLAY_SALT))


def replay_examples(blocks: torch.Tensor) -> Examples:
    """Packed replay blocks as training examples: every token a target."""
    return Examples(blocks, blocks, None)


class MixedBatches:
    """The task examples and the replay blocks of a run, served by :class:`UpdatePlan`."""

    def __init__(self, task: Examples, replay: Examples | None, device: torch.device):
        self.task = TrainingBatches(task, device)
        self.replay = None if replay is None else TrainingBatches(replay, device)

    def get(self, plan: UpdatePlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        batch = self.task.get(plan.task)
        if self.replay is None or len(plan.replay) == 0:
            return batch
        replay = self.replay.get(plan.replay)
        if len(plan.task) == 0:
            return replay
        ids, labels = (torch.cat([a, b]) for a, b in zip(batch[:2], replay[:2], strict=True))
        if batch[2] is None:  # packed text on both sides: no padding anywhere
            return ids, labels, None
        return ids, labels, torch.cat([batch[2], torch.ones_like(replay[1])])

    def tokens(self, plan: UpdatePlan, block_size: int) -> tuple[int, int]:
        """Task and replay training tokens of ``plan`` (padding excluded)."""
        return self.task.tokens(plan.task, block_size), len(plan.replay) * block_size


class KLPenalty:
    """``KL(base || model)`` on one source's blocks of each update (``task`` or ``replay``).

    ``reference`` holds the base's top-K on the blocks ``rows`` of that source (the ones the
    run uses, :meth:`ReplayMixer.used`); positions are those the task loss trains on (label
    not ignored) for task blocks, every position for replay blocks.
    """

    def __init__(
        self,
        weight: float,
        data: str,
        reference: ReferenceCache,
        rows: torch.Tensor,
        n_source: int,
        targets: torch.Tensor,
        device: torch.device,
    ):
        self.weight, self.data, self.device = weight, data, device
        self.vocab = int(reference.fingerprint["vocab_size"])
        self.row_of = torch.full((n_source,), -1, dtype=torch.long)
        self.row_of[rows] = torch.arange(len(rows))
        self.ref = {
            name: getattr(reference, name).to(device)
            for name in ("topk_ids", "topk_logprobs", "tail_mass")
        }
        self.targets = targets.to(device)  # [n_source, T-1] bool: positions the KL is taken on

    def _source(self, plan: UpdatePlan) -> torch.Tensor:
        return plan.task if self.data == "task" else plan.replay

    def positions(self, plan: UpdatePlan) -> int:
        """KL positions in ``plan`` (the update's normaliser)."""
        return int(self.targets[self._source(plan).to(self.device)].sum())

    def kl_sum(self, logits: torch.Tensor, plan: UpdatePlan) -> torch.Tensor:
        """Sum of the per-position KL over the KL positions of micro-batch ``plan``, whose
        rows of ``logits`` ([b, T, V]) are its task rows, then its replay rows."""
        index = self._source(plan)
        if len(index) == 0:
            return logits.new_zeros((), dtype=torch.float32)
        first = 0 if self.data == "task" else len(plan.task)
        rows = self.row_of[index].to(self.device)
        kl = kl_to_base(
            logits[first : first + len(index), :-1, : self.vocab],
            *(self.ref[name][rows] for name in ("topk_ids", "topk_logprobs", "tail_mass")),
        )
        return torch.where(self.targets[index.to(self.device)], kl, 0.0).sum()


def kl_targets(examples: Examples) -> torch.Tensor:
    """``[n, T-1]`` bool: the positions whose next token is a training target."""
    return examples.labels[:, 1:] != IGNORE_INDEX
