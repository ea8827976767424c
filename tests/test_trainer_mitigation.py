"""Replay mixing and the KL-to-base penalty inside a real HF Trainer and a TRL SFTTrainer."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_causal_lm

from forgetscale.errors import UserError
from forgetscale.mitigation import replay_count
from forgetscale.trainer_mitigation import KLToBase, ReplayMixture, update_size, with_kl_to_base

T = 24


def _lumped_kl_float64(base_logits, logits, k):
    """KL(base || model) over the base's top-k tokens + one lumped tail, all in float64."""
    logp = torch.log_softmax(base_logits.double(), -1)
    logq = torch.log_softmax(logits.double(), -1)
    top = logp.topk(k, -1).indices
    p_top, q_top = logp.gather(-1, top).exp(), logq.gather(-1, top).exp()
    p_tail, q_tail = 1 - p_top.sum(-1), 1 - q_top.sum(-1)
    return (p_top * (p_top.log() - q_top.log())).sum(-1) + p_tail * (p_tail.log() - q_tail.log())


@pytest.fixture
def parts(workdir, tiny_model_dir):
    """Tokenizer, task examples (packed task blocks), replay blocks and their KL reference."""
    from forgetscale.corpus import pack_documents
    from forgetscale.models import load_tokenizer
    from forgetscale.reference import build_reference

    tok = load_tokenizer(str(tiny_model_dir))
    task = [json.loads(line)["text"] for line in (workdir / "task.jsonl").open()]
    general = [json.loads(line)["text"] for line in (workdir / "general.jsonl").open()]
    task_blocks = pack_documents(task, tok, T)[:40]
    replay = pack_documents(general, tok, T)[:30]
    examples = [{"input_ids": b.tolist(), "labels": b.tolist()} for b in task_blocks]
    ref = build_reference(tiny_causal_lm(tiny_model_dir), tok, replay, top_k=16, progress=False)
    return tok, examples, replay, ref


def _args(tmp_path, name, *, steps=3, per_device=4, accumulation=1, **extra):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(tmp_path / name), max_steps=steps, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation, learning_rate=5e-3, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, **extra,
    )  # fmt: skip


def _lora(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules="all-linear")
    return get_peft_model(tiny_causal_lm(tiny_model_dir), config)


def _trained(trainer):
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


class _Seen:
    """A Trainer callback recording, per update, the KL positions the trainer counted."""

    def __init__(self):
        from transformers import TrainerCallback

        seen = self.positions = []

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                seen.append(
                    getattr(kwargs["model"]._forgetscale_trainer, "_kl_update_positions", None)
                )

        self.callback = Callback()


# ------------------------------------------------------------------------------------------
# the mixture and the penalty on their own


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.25, 0.5])
def test_each_update_of_the_mixture_holds_exactly_its_replay_blocks(parts, fraction):
    _, examples, replay, _ = parts
    mixture = ReplayMixture(examples, replay, fraction=fraction, update_size=8, seed=3, steps=20)
    items = list(mixture)
    assert len(items) == len(mixture) == 160
    replay_rows = {tuple(b.tolist()) for b in replay}
    for step in range(20):
        update = items[step * 8 : (step + 1) * 8]
        n = sum(tuple(e["input_ids"]) in replay_rows for e in update)
        assert n == replay_count(step, fraction, 8)
    total = sum(tuple(e["input_ids"]) in replay_rows for e in items)
    assert total == round(fraction * 160)  # the long-run share is p exactly
    assert [e["input_ids"] for e in mixture.update(7)] == [e["input_ids"] for e in items[56:64]]


