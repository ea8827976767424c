"""Forgetting less in your own ``Trainer`` / TRL ``SFTTrainer``: replay mixing and a KL-to-base
penalty, the same two mitigations ``forgetscale train`` offers (``replay_fraction``,
``kl_weight``), with the same arithmetic (:mod:`forgetscale.mitigation`,
:func:`forgetscale.metrics.kl_to_base`).

- :class:`ReplayMixture`: a dataset mixer. It serves the examples of each optimizer update in
  order: ``update_size`` examples (``per_device_train_batch_size x gradient_accumulation_steps
  x processes``, :func:`update_size`), of which exactly
  :func:`~forgetscale.mitigation.replay_count` are replay blocks (every token a target), the
  rest task examples; both sources in per-epoch permutations of their own, a pure function of
  ``(seed, step)``. Being an iterable dataset, the Trainer does not reshuffle it.
- :class:`KLToBase`: the penalty ``weight x KL(base || model)`` on the blocks of a cached top-K
  reference (built once from the base with :func:`forgetscale.build_reference`, no second model
  in memory). A row of a batch is penalised when its first ``T`` tokens are one of the
  reference's blocks (found by content, so any collator or sampler works; rows must be
  right-padded); its KL positions are those whose next token is a target. The term is the
  token mean over the KL positions of the whole update, as in ``forgetscale train``.
- :func:`with_kl_to_base`: a subclass of a Trainer class (``Trainer``, ``SFTTrainer``, or your
  own) that takes ``kl_penalty=KLToBase(...)``, adds the term to the training loss and logs
  ``train_kl`` (the mean KL per position since the last log). With weight 0 (or in evaluation)
  the loss is the parent class's, unchanged.

Example::

    from forgetscale import build_reference
    from forgetscale.trainer_mitigation import KLToBase, ReplayMixture, update_size, with_kl_to_base

    replay = pack_documents(general_docs, tok, 128)           # [n, 128] token blocks
    kl_ref = build_reference(base, tok, replay, top_k=64)      # before the adapter, once
    args = SFTConfig(..., max_steps=200, dataset_kwargs={"skip_prepare_dataset": True})
    mixture = ReplayMixture(task_examples, replay, fraction=0.05,
                            update_size=update_size(args), seed=0)
    trainer = with_kl_to_base(SFTTrainer)(model=peft_model, args=args,
                                          train_dataset=mixture.as_hf_dataset(),
                                          kl_penalty=KLToBase(kl_ref, weight=0.1), ...)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from forgetscale.errors import UserError
from forgetscale.finetune_data import IGNORE_INDEX
from forgetscale.metrics import kl_to_base
from forgetscale.mitigation import replay_count

_NOT_MODEL_INPUTS = ("completion_mask", "assistant_masks")


def update_size(args: Any) -> int:
    """Examples per optimizer update of Trainer arguments ``args``."""
    world = int(getattr(args, "world_size", 1) or 1)
    return int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * world


def _number(value: Any, name: str) -> float:
    """``value`` as a float; a bool, a string or None is refused in one line."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{name} must be a number, got {value!r}")
    return float(value)


