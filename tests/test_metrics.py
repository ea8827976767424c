"""The forgetting metrics against an independent, straightforward computation."""

from __future__ import annotations

import math

import pytest
import torch

from forgetscale.corpus import load_documents, pack_documents
from forgetscale.metrics import evaluate_forgetting
from forgetscale.models import load_model
from forgetscale.reference import build_reference

BLOCK = 48


@pytest.fixture(scope="module")
def base_and_tuned(tiny_model_dir, tiny_lora_dir, general_jsonl):
    base = load_model(str(tiny_model_dir))
    tuned = load_model(str(tiny_model_dir), adapter=str(tiny_lora_dir))
    blocks = pack_documents(load_documents(str(general_jsonl)), base.tokenizer, BLOCK)[:6]
    return base, tuned, blocks


def straightforward_metrics(base_model, tuned_model, blocks) -> dict[str, float]:
    """Position by position, in float64, with full softmaxes: the definitions as written."""
    sums = dict(hard=0.0, soft=0.0, kl=0.0, entropy=0.0, agree=0.0)
    n = 0
    device = next(base_model.parameters()).device  # the CPU here; CUDA when a GPU is present
    with torch.no_grad():
        p_all = torch.softmax(base_model(input_ids=blocks.to(device)).logits.double(), -1).cpu()
        q_all = torch.softmax(tuned_model(input_ids=blocks.to(device)).logits.double(), -1).cpu()
    for b in range(blocks.shape[0]):
        for t in range(blocks.shape[1] - 1):
            p, q = p_all[b, t], q_all[b, t]
            y = int(torch.nonzero(p == p.max())[0])  # lowest id among ties
            sums["hard"] += -math.log(q[y])
            sums["soft"] += float(-(p * q.log()).sum())
            sums["kl"] += float((p * (p.log() - q.log())).sum())
            sums["entropy"] += float(-(p * p.log()).sum())
            sums["agree"] += float(int(torch.nonzero(q == q.max())[0]) == y)
            n += 1
    return {k: v / n for k, v in sums.items()}


def test_metrics_match_straightforward_computation_with_full_vocab(base_and_tuned):
    base, tuned, blocks = base_and_tuned
    vocab = base.model.config.vocab_size
    reference = build_reference(base.model, base.tokenizer, blocks, top_k=vocab, progress=False)
    result = evaluate_forgetting(tuned.model, reference, batch_size=4)
    expected = straightforward_metrics(base.model, tuned.model, blocks)
    assert result.tokens == blocks.shape[0] * (BLOCK - 1)
    assert result.forgetting_loss == pytest.approx(expected["hard"], abs=1e-5)
    assert result.forgetting_loss_soft == pytest.approx(expected["soft"], abs=1e-5)
    assert result.kl == pytest.approx(expected["kl"], abs=1e-5)
    assert result.base_entropy == pytest.approx(expected["entropy"], abs=1e-5)
    assert result.agreement == pytest.approx(expected["agree"], abs=1e-12)
    # the adapter (random B) really changed the model
    assert result.kl > 1e-3
    assert result.agreement < 1.0


def test_base_model_has_zero_kl_and_full_agreement(base_and_tuned):
    base, _, blocks = base_and_tuned
    reference = build_reference(base.model, base.tokenizer, blocks, top_k=16, progress=False)
    result = evaluate_forgetting(base.model, reference, batch_size=3)
    assert result.kl == pytest.approx(0.0, abs=1e-6)
    assert result.agreement == 1.0
    # the hard L_f of the base is its own mean -log p(y), not 0
    assert result.forgetting_loss == pytest.approx(reference.base_forgetting_loss, abs=1e-6)
    assert result.forgetting_loss > 0.1
    assert result.forgetting_loss_soft == pytest.approx(result.base_entropy, abs=1e-6)


