"""The multiple-choice scorer against a plain one-question-at-a-time computation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from forgetscale.downstream.multiple_choice import MCItem, choice_record, mc_outcomes
from forgetscale.downstream.scoring import encode_pair, loglikelihoods
from forgetscale.errors import UserError

WORDS = "the quick brown fox jumps over a lazy dog list dict tuple class def return".split()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def questions(n: int, seed: int = 0) -> list[MCItem]:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14)))
        choices = tuple(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
            for _ in range(rng.randint(2, 5))
        )
        items.append(MCItem(question, choices, rng.randrange(len(choices))))
    return items


def plain_loglikelihood(model, context_ids, continuation_ids) -> tuple[float, bool]:
    """One sequence, one forward pass, no padding, no cache: the reference computation."""
    ids = torch.tensor([list(context_ids) + list(continuation_ids)])
    with torch.no_grad():
        logp = model(ids).logits[0].double().log_softmax(-1)
    total, greedy = 0.0, True
    for j, token in enumerate(continuation_ids):
        row = logp[len(context_ids) - 1 + j]
        total += float(row[token])
        greedy &= int(row.argmax()) == token
    return total, greedy


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batched_prefix_sharing_scorer_matches_one_at_a_time(tiny, batch_size):
    model, tokenizer = tiny
    pairs = [
        encode_pair(tokenizer, item.context, " " + choice)
        for item in questions(9)
        for choice in item.choices
    ]
    # one-token choices skip the second pass; longer ones take it: both kinds are here
    assert {len(cont) == 1 for _, cont in pairs} == {True, False}
    got = loglikelihoods(model, pairs, batch_size=batch_size)
    assert len(got) == len(pairs)
    for (ctx, cont), (ll, greedy) in zip(pairs, got, strict=True):
        want, want_greedy = plain_loglikelihood(model, ctx, cont)
        assert ll == pytest.approx(want, abs=1e-5)
        assert greedy == want_greedy


def test_scorer_on_a_peft_model_and_in_train_mode(tiny, tiny_lora_dir):
    from peft import PeftModel

    model, tokenizer = tiny
    peft_model = PeftModel.from_pretrained(model, str(tiny_lora_dir))
    peft_model.train()
    pairs = [
        encode_pair(tokenizer, it.context, " " + c) for it in questions(3, 1) for c in it.choices
    ]
    got = loglikelihoods(peft_model, pairs, batch_size=2)
    assert peft_model.training  # mode restored
    peft_model.eval()
    for (ctx, cont), (ll, _) in zip(pairs, got, strict=True):
        assert ll == pytest.approx(plain_loglikelihood(peft_model, ctx, cont)[0], abs=1e-5)
    peft_model.unload()


def test_encode_pair_moves_trailing_space_and_splits_the_whole_encoding(tiny):
    _, tokenizer = tiny
    ctx, cont = encode_pair(tokenizer, "Question: a list\nAnswer: ", "tuple")
    whole = tokenizer.encode("Question: a list\nAnswer: tuple")
    assert ctx == tokenizer.encode("Question: a list\nAnswer:")
    assert ctx + cont == whole[: len(ctx)] + whole[len(ctx) :]
    assert tokenizer.decode(cont) == " tuple"


def test_encode_pair_is_lm_eval_hflm_encoding(tiny):
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = tiny
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    for item in questions(5, 2):
        for choice in item.choices:
            ours = encode_pair(tokenizer, item.context, " " + choice)
            theirs = lm._encode_pair(item.context, " " + choice)
            assert [list(x) for x in ours] == [list(x) for x in theirs]


def test_scorer_truncates_long_contexts_from_the_left_like_lm_eval(tiny):
    model, _ = tiny
    limit = model.config.max_position_embeddings
    ctx = [5] * (limit + 40)
    cont = [7, 8, 9]
    ((ll, _),) = loglikelihoods(model, [(ctx, cont)])
    kept = (ctx + cont)[-(limit + 1) :]
    want, _ = plain_loglikelihood(model, kept[: -len(cont)], cont)
    assert ll == pytest.approx(want, abs=1e-5)


def test_scorer_refuses_empty_pieces(tiny):
    model, _ = tiny
    with pytest.raises(UserError):
        loglikelihoods(model, [([], [3])])
    with pytest.raises(UserError):
        loglikelihoods(model, [([3], [])])
    with pytest.raises(UserError):
        loglikelihoods(model, [([3], [4])], batch_size=0)


def test_acc_and_acc_norm_follow_lm_eval_rules():
    # choice lengths 1 and 10 characters: raw argmax picks "a", normalised picks the long one
    record = choice_record([-2.0, -5.0], ("a", "abcdefghij"), answer=1)
    assert record["pred"] == 0 and record["pred_norm"] == 1
    assert record["acc"] == 0.0 and record["acc_norm"] == 1.0
    tie = choice_record([-1.0, -1.0], ("x", "y"), answer=0)
    assert tie["pred"] == 0  # ties go to the first choice, as np.argmax
    unlabelled = choice_record([-1.0, -3.0], ("x", "y"), answer=None)
    assert "acc" not in unlabelled
    out = mc_outcomes([record, unlabelled], [tie, unlabelled])
    assert out["acc"].tolist() == [0.0]  # only labelled items count for acc
    assert out["agreement"].tolist() == [1.0, 1.0]
    assert np.isclose(out["acc_norm"].mean(), 1.0)
