"""Model loading, adapters and the parameter count P."""

from __future__ import annotations

import pytest
from peft import LoraConfig, get_peft_model

from forgetscale.errors import UserError
from forgetscale.models import count_parameters, load_model


def test_load_local_folder_and_adapter(tiny_model_dir, tiny_lora_dir):
    loaded = load_model(str(tiny_model_dir))
    assert loaded.tokenizer.eos_token_id is not None
    assert not loaded.model.training
    tuned = load_model(str(tiny_model_dir), adapter=str(tiny_lora_dir))
    from peft import PeftModel

    assert isinstance(tuned.model, PeftModel)


def test_adapter_for_another_base_is_refused(other_tiny_model_dir, tiny_lora_dir):
    with pytest.raises(UserError, match="does not fit this model"):
        load_model(str(other_tiny_model_dir), adapter=str(tiny_lora_dir))


def test_missing_model_and_bad_dtype(tmp_path):
    with pytest.raises(UserError, match="model not found"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="not a model folder"):
        load_model(str(tmp_path))
    with pytest.raises(UserError, match="unknown dtype"):
        load_model("smollm2-135m", dtype="float8")


def test_lora_parameter_count_matches_a_hand_count(tiny_model_dir):
    model = load_model(str(tiny_model_dir)).model
    total = count_parameters(model).total
    assert count_parameters(model).trainable_non_embedding == total - 2 * 320 * 32
    rank = 4
    peft_model = get_peft_model(model, LoraConfig(r=rank, target_modules="all-linear"))
    # hand count: tiny Llama, hidden 32, MLP 64, 4 heads of 8, 2 KV heads -> k/v out 16
    shapes = {  # (in, out) of every linear layer in one decoder block
        "q": (32, 32), "k": (32, 16), "v": (32, 16), "o": (32, 32),
        "gate": (32, 64), "up": (32, 64), "down": (64, 32),
    }  # fmt: skip
    per_layer = sum(rank * (i + o) for i, o in shapes.values())
    counts = count_parameters(peft_model)
    assert counts.trainable_non_embedding == 2 * per_layer
    assert counts.trainable_embedding == 0 and counts.trainable_head == 0
    assert counts.total == total + 2 * per_layer


def test_trained_embeddings_are_reported_outside_p(tiny_model_dir):
    model = load_model(str(tiny_model_dir)).model
    for p in model.parameters():
        p.requires_grad_(False)
    model.get_input_embeddings().weight.requires_grad_(True)
    model.get_output_embeddings().weight.requires_grad_(True)
    counts = count_parameters(model)
    assert counts.trainable_non_embedding == 0
    assert counts.trainable_embedding == 320 * 32
    assert counts.trainable_head == 320 * 32


def test_linear_module_names(tiny_model_dir):
    from forgetscale.training.methods import linear_modules

    names = sorted({m.leaf for m in linear_modules(load_model(str(tiny_model_dir)).model)})
    assert names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
