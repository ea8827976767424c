"""ForgettingCallback inside a real HF Trainer and a TRL SFTTrainer."""

from __future__ import annotations

import json

import pytest

# ------------------------------------------------------------------------------------------
# the callback in a real HF Trainer


def test_forgetting_callback_in_hf_trainer(workdir, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from forgetscale import ForgettingCallback
    from forgetscale.corpus import pack_documents
    from forgetscale.models import load_tokenizer
    from forgetscale.reference import build_reference

    tok = load_tokenizer(str(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    general = [json.loads(line)["text"] for line in (workdir / "general.jsonl").open()]
    ref = build_reference(
        base, tok, pack_documents(general, tok, 32)[:16], top_k=16, progress=False
    )
    ref.save(tmp_path / "ref.safetensors")
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", use_rslora=True))
    task = [json.loads(line)["text"] for line in (workdir / "task.jsonl").open()]
    blocks = pack_documents(task, tok, 32)[:64]
    dataset = [{"input_ids": b, "labels": b} for b in blocks]
    callback = ForgettingCallback(reference=str(tmp_path / "ref.safetensors"), every=2)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(tmp_path / "out"),
            max_steps=4,
            per_device_train_batch_size=4,
            learning_rate=5e-3,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=dataset,
        callbacks=[callback],
    )
    trainer.train()
    logged = [e for e in trainer.state.log_history if "forgetting_loss" in e]
    assert [e["step"] for e in logged] == [0, 2, 4]
    assert logged[0]["forgetting_kl"] == pytest.approx(0.0, abs=1e-6)
    assert logged[0]["forgetting_agreement"] == 1.0
    assert logged[-1]["forgetting_kl"] > 0
    assert all("loss" in e for e in logged[1:])  # merged into the Trainer's own log entries
    assert len(callback.history) == 3


def test_forgetting_callback_in_trl_sft_trainer(workdir, tiny_model_dir, tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from forgetscale import ForgettingCallback
    from forgetscale.corpus import pack_documents
    from forgetscale.models import load_tokenizer
    from forgetscale.reference import build_reference

    tok = load_tokenizer(str(tiny_model_dir))
    tok.pad_token = tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    general = [json.loads(line)["text"] for line in (workdir / "general.jsonl").open()]
    ref = build_reference(base, tok, pack_documents(general, tok, 32)[:8], top_k=16, progress=False)
    texts = [json.loads(line)["text"][:200] for line in (workdir / "task.jsonl").open()]
    trainer = trl.SFTTrainer(
        model=base,
        args=trl.SFTConfig(
            output_dir=str(tmp_path / "sft"), max_steps=3, per_device_train_batch_size=4,
            learning_rate=5e-3, logging_steps=1, report_to=[], save_strategy="no",
            use_cpu=True, disable_tqdm=True, max_length=32,
        ),
        train_dataset=datasets.Dataset.from_dict({"text": texts}),
        processing_class=tok,
        peft_config=LoraConfig(r=4, target_modules="all-linear", use_rslora=True),
        callbacks=[ForgettingCallback(reference=ref, every=3)],
    )  # fmt: skip
    trainer.train()
    logged = [e for e in trainer.state.log_history if "forgetting_loss" in e]
    assert [e["step"] for e in logged] == [0, 3]
    assert logged[0]["forgetting_agreement"] == 1.0 and logged[1]["forgetting_kl"] > 0
