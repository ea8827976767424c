"""The forgetting quantities (docs/design.md, "Exact definitions") and the fine-tuning loss L_ft.

L_f and its relatives are computed in one streaming pass against a reference cache;
:func:`measure` is the library entry point behind ``forgetscale measure``.

For each predicted position i, with base distribution p (from the
:class:`~forgetscale.reference.ReferenceCache`) and the model's distribution q:

- hard forgetting loss (the paper's L_f):  -log q(y_i),  y_i = argmax p
- soft forgetting loss:                    -sum_v p(v) log q(v)
- KL(base || model):                        sum_v p(v) (log p(v) - log q(v))
- base entropy:                            -sum_v p(v) log p(v)
- agreement:                               [argmax q == y_i]

each averaged over all positions. With a top-K reference the sums over v run
exactly over the K cached tokens plus one lumped "tail" outcome (every other
token) with base mass p_tail and model mass q_tail; with K = vocabulary size
they are exact. The lumped KL is a lower bound of the exact KL (grouping
outcomes never increases KL), and KL = soft - entropy holds on both.

Logits are reduced batch by batch: nothing of size positions x vocab is kept.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from forgetscale.errors import UserError
from forgetscale.finetune_data import IGNORE_INDEX, Examples
from forgetscale.models import dtype_name, evaluation_mode
from forgetscale.reference import ReferenceCache
from forgetscale.store import FORGETTING_COLUMNS
from forgetscale.topk import log_tail_mass


@dataclass
class BlockReport:
    """One block of the forgetting corpus and how much was forgotten on it."""

    block: int
    kl: float
    forgetting_loss: float
    agreement: float
    text: str | None = None


def hard_below_base_note(hard: float, base_hard: float, kl: float) -> str | None:
    """Words for the case where the hard L_f falls below the base's own value while KL rises.

    The hard loss only looks at the base's top-1 token: a model that grows more confident on
    that token scores lower than the base itself although its distribution moved away from
    the base's (KL > 0, agreement < 1). That is not negative forgetting; the soft L_f and KL
    say how far the model moved. None when the case does not arise.
    """
    if not (hard < base_hard and kl > 1e-6):
        return None
    return (
        f"hard L_f {hard:.4f} is below the base's own {base_hard:.4f} while KL rose to {kl:.4f}: "
        "the model grew more confident on the base's top-1 tokens, which the hard metric "
        "rewards; this is not negative forgetting (read the soft L_f and KL)"
    )


@dataclass
class ForgettingResult:
    """The forgetting metrics of one model against one reference."""

    forgetting_loss: float
    """Hard forgetting loss L_f: mean -log q(y_i), y_i the base's top-1 token."""
    forgetting_loss_soft: float
    """Soft forgetting loss: mean cross-entropy from p to q (top-K + lumped tail)."""
    kl: float
    """Mean KL(base || model) (top-K + lumped tail); 0 for the base itself."""
    base_entropy: float
    """Mean entropy of the base distribution (top-K + lumped tail)."""
    agreement: float
    """Share of positions where the model's top-1 token is the base's."""
    tokens: int
    """Number of predicted positions averaged over."""
    base_forgetting_loss: float
    """The step-0 value of L_f: the base model's own mean -log p(y_i)."""
    reference: str | None = None
    """Path of the reference file, when known."""
    most_forgotten: list[BlockReport] = field(default_factory=list)
    """The blocks with the largest mean KL, most forgotten first."""

    def metrics(self) -> dict[str, float]:
        """The forgetting columns of the measurement schema (see :mod:`forgetscale.store`)."""
        return {name: getattr(self, name) for name in FORGETTING_COLUMNS}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ForgettingAccumulator:
    """Running float64 sums of the per-position quantities, plus per-block KL."""

    n_blocks: int
    hard: float = 0.0
    soft: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    agree: float = 0.0
    tokens: int = 0
    block_kl: torch.Tensor = field(init=False)
    block_hard: torch.Tensor = field(init=False)
    block_agree: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.block_kl = torch.full((self.n_blocks,), math.nan, dtype=torch.float64)
        self.block_hard = torch.full((self.n_blocks,), math.nan, dtype=torch.float64)
        self.block_agree = torch.full((self.n_blocks,), math.nan, dtype=torch.float64)

    def add(self, start: int, terms: dict[str, torch.Tensor]) -> None:
        """Add per-position terms ``[b, T-1]`` of blocks ``start .. start+b-1``."""
        terms = {k: v.double().cpu() for k, v in terms.items()}
        self.hard += float(terms["hard"].sum())
        self.soft += float(terms["soft"].sum())
        self.kl += float(terms["kl"].sum())
        self.entropy += float(terms["entropy"].sum())
        self.agree += float(terms["agree"].sum())
        self.tokens += terms["hard"].numel()
        stop = start + terms["hard"].shape[0]
        self.block_kl[start:stop] = terms["kl"].mean(-1)
        self.block_hard[start:stop] = terms["hard"].mean(-1)
        self.block_agree[start:stop] = terms["agree"].mean(-1)