def test_bad_mixture_and_penalty_values_are_refused(parts):
    _, examples, replay, ref = parts
    for fraction in (-0.1, 1.0, float("nan")):
        with pytest.raises(UserError, match="replay fraction"):
            ReplayMixture(examples, replay, fraction=fraction, update_size=4)
    with pytest.raises(UserError, match="replay must be"):
        ReplayMixture(examples, replay[:0], fraction=0.1, update_size=4)
    for weight in (-1.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="KL weight"):
            KLToBase(ref, weight)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fraction": "0.1"}, "replay fraction must be a number"),
        ({"fraction": None}, "replay fraction must be a number"),
        ({"update_size": 2.5}, "update_size must be a whole number"),
        ({"update_size": None}, "update_size must be a whole number"),
        ({"update_size": float("nan")}, "update_size must be a whole number"),
        ({"seed": -1}, "seed must be in 0.."),
        ({"seed": "x"}, "seed must be a whole number"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"steps": "3"}, "steps must be a whole number"),
        ({"task": None}, "task must be a list of examples"),
        ({"replay": None}, "replay must be token blocks"),
        ({"replay": [[1, 2], [3]]}, "replay must be token blocks"),
        ({"replay": "float"}, "replay must hold token ids"),
    ],
)
def test_wrong_argument_types_are_clear_errors(parts, kwargs, match):
    _, examples, replay, ref = parts
    args = {"task": examples, "replay": replay, "fraction": 0.25, "update_size": 4, **kwargs}
    if args["replay"] == "float":
        args["replay"] = replay.float()
    with pytest.raises(UserError, match=match):
        ReplayMixture(args.pop("task"), args.pop("replay"), **args)


def test_wrong_penalty_and_trainer_arguments_are_clear_errors(parts):
    from transformers import Trainer

    from forgetscale.trainer_mitigation import with_kl_to_base

    *_, ref = parts
    for weight in ("0.1", None):
        with pytest.raises(UserError, match="KL weight must be a number"):
            KLToBase(ref, weight)
    with pytest.raises(UserError, match="reference must be a ReferenceCache or the path"):
        KLToBase(None, 0.1)
    with pytest.raises(UserError, match="takes a Trainer class"):
        with_kl_to_base(None)
    with pytest.raises(UserError, match="kl_penalty must be a KLToBase"):
        with_kl_to_base(Trainer)(model=torch.nn.Linear(2, 2), kl_penalty=0.1)


def test_the_kl_term_equals_an_independent_float64_computation(parts, tiny_model_dir):
    tok, examples, replay, ref = parts
    base, model = tiny_causal_lm(tiny_model_dir), tiny_causal_lm(tiny_model_dir)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    # a batch of two task rows and two replay rows, right-padded to T + 3; one replay row with
    # its first two targets masked
    rows = [torch.tensor(examples[0]["input_ids"]), replay[5], torch.tensor(examples[1]["input_ids"]), replay[2]]  # fmt: skip
    ids = torch.stack([torch.cat([r, torch.zeros(3, dtype=torch.long)]) for r in rows])
    labels = ids.clone()
    labels[:, T:] = -100
    labels[3, 1:3] = -100
    mask = (labels != -100).long()
    mask[3] = 1
    mask[3, T:] = 0
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        base_logits = base(input_ids=ids).logits
    ours, n = KLToBase(ref, 1.0).kl_sum(logits, ids, labels, mask)
    per = _lumped_kl_float64(base_logits[[1, 3], : T - 1], logits[[1, 3], : T - 1], 16)
    keep = labels[[1, 3], 1:T] != -100
    assert n == 2 * (T - 1) - 2 == int(keep.sum())
    exact = float(per[keep].sum())
    assert exact > 1e-3
    assert abs(float(ours) - exact) <= 1e-5 * exact


# ------------------------------------------------------------------------------------------
# inside a real Trainer


def _trainer(tmp_path, tiny_model_dir, parts, name, *, weight, fraction=0.25, cls=None, **kw):
    from transformers import Trainer

    _, examples, replay, ref = parts
    args = _args(tmp_path, name, **kw)
    mixture = ReplayMixture(
        examples, replay, fraction=fraction, update_size=update_size(args), seed=0,
        steps=args.max_steps,
    )  # fmt: skip
    seen = _Seen()
    model = _lora(tiny_model_dir)
    trainer = (cls or with_kl_to_base(Trainer))(
        model=model, args=args, train_dataset=mixture, callbacks=[seen.callback],
        **({} if cls is not None else {"kl_penalty": KLToBase(ref, weight)}),
    )  # fmt: skip
    model._forgetscale_trainer = trainer
    return trainer, seen