def _whole(value: Any, name: str, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int >= ``minimum`` (and <= ``maximum``); a float with a fraction, a
    bool, a string or None is refused in one line."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if not (isinstance(value, numbers.Real) and float(value).is_integer()):
            raise UserError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"at least {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise UserError(f"{name} must be {bound}, got {value}")
    return value


def _as_list(value: Any) -> Any:
    return value.tolist() if isinstance(value, torch.Tensor) else value


class ReplayMixture(torch.utils.data.IterableDataset):
    """Task examples with replay blocks mixed into each update (see the module docstring).

    Args:
        task: the task examples (a list of dicts or a ``datasets.Dataset``), each with
            ``input_ids`` (and ``labels``, ``attention_mask`` when the task has them).
        replay: replay token blocks ``[n, T]`` (e.g. :func:`forgetscale.corpus.pack_documents`).
        fraction: the share p of each update's examples that are replay blocks, 0 <= p < 1.
        update_size: examples per optimizer update (:func:`update_size` of the Trainer args).
        seed: seed of both permutation streams.
        steps: how many updates to serve (None: as many as the Trainer asks for).
    """

    column_names = None  # for TRL, which reads the columns from the first example

    def __init__(
        self,
        task: Sequence[dict[str, Any]],
        replay: torch.Tensor,
        *,
        fraction: float,
        update_size: int,
        seed: int = 0,
        steps: int | None = None,
    ):
        from forgetscale.training.mixing import ReplayMixer

        fraction = _number(fraction, "replay fraction")
        if not 0 <= fraction < 1:  # NaN fails too
            raise UserError(f"replay fraction must be in [0, 1), got {fraction}")
        update_size = _whole(update_size, "update_size", 1)
        seed = _whole(seed, "seed", 0, 2**63 - 1)
        if steps is not None:
            steps = _whole(steps, "steps", 0)
        if (
            not hasattr(task, "__len__")
            or not hasattr(task, "__getitem__")
            or isinstance(task, (str, bytes, dict))
        ):
            raise UserError(
                f"task must be a list of examples or a datasets.Dataset, got {type(task).__name__}"
            )
        if len(task) == 0:
            raise UserError("the task data set is empty")
        if replay is None and fraction == 0:
            replay = torch.zeros((0, 1), dtype=torch.int64)
        try:
            replay = torch.as_tensor(replay)
        except (TypeError, ValueError, RuntimeError):
            raise UserError(
                f"replay must be token blocks [n, T] (a tensor or equal-length lists of token "
                f"ids), got {type(replay).__name__}"
            ) from None
        if fraction > 0 and (replay.ndim != 2 or replay.shape[0] == 0):
            raise UserError(
                f"replay must be token blocks [n, T] with n >= 1, got {tuple(replay.shape)}"
            )
        if replay.is_floating_point() or replay.is_complex() or replay.dtype == torch.bool:
            raise UserError(f"replay must hold token ids (integers), got {replay.dtype}")
        self.task, self.replay, self.fraction = task, replay, fraction
        self.update_size, self.seed, self.steps = int(update_size), int(seed), steps
        self.mixer = ReplayMixer(len(task), max(len(replay), 1), self.update_size, fraction, seed)

    def replay_count(self, step: int) -> int:
        """Replay blocks in update ``step`` (0-based)."""
        return replay_count(step, self.fraction, self.update_size)

    def update(self, step: int) -> list[dict[str, Any]]:
        """The examples of update ``step``: its task examples, then its replay blocks."""
        plan = self.mixer.plan(step)
        out = [{k: _as_list(v) for k, v in self.task[int(i)].items()} for i in plan.task]
        for i in plan.replay:
            block = self.replay[int(i)].tolist()
            out.append({"input_ids": block, "labels": block, "attention_mask": [1] * len(block)})
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        step = 0
        while self.steps is None or step < self.steps:
            yield from self.update(step)
            step += 1

    def as_hf_dataset(self) -> Any:
        """The same stream as a ``datasets.IterableDataset`` (what TRL's ``SFTTrainer`` takes;
        pass ``dataset_kwargs={"skip_prepare_dataset": True}``: the examples are ready)."""
        import datasets

        return datasets.IterableDataset.from_generator(self.__iter__)

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("a ReplayMixture without steps has no length (set max_steps)")
        return self.steps * self.update_size


class KLToBase:
    """``weight x KL(base || model)`` on the blocks of ``reference`` (see the module docstring).

    Args:
        reference: a :class:`~forgetscale.reference.ReferenceCache` (or its path) built from
            the base model on the blocks to penalise (replay blocks, or packed task blocks).
        weight: lambda >= 0.
    """

    def __init__(self, reference: Any, weight: float):
        from forgetscale.reference import ReferenceCache

        weight = _number(weight, "KL weight")
        if not weight >= 0 or weight == float("inf"):
            raise UserError(f"KL weight must be a finite number >= 0, got {weight}")
        if not isinstance(reference, ReferenceCache):
            if not isinstance(reference, (str, os.PathLike)):
                raise UserError(
                    "reference must be a ReferenceCache or the path of its .safetensors file, "
                    f"got {type(reference).__name__}"
                )
            reference = ReferenceCache.load(reference)
        self.reference, self.weight = reference, weight
        self.block_size = reference.block_size
        self.vocab = int(reference.fingerprint["vocab_size"])
        ids = reference.input_ids.to(torch.int64)
        self._row = {ids[i].numpy().tobytes(): i for i in range(len(ids))}

    def rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """``(batch rows, reference rows)``: the rows of ``input_ids`` that are reference blocks."""
        T = self.block_size
        if input_ids.shape[1] < T:
            return [], []
        head = input_ids[:, :T].detach().to("cpu", torch.int64)
        full = (
            None if attention_mask is None else attention_mask[:, :T].detach().cpu().bool().all(1)
        )
        mine, theirs = [], []
        for r in range(len(head)):
            ref = self._row.get(head[r].numpy().tobytes())
            if ref is not None and (full is None or bool(full[r])):
                mine.append(r)
                theirs.append(ref)
        return mine, theirs

    def _mask(self, labels: torch.Tensor | None, rows: list[int], n: int, device) -> torch.Tensor:
        T = self.block_size
        if labels is None:
            return torch.ones(n, T - 1, dtype=torch.bool, device=device)
        return labels[rows, 1:T].to(device) != IGNORE_INDEX

    def positions(self, batch: dict[str, torch.Tensor]) -> int:
        """KL positions of a collated ``batch``."""
        rows, _ = self.rows(batch["input_ids"], batch.get("attention_mask"))
        if not rows:
            return 0
        return int(self._mask(batch.get("labels"), rows, len(rows), "cpu").sum())

    def kl_sum(
        self,
        logits: torch.Tensor,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """``(sum of the per-position KL over the KL positions, their count)`` of one batch."""
        rows, refs = self.rows(input_ids, attention_mask)
        if not rows:
            return logits.new_zeros((), dtype=torch.float32), 0
        T, device = self.block_size, logits.device
        index = torch.tensor(refs)
        kl = kl_to_base(
            logits[rows, : T - 1, : self.vocab],
            *(
                getattr(self.reference, name)[index].to(device)
                for name in ("topk_ids", "topk_logprobs", "tail_mass")
            ),
        )
        mask = self._mask(labels, rows, len(rows), device)
        return torch.where(mask, kl, 0.0).sum(), int(mask.sum())


class KLToBaseMixin:
    """Adds ``kl_penalty`` (a :class:`KLToBase`) to a Trainer class's training loss."""

    def __init__(self, *args: Any, kl_penalty: KLToBase | None = None, **kwargs: Any):
        if kl_penalty is not None and not isinstance(kl_penalty, KLToBase):
            raise UserError(
                f"kl_penalty must be a KLToBase(reference, weight) or None, got {kl_penalty!r}"
            )
        super().__init__(*args, **kwargs)
        self.kl_penalty = kl_penalty
        self._kl_update_positions = self._kl_update_seen = 0
        self._kl_update_sum = 0.0
        self._kl_logged: list[float] = []

    def _kl_on(self) -> bool:
        return self.kl_penalty is not None and self.kl_penalty.weight > 0

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self._kl_on():
            self._kl_update_positions = sum(self.kl_penalty.positions(b) for b in batches)
            self._kl_update_sum = 0.0
            self._kl_update_seen = 0
        return batches, num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not (self._kl_on() and model.training):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        ids, labels, mask = inputs["input_ids"], inputs.get("labels"), inputs.get("attention_mask")
        fwd = {k: v for k, v in inputs.items() if k not in _NOT_MODEL_INPUTS}
        fwd["use_cache"] = False
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        if scaled:
            fwd["num_items_in_batch"] = num_items_in_batch
        outputs = model(**fwd)  # the task loss and the full logits in one forward
        loss = outputs.loss
        if scaled and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        kl_sum, n = self.kl_penalty.kl_sum(outputs.logits, ids, labels, mask)
        if n:
            term = kl_sum / max(self._kl_update_positions, n)
            if not scaled:  # the Trainer divides this micro-batch's loss by the accumulation steps
                term = term * self.current_gradient_accumulation_steps
            loss = loss + self.kl_penalty.weight * term
            self._kl_update_sum += float(kl_sum.detach())
            self._kl_update_seen += n
            if self._kl_update_seen >= self._kl_update_positions:
                self._kl_logged.append(self._kl_update_sum / max(self._kl_update_seen, 1))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._kl_logged and "loss" in logs:
            logs["train_kl"] = sum(self._kl_logged) / len(self._kl_logged)
            self._kl_logged = []
        super().log(logs, *args, **kwargs)


_CLASSES: dict[type, type] = {}


def with_kl_to_base(trainer_class: type) -> type:
    """``trainer_class`` (``Trainer``, ``SFTTrainer``, ...) taking ``kl_penalty=KLToBase(...)``."""
    if not isinstance(trainer_class, type):
        raise UserError(
            f"with_kl_to_base takes a Trainer class (Trainer, SFTTrainer, ...), got "
            f"{trainer_class!r}"
        )
    if trainer_class not in _CLASSES:
        _CLASSES[trainer_class] = type(
            f"KLToBase{trainer_class.__name__}", (KLToBaseMixin, trainer_class), {}
        )
    return _CLASSES[trainer_class]