@pytest.mark.parametrize("top_k", [1, 8, 64])
def test_top_k_metrics_stay_within_stated_bounds(base_and_tuned, top_k):
    """Lumping the tail: hard L_f and agreement do not depend on K; the lumped KL is a lower
    bound of the exact KL; the lumped entropy is below the exact one by at most
    mean(p_tail) * log(V - K); KL = soft - entropy holds for every K."""
    base, tuned, blocks = base_and_tuned
    vocab = base.model.config.vocab_size
    exact_ref = build_reference(base.model, base.tokenizer, blocks, top_k=vocab, progress=False)
    small_ref = build_reference(base.model, base.tokenizer, blocks, top_k=top_k, progress=False)
    exact = evaluate_forgetting(tuned.model, exact_ref)
    small = evaluate_forgetting(tuned.model, small_ref)
    assert small.forgetting_loss == pytest.approx(exact.forgetting_loss, abs=1e-6)
    assert small.agreement == exact.agreement
    assert 0.0 <= small.kl <= exact.kl + 1e-6
    tail = float(small_ref.tail_mass.double().mean())
    assert 0.0 <= exact.base_entropy - small.base_entropy <= tail * math.log(vocab - top_k) + 1e-6
    assert small.kl == pytest.approx(small.forgetting_loss_soft - small.base_entropy, abs=1e-5)


def test_reference_round_trip_and_batching_do_not_change_results(base_and_tuned, tmp_path):
    base, tuned, blocks = base_and_tuned
    reference = build_reference(
        base.model, base.tokenizer, blocks, top_k=8, batch_size=4, progress=False
    )
    path = reference.save(tmp_path / "ref.safetensors")
    from forgetscale.reference import ReferenceCache

    loaded = ReferenceCache.load(path)
    assert loaded.fingerprint == reference.fingerprint
    a = evaluate_forgetting(tuned.model, reference, batch_size=1)
    b = evaluate_forgetting(tuned.model, loaded, batch_size=5)
    for key in ("forgetting_loss", "forgetting_loss_soft", "kl", "agreement"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), abs=1e-6)
    # a prefix of the blocks is a smaller, consistent estimate
    sub = evaluate_forgetting(tuned.model, loaded, max_blocks=2)
    assert sub.tokens == 2 * (BLOCK - 1)


def test_most_forgotten_blocks_are_sorted_and_carry_text(base_and_tuned):
    base, tuned, blocks = base_and_tuned
    reference = build_reference(base.model, base.tokenizer, blocks, top_k=8, progress=False)
    result = evaluate_forgetting(tuned.model, reference, tokenizer=base.tokenizer, report_blocks=3)
    kls = [b.kl for b in result.most_forgotten]
    assert len(kls) == 3 and kls == sorted(kls, reverse=True)
    top = result.most_forgotten[0]
    assert top.text == base.tokenizer.decode(blocks[top.block].tolist())


def test_nan_logits_are_not_passed_silently(base_and_tuned):
    base, tuned, blocks = base_and_tuned
    reference = build_reference(base.model, base.tokenizer, blocks, top_k=8, progress=False)
    broken = load_model(str(base.source_dir)).model
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError):
        evaluate_forgetting(broken, reference)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_ties_take_the_lowest_token_id(top_k):
    from forgetscale.topk import base_statistics

    logits = torch.tensor([[[0.0, 2.0, 1.0, 2.0, 2.0], [5.0, 1.0, 5.0, 0.0, 0.0]]])
    stats = base_statistics(logits, top_k)
    assert stats["target_ids"].tolist() == [[1, 0]]


def test_small_tails_keep_relative_precision():
    """A tail of 1e-9 must not be lost to 1 - sum(top-K) rounding."""
    from forgetscale.topk import base_statistics

    logits = torch.full((1, 1, 1000), -40.0)
    logits[0, 0, :3] = torch.tensor([0.0, -1.0, -2.0])
    stats = base_statistics(logits, 3)
    exact = torch.logsumexp(logits[0, 0, 3:].double(), 0) - torch.logsumexp(
        logits[0, 0].double(), 0
    )
    assert float(stats["tail_mass"][0, 0]) == pytest.approx(float(exact.exp()), rel=1e-4)
