"""Model loading, adapters and the parameter count P."""

from __future__ import annotations

import re

import pytest
from peft import LoraConfig, get_peft_model

from forgetscale.errors import UserError
from forgetscale.models import (
    count_parameters,
    load_model,
    resolve_device,
)


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


# ------------------------------------------------------------------------------------------
# devices the machine does not have


@pytest.mark.parametrize(
    "name, message",
    [
        ("gpu", "unknown device 'gpu'"),
        ("cuda:x", "unknown device 'cuda:x'"),
        ("", "unknown device ''"),
        ("meta", "device 'meta' is not supported"),
        ("xla", "device 'xla' is not supported"),
        ("cpu:3", "not a device here"),
    ],
)
def test_nonsense_devices_are_refused(name, message):
    with pytest.raises(UserError, match=re.escape(message)):
        resolve_device(name)


def test_devices_this_machine_lacks_are_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name in ("cuda", "cuda:0", "cuda:7"):
        with pytest.raises(UserError, match=f"device {name} asked for, but torch sees no CUDA"):
            resolve_device(name)
    with pytest.raises(UserError, match="device mps asked for, but torch sees no Apple MPS"):
        resolve_device("mps")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(
        UserError, match=re.escape("this machine has 2 CUDA GPUs (cuda:0 to cuda:1)")
    ):
        resolve_device("cuda:7")


def test_an_unavailable_device_is_refused_before_loading(tiny_model_dir, monkeypatch):
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    with pytest.raises(UserError, match="unknown device"):
        load_model(str(tiny_model_dir), device="nonsense")


# ------------------------------------------------------------------------------------------
# pickle-format weights are never unpickled


@pytest.fixture
def never_unpickle(monkeypatch):
    import pickle

    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_a_model_folder_with_pickle_weights_is_refused(tiny_model_dir, tmp_path, never_unpickle):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled-model"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    state = load_file(weights)
    weights.unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="holds only pickle-format weights") as info:
        load_model(str(folder))
    message = str(info.value)
    assert "pytorch_model.bin" in message and "convert them to safetensors" in message
    assert "\n" not in message


def test_an_adapter_with_pickle_weights_is_refused(
    tiny_model_dir, tiny_lora_dir, tmp_path, never_unpickle
):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled-lora"
    shutil.copytree(tiny_lora_dir, folder)
    weights = folder / "adapter_model.safetensors"
    state = load_file(weights)
    weights.unlink()
    torch.save(state, folder / "adapter_model.bin")
    with pytest.raises(UserError, match=r"adapter folder .* holds only pickle-format weights"):
        load_model(str(tiny_model_dir), adapter=str(folder))