def test_the_penalty_and_the_mixture_in_a_real_trainer(tmp_path, tiny_model_dir, parts):
    from transformers import Trainer

    plain, _ = _trainer(tmp_path, tiny_model_dir, parts, "plain", weight=0.0, cls=Trainer)
    plain.kl_penalty = None
    zero, _ = _trainer(tmp_path, tiny_model_dir, parts, "zero", weight=0.0)
    kl, seen = _trainer(tmp_path, tiny_model_dir, parts, "kl", weight=2.0)
    p_plain, p_zero, p_kl = _trained(plain), _trained(zero), _trained(kl)
    assert all(torch.equal(p_plain[n], p_zero[n]) for n in p_plain)  # weight 0 is the plain run
    assert max(float((p_plain[n] - p_kl[n]).abs().max()) for n in p_plain) > 1e-4
    # every update's replay blocks (and only those) were found in the reference
    assert seen.positions == [replay_count(s, 0.25, 4) * (T - 1) for s in range(3)]
    logged = [e for e in kl.state.log_history if "train_kl" in e]
    assert [e["step"] for e in logged] == [1, 2, 3]
    assert logged[0]["train_kl"] == pytest.approx(0.0, abs=1e-6)  # step 1 sees the base model
    assert logged[-1]["train_kl"] > 0


def test_gradient_accumulation_gives_the_same_update(tmp_path, tiny_model_dir, parts):
    one, _ = _trainer(tmp_path, tiny_model_dir, parts, "one", weight=5.0, fraction=0.5, steps=2)
    two, seen = _trainer(
        tmp_path, tiny_model_dir, parts, "two", weight=5.0, fraction=0.5, steps=2,
        per_device=2, accumulation=2,
    )  # fmt: skip
    a, b = _trained(one), _trained(two)
    assert seen.positions == [2 * (T - 1)] * 2  # the replay rows all lie in the second micro-batch
    assert max(float((a[n] - b[n]).abs().max()) for n in a) < 2e-5


# ------------------------------------------------------------------------------------------
# inside TRL's SFTTrainer


def test_the_penalty_and_the_mixture_in_trl_sft_trainer(tmp_path, tiny_model_dir, parts):
    trl = pytest.importorskip("trl")
    pytest.importorskip("datasets")
    from peft import LoraConfig

    tok, examples, replay, ref = parts
    tok.pad_token = tok.eos_token
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "sft"), max_steps=3, per_device_train_batch_size=4,
        learning_rate=5e-3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        disable_tqdm=True, max_length=T, dataset_kwargs={"skip_prepare_dataset": True},
    )  # fmt: skip
    mixture = ReplayMixture(
        examples, replay, fraction=0.25, update_size=update_size(args), seed=0, steps=3
    )
    seen = _Seen()
    trainer = with_kl_to_base(trl.SFTTrainer)(
        model=tiny_causal_lm(tiny_model_dir), args=args, train_dataset=mixture.as_hf_dataset(),
        processing_class=tok, peft_config=LoraConfig(r=4, target_modules="all-linear"),
        callbacks=[seen.callback], kl_penalty=KLToBase(ref, 1.0),
    )  # fmt: skip
    trainer.model._forgetscale_trainer = trainer
    trainer.train()
    assert seen.positions == [replay_count(s, 0.25, 4) * (T - 1) for s in range(3)]
    logged = [e for e in trainer.state.log_history if "train_kl" in e]
    assert len(logged) == 3 and logged[-1]["train_kl"] > 0
    assert all(e["loss"] > 0 for e in logged)
