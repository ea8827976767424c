"""Log-likelihood of continuations given contexts: the multiple-choice scoring engine.

The scoring rule is lm-evaluation-harness's for ARC and every ``multiple_choice``
task: the score of a choice is the summed log-probability of the continuation
``" " + choice`` given the context, tokenised the way lm-eval does it (trailing
spaces of the context move to the continuation; the pair is encoded whole and
split at the length of the encoded context, see :func:`encode_pair`).
``acc`` takes the argmax of the scores; ``acc_norm`` the argmax of score divided
by the choice's length in characters.

Speed: all choices of a question share its context, so the context runs once.
A batch of contexts runs left-padded with its key/value cache kept; the cache is
then indexed once per choice and every choice of every question in the batch
runs in a second forward pass. A question with four choices costs one context
pass plus four short continuation passes instead of four full passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from forgetscale.errors import UserError
from forgetscale.models import max_context

TokenPair = tuple[Sequence[int], Sequence[int]]


def cache_keyword() -> str:
    """The name transformers gives the key/value cache argument (``cache`` from 5.x, else
    ``past_key_values``), so we pass it without a deprecation warning on either."""
    import dataclasses

    from transformers.modeling_outputs import CausalLMOutputWithPast

    names = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    return "cache" if "cache" in names else "past_key_values"


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) exactly as lm-eval's causal models make them.

    Trailing whitespace of the context moves to the continuation; the whole string
    is encoded and the continuation is what follows the encoded context's length.
    An empty context is conditioned on the EOS token (lm-eval's prefix token).
    """
    if not continuation:
        raise UserError("an empty continuation has no log-likelihood to score")
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = (
            tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        )
        if cont and cont[0] == prefix:
            return cont[:1], cont[1:]
        return [prefix], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