def forgetting_terms(logits: torch.Tensor, ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-position forgetting terms from the model's float32 logits ``[b, T-1, V]``.

    ``ref`` holds the matching reference slices (``target_ids``, ``topk_ids``,
    ``topk_logprobs``, ``tail_mass``, ``entropy``), already on ``logits.device``.
    """
    lse = logits.logsumexp(dim=-1)  # log normaliser of q
    target = ref["target_ids"].long()
    hard = lse - logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    soft, kl = lumped_soft_and_kl(
        logits, lse, ref["topk_ids"], ref["topk_logprobs"], ref["tail_mass"]
    )
    agree = (logits.argmax(dim=-1) == target).to(logits.dtype)
    return {"hard": hard, "soft": soft, "kl": kl, "entropy": ref["entropy"], "agree": agree}


def lumped_soft_and_kl(
    logits: torch.Tensor,
    lse: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_mass: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position soft L_f and KL(base || model) over the base's top-K tokens plus the lumped
    tail, from the model's logits ``[..., V]`` and their log normaliser ``lse``. Differentiable
    in ``logits`` (the KL penalty of training backpropagates through it)."""
    topk_ids = topk_ids.long()
    logq_topk = logits.gather(-1, topk_ids) - lse.unsqueeze(-1)
    p_topk = topk_logprobs.exp()
    p_tail = tail_mass
    has_tail = p_tail > 0
    if bool(has_tail.any()):
        log_q_tail = log_tail_mass(logits, lse, topk_ids, logq_topk)
        log_p_tail = torch.where(has_tail, p_tail, torch.ones_like(p_tail)).log()
        zero = torch.zeros_like(p_tail)
        tail_soft = torch.where(has_tail, -p_tail * log_q_tail, zero)
        tail_kl = torch.where(has_tail, p_tail * (log_p_tail - log_q_tail), zero)
    else:  # K = vocabulary size: the top-K is the whole distribution
        tail_soft = tail_kl = torch.zeros_like(p_tail)
    soft = -(p_topk * logq_topk).sum(-1) + tail_soft
    kl = (p_topk * (topk_logprobs - logq_topk)).sum(-1) + tail_kl
    return soft, kl


def kl_to_base(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_mass: torch.Tensor,
) -> torch.Tensor:
    """Per-position KL(base || model), the lumped top-K KL of :func:`forgetting_terms`, from the
    model's logits ``[..., V]`` (cast to float32) and the base's cached top-K; differentiable."""
    logits = logits.float()
    return lumped_soft_and_kl(logits, logits.logsumexp(-1), topk_ids, topk_logprobs, tail_mass)[1]


@torch.inference_mode()
def evaluate_forgetting(
    model: nn.Module,
    reference: ReferenceCache,
    *,
    batch_size: int = 8,
    max_blocks: int | None = None,
    progress: bool = False,
    tokenizer: Any = None,
    report_blocks: int = 5,
    reference_path: str | None = None,
) -> ForgettingResult:
    """Measure ``model`` (plain or PEFT-wrapped) against the base predictions in ``reference``.

    Args:
        model: the fine-tuned model M' (or the base itself: KL 0, agreement 1).
        reference: base predictions on the forgetting corpus.
        batch_size: blocks per forward pass; sets peak memory.
        max_blocks: use only the first ``max_blocks`` blocks (a cheaper estimate).
        progress: show a progress bar.
        tokenizer: if given, the most-forgotten blocks carry their decoded text.
        report_blocks: how many most-forgotten blocks to report.
        reference_path: recorded in the result.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if max_blocks is not None:
        if max_blocks < 1:
            raise UserError(f"max blocks must be at least 1, got {max_blocks}")
        reference = reference.subset(max_blocks)
    n_blocks, positions = reference.n_blocks, reference.block_size - 1
    vocab = reference.fingerprint.get("vocab_size")
    device = next(model.parameters()).device
    acc = ForgettingAccumulator(n_blocks)
    bar = tqdm(total=n_blocks * positions, unit="tok", desc="measure", disable=not progress)
    with evaluation_mode(model), bar:
        for start in range(0, n_blocks, batch_size):
            stop = min(start + batch_size, n_blocks)
            batch = reference.input_ids[start:stop].to(device=device, dtype=torch.long)
            logits = model(input_ids=batch).logits[:, :-1, :vocab].float()
            ref = {
                name: getattr(reference, name)[start:stop].to(device)
                for name in ("target_ids", "topk_ids", "topk_logprobs", "tail_mass", "entropy")
            }
            acc.add(start, forgetting_terms(logits, ref))
            bar.update((stop - start) * positions)
    values = {
        "hard": acc.hard / acc.tokens,
        "soft": acc.soft / acc.tokens,
        "kl": acc.kl / acc.tokens,
    }
    bad = [name for name, v in values.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"forgetting metrics are not finite ({', '.join(bad)}): {values}")
    return ForgettingResult(
        forgetting_loss=values["hard"],
        forgetting_loss_soft=values["soft"],
        kl=values["kl"],
        base_entropy=acc.entropy / acc.tokens,
        agreement=acc.agree / acc.tokens,
        tokens=acc.tokens,
        base_forgetting_loss=reference.base_forgetting_loss,
        reference=reference_path,
        most_forgotten=_most_forgotten(acc, reference, tokenizer, report_blocks),
    )


def _most_forgotten(
    acc: ForgettingAccumulator, reference: ReferenceCache, tokenizer: Any, count: int
) -> list[BlockReport]:
    if count <= 0:
        return []
    order = torch.argsort(acc.block_kl, descending=True)[:count]
    reports = []
    for index in order.tolist():
        text = None
        if tokenizer is not None:
            text = tokenizer.decode(reference.input_ids[index].tolist())
        reports.append(
            BlockReport(
                block=index,
                kl=float(acc.block_kl[index]),
                forgetting_loss=float(acc.block_hard[index]),
                agreement=float(acc.block_agree[index]),
                text=text,
            )
        )
    return reports


# ------------------------------------------------------------------------------------------
# the fine-tuning loss L_ft


@torch.inference_mode()
def finetune_loss(model: nn.Module, heldout: Examples, *, batch_size: int) -> float:
    """Token-weighted mean next-token cross-entropy on held-out task data (L_ft)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with evaluation_mode(model):
        for start in range(0, len(heldout), batch_size):
            part = heldout.select(slice(start, start + batch_size))
            ids = part.input_ids.to(device)
            mask = None if part.attention_mask is None else part.attention_mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            labels = part.labels[:, 1:].to(device)
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += float(loss.double())
            count += int((labels != IGNORE_INDEX).sum())
    return total / max(count, 1)


# ------------------------------------------------------------------------------------------
# measure: a model (optionally + adapter) against a saved reference


class PrecisionWarning(UserWarning):
    """The model runs in another dtype than the reference was built in."""


def measure(
    model: str | nn.Module,
    reference: str | os.PathLike[str] | ReferenceCache,
    *,
    adapter: str | None = None,
    tokenizer: Any = None,
    dtype: str = "float32",
    batch_size: int = 8,
    max_blocks: int | None = None,
    report_blocks: int = 5,
    trust_remote_code: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> ForgettingResult:
    """Measure how much ``model`` has forgotten of the base behind ``reference``.

    Args:
        model: a model spec (embedded name, folder, .gguf, hub id) or a loaded model.
        reference: a reference file from ``forgetscale reference`` or a loaded cache.
        adapter: a PEFT adapter folder to apply to ``model`` (when it is a spec).
        tokenizer: the tokenizer of a loaded ``model`` (checked against the reference,
            and used to show the text of the most-forgotten blocks).
        dtype: ``float32`` or ``bfloat16`` when loading ``model`` from a spec.
        batch_size: blocks per forward pass.
        max_blocks: evaluate only the first ``max_blocks`` blocks.
        report_blocks: number of most-forgotten blocks to return.
        trust_remote_code: allow hub model code (off unless asked).
        device: where to run a model loaded from a spec (``auto``: CUDA if present).
        progress: show a progress bar.

    Example:
        >>> import forgetscale
        >>> result = forgetscale.measure("./my-finetune", "pydoc.ref.safetensors")
        >>> result.forgetting_loss, result.kl, result.agreement
    """
    reference_path = None
    if not isinstance(reference, ReferenceCache):
        reference_path = str(Path(reference))
        reference = ReferenceCache.load(reference)
    if isinstance(model, str):
        from forgetscale.models import load_model

        loaded = load_model(
            model,
            adapter=adapter,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            device=device,
        )
        model, tokenizer = loaded.model, loaded.tokenizer
    if tokenizer is not None:
        reference.check_compatible(tokenizer, model)
    model_dtype = dtype_name(model)
    ref_dtype = reference.fingerprint.get("dtype")
    if ref_dtype and model_dtype != ref_dtype:
        warnings.warn(
            f"the model runs in {model_dtype} but the reference was built in {ref_dtype}: "
            "precision alone moves the base's own top-1 token on a few percent of positions, "
            "the same order as the forgetting measured",
            PrecisionWarning,
            stacklevel=2,
        )
    return evaluate_forgetting(
        model,
        reference,
        batch_size=batch_size,
        max_blocks=max_blocks,
        progress=progress,
        tokenizer=tokenizer,
        report_blocks=report_blocks,
        reference_path=reference_path,
    )
