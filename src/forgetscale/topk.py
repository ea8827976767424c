"""The per-position statistics of a distribution over the vocabulary that the metrics need.

From a model's logits ``[..., V]``: the target y = argmax (ties to the lowest id), its
log-probability, the K most likely tokens and their log-probabilities, the mass outside them
(the lumped tail of docs/design.md, kept exact where it is tiny) and the entropy over the K
tokens plus the tail. :mod:`forgetscale.reference` stores them for the base model;
:mod:`forgetscale.metrics` computes the tail of the fine-tuned model the same way.
"""

from __future__ import annotations

import math

import torch


def log_tail_mass(
    logits: torch.Tensor,
    log_norm: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
) -> torch.Tensor:
    """log of the probability mass outside the top-K tokens, per position.

    ``1 - sum(top-K probabilities)`` in float64 is exact to ~1e-7 absolute, which is
    plenty unless the tail itself is tiny; positions whose tail is below 1e-4 get
    the exact value from a log-sum-exp over the non-top-K logits (a masked copy of
    only those rows), so small tails keep full relative precision.
    """
    tail = 1.0 - topk_logprobs.double().exp().sum(-1)
    log_tail = tail.clamp_min(0).log().to(logits.dtype)
    small = tail < 1e-4
    if bool(small.any()):
        rows = logits[small].scatter(-1, topk_ids[small], -math.inf)
        log_tail[small] = rows.logsumexp(-1) - log_norm[small]
    return log_tail


def base_statistics(logits: torch.Tensor, top_k: int) -> dict[str, torch.Tensor]:
    """Per-position statistics from float32 logits ``[..., V]`` (the table in
    :mod:`forgetscale.reference`, without the token blocks)."""
    log_norm = logits.logsumexp(dim=-1)
    top_logits, topk_ids = logits.topk(top_k, dim=-1)
    topk_logprobs = top_logits - log_norm.unsqueeze(-1)
    if top_k == 1:
        target = logits.argmax(dim=-1)  # first maximal index = lowest id on ties
    else:  # topk orders equal values arbitrarily: y = argmax takes the lowest id
        target = topk_ids[..., 0]
        ties = top_logits[..., 0] == top_logits[..., 1]
        if bool(ties.any()):
            target = torch.where(ties, logits.argmax(dim=-1), target)
    if top_k == logits.shape[-1]:
        log_tail = torch.full_like(log_norm, -math.inf)
    else:
        log_tail = log_tail_mass(logits, log_norm, topk_ids, topk_logprobs)
    tail = log_tail.exp()
    tail_term = torch.where(tail > 0, tail * log_tail, torch.zeros_like(tail))
    entropy = -(topk_logprobs.exp() * topk_logprobs).sum(-1) - tail_term
    target_logit = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return {
        "target_ids": target.to(torch.int32),
        "target_logprob": target_logit - log_norm,
        "topk_ids": topk_ids.to(torch.int32),
        "topk_logprobs": topk_logprobs,
        "tail_mass": tail,
        "entropy": entropy,
    }