def _truncate(
    ctx: Sequence[int], cont: Sequence[int], limit: int | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """lm-eval's rule: keep the last ``limit + 1`` tokens of context + continuation."""
    ctx, cont = tuple(ctx), tuple(cont)
    if not cont:
        raise UserError("a continuation encodes to no tokens; nothing to score")
    if limit is not None and len(ctx) + len(cont) > limit + 1:
        if len(cont) > limit:
            raise UserError(
                f"a continuation of {len(cont)} tokens does not fit the model's context of {limit}"
            )
        ctx = ctx[len(ctx) + len(cont) - limit - 1 :]
    return ctx, cont


def _last_logits_only(model: nn.Module) -> dict[str, int]:
    """``logits_to_keep=1`` where the model takes it: the context pass needs only its last
    position's logits, and the output head over the whole vocabulary is not free."""
    import inspect

    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    params = inspect.signature(base.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


@torch.inference_mode()
def loglikelihoods(
    model: nn.Module,
    pairs: Sequence[TokenPair],
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[tuple[float, bool]]:
    """``(sum log p(continuation | context), is_greedy)`` for each (context ids, continuation ids).

    Pairs that share a context run that context once (see the module docs). ``batch_size``
    is the number of distinct contexts per forward pass. ``is_greedy`` says whether every
    continuation token is the model's argmax, as lm-eval reports it.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    limit = max_context(model)
    groups: dict[tuple[int, ...], list[tuple[int, tuple[int, ...]]]] = {}
    for index, (ctx, cont) in enumerate(pairs):
        ctx_t, cont_t = _truncate(ctx, cont, limit)
        if not ctx_t:
            raise UserError("a context encodes to no tokens; give at least one context token")
        groups.setdefault(ctx_t, []).append((index, cont_t))
    # longest contexts first: similar lengths share a batch (little padding), and an
    # out-of-memory error shows on the first batch rather than the last
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[0]))
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(pairs), desc="scoring", unit="choice", disable=not progress)
    try:
        for start in range(0, len(ordered), batch_size):
            chunk = ordered[start : start + batch_size]
            for index, value in _score_chunk(model, chunk, device):
                results[index] = value
            bar.update(sum(len(conts) for _, conts in chunk))
    finally:
        bar.close()
        model.train(was_training)
    scores = [r for r in results if r is not None]
    broken = sum(not math.isfinite(score) for score, _ in scores)
    if broken:
        raise UserError(
            f"the model's scores are not finite on {broken} of {len(scores)} choices: its "
            "weights may be broken, or bfloat16 may overflow (try --dtype float32)"
        )
    return scores


def _score_chunk(
    model: nn.Module,
    chunk: list[tuple[tuple[int, ...], list[tuple[int, tuple[int, ...]]]]],
    device: torch.device,
) -> list[tuple[int, tuple[float, bool]]]:
    n_ctx = len(chunk)
    ctx_lens = torch.tensor([len(ctx) for ctx, _ in chunk])
    width = int(ctx_lens.max())
    ids = torch.zeros(n_ctx, width, dtype=torch.long)
    mask = torch.zeros(n_ctx, width, dtype=torch.long)
    for row, (ctx, _) in enumerate(chunk):  # left padding: every context ends at the last column
        ids[row, width - len(ctx) :] = torch.tensor(ctx)
        mask[row, width - len(ctx) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **_last_logits_only(model),
    )
    first = out.logits[:, -1, :].float().log_softmax(-1)  # predicts each continuation's token 0
    cache_kw = cache_keyword()
    cache = getattr(out, cache_kw)

    rows = [(g, index, cont) for g, (_, conts) in enumerate(chunk) for index, cont in conts]
    owner = torch.tensor([g for g, _, _ in rows])
    first_ids = torch.tensor([cont[0] for _, _, cont in rows])
    first_lp = first[owner.to(device), first_ids.to(device)].cpu()
    first_greedy = first.argmax(-1)[owner.to(device)].cpu() == first_ids
    totals = first_lp.double()
    greedy = first_greedy.clone()

    # only choices of two or more tokens need the second pass (one row each)
    long_rows = [r for r, (_, _, cont) in enumerate(rows) if len(cont) > 1]
    if long_rows:
        tail_width = max(len(rows[r][2]) for r in long_rows) - 1
        n_long = len(long_rows)
        feed = torch.zeros(n_long, tail_width, dtype=torch.long)  # cont[:-1]: inputs
        want = torch.zeros(n_long, tail_width, dtype=torch.long)  # cont[1:]: targets
        valid = torch.zeros(n_long, tail_width, dtype=torch.bool)
        for i, r in enumerate(long_rows):
            cont = rows[r][2]
            k = len(cont) - 1
            feed[i, :k] = torch.tensor(cont[:-1])
            want[i, :k] = torch.tensor(cont[1:])
            valid[i, :k] = True
        long_owner = owner[long_rows]
        cache.reorder_cache(long_owner.to(device))  # one cache row per long choice
        # right padding of the tails needs no mask: causal attention never looks ahead,
        # and the padded positions' outputs are ignored
        mask2 = torch.cat([mask[long_owner], torch.ones(n_long, tail_width, dtype=torch.long)], 1)
        pos2 = ctx_lens[long_owner].unsqueeze(1) + torch.arange(tail_width).unsqueeze(0)
        out2 = model(
            input_ids=feed.to(device),
            attention_mask=mask2.to(device),
            position_ids=pos2.to(device),
            use_cache=False,
            **{cache_kw: cache},
        )
        logp = out2.logits.float().log_softmax(-1)
        picked = logp.gather(-1, want.to(device).unsqueeze(-1)).squeeze(-1).cpu().double()
        hits = (logp.argmax(-1).cpu() == want) | ~valid
        index = torch.tensor(long_rows)
        totals[index] += (picked * valid).sum(1)
        greedy[index] &= hits.all(1)
    return [(index, (float(totals[r]), bool(greedy[r]))) for r, (_, index, _) in enumerate(rows)]
