"""Which parameters each method trains, and P counted by hand."""

from __future__ import annotations

import math

import pytest
from helpers import tiny_causal_lm, tiny_config

from forgetscale.errors import UserError
from forgetscale.training import train
from forgetscale.training.methods import apply_method

# ------------------------------------------------------------------------------------------
# methods and P


# Tiny Llama: hidden 32, intermediate 64, 2 layers, 4 heads of 8, 2 KV heads.
# Linear (in -> out): q 32->32, k 32->16, v 32->16, o 32->32, gate 32->64, up 32->64, down 64->32.
# LoRA adds r*(in+out) per module.
@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"method": "lora", "rank": 4}, 2 * 4 * (64 + 48 + 48 + 64 + 96 + 96 + 96)),
        ({"method": "lora", "rank": 8, "target_modules": "attention"}, 2 * 8 * (64 + 48 + 48 + 64)),
        ({"method": "lora", "rank": 2, "target_modules": "mlp"}, 2 * 2 * (96 + 96 + 96)),
        ({"method": "lora", "rank": 4, "layers": [1]}, 1 * 4 * 512),
        ({"method": "lora", "rank": 4, "target_modules": ["q_proj", "v_proj"]}, 2 * 4 * (64 + 48)),
        # IA3: a vector of out_features per attention module, of in_features per MLP module
        ({"method": "ia3"}, 2 * ((32 + 16 + 16 + 32) + (32 + 32 + 64))),
        # one block: attention 32*32+32*16+32*16+32*32, MLP 3*32*64, two RMSNorms of 32
        ({"method": "top-layers", "top_k_layers": 1}, 3072 + 6144 + 64),
        # everything but the (untied) embeddings and head, which are reported apart: + final norm
        ({"method": "full"}, 2 * (3072 + 6144 + 64) + 32),
    ],
)
def test_parameter_count_matches_hand_count(tiny_model_dir, workdir, overrides, expected):
    from forgetscale.models import count_parameters

    model = apply_method(tiny_causal_lm(tiny_model_dir), tiny_config(workdir, **overrides))
    counts = count_parameters(model)
    assert counts.trainable_non_embedding == expected
    if overrides["method"] == "full":
        vocab = model.config.vocab_size
        assert counts.trainable_embedding == vocab * 32 and counts.trainable_head == vocab * 32
    else:
        assert counts.trainable_embedding == counts.trainable_head == 0


def test_rslora_scaling_is_on_by_default(tiny_model_dir, workdir):
    model = apply_method(tiny_causal_lm(tiny_model_dir), tiny_config(workdir, rank=4, alpha=16))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(16 / math.sqrt(4))
    model = apply_method(
        tiny_causal_lm(tiny_model_dir), tiny_config(workdir, rank=4, alpha=16, rslora=False)
    )
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(16 / 4)


def test_unknown_target_module_lists_the_models_modules(tiny_model_dir, workdir):
    with pytest.raises(UserError, match=r"unknown target module.*qkv.*down_proj.*q_proj"):
        apply_method(tiny_causal_lm(tiny_model_dir), tiny_config(workdir, target_modules=["qkv"]))
    with pytest.raises(UserError, match="out of range"):
        apply_method(tiny_causal_lm(tiny_model_dir), tiny_config(workdir, layers=[5]))


@pytest.mark.parametrize(
    "overrides",
    [
        {"method": "ia3", "learning_rate": 1e-2},
        {"method": "top-layers", "optimizer": "adafactor", "schedule": "cosine", "warmup_steps": 1},
        {"method": "full", "schedule": "linear", "grad_accumulation": 2},
        {"method": "lora", "gradient_checkpointing": True, "dropout": 0.1},
    ],
)
def test_each_method_trains(workdir, overrides):
    result = train(tiny_config(workdir, max_steps=3, eval_steps=[0, 3], **overrides))
    assert result.status == "finished"
    first, last = result.measurements
    assert first["kl"] == pytest.approx(0.0, abs=1e-6) and first["agreement"] == 1.0
    assert last["kl"] > 0 and last["train_loss"] > 0 and last["tokens_seen"] == 3 * 4 * 32


def test_grad_accumulation_matches_one_batch(workdir):
    a = train(tiny_config(workdir, max_steps=2, eval_steps=[2], store="a.db"))
    b = train(tiny_config(workdir, max_steps=2, eval_steps=[2], store="b.db", grad_accumulation=2))
    for key in ("finetune_loss", "forgetting_loss", "kl"):
        assert a.measurements[-1][key] == pytest.approx(b.measurements[-1][key], rel=1e-4)
