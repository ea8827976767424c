"""The float32 GEMM for bfloat16 linear layers (forgetscale.kernels) on tiny random models."""

from __future__ import annotations

import warnings

import torch
from conftest import make_tiny_model
from torch import nn

from forgetscale.kernels import native_bfloat16_gemm, use_float32_gemm


def _lora(model):
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(
            model,
            LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules="all-linear"),
        )


def _train(model, batches):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for batch in batches:
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        assert all(p.grad.dtype is p.dtype for p in params)  # PEFT keeps LoRA in float32
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_bfloat16_training_through_the_float32_gemm_stays_bfloat16_and_matches():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 320, (4, 16), generator=g)] * 4  # one batch: the loss falls
    runs = []
    for patched in (False, True):
        torch.manual_seed(0)
        model = _lora(make_tiny_model(320).to(torch.bfloat16))
        n_linear = sum(
            type(m) is nn.Linear and m.weight.dtype is torch.bfloat16 for m in model.modules()
        )
        if patched:
            assert use_float32_gemm(model, even_with_native=True) == n_linear
            before = {id(m): m.forward for m in model.modules() if hasattr(m.forward, "__func__")}
            assert use_float32_gemm(model, even_with_native=True) == n_linear  # idempotent
            after = {id(m): m.forward for m in model.modules() if hasattr(m.forward, "__func__")}
            assert after.keys() == before.keys()
            assert all(after[k].__func__ is f.__func__ for k, f in before.items())
        keys = sorted(model.state_dict())
        runs.append((_train(model, batches), keys, model))
    (plain, keys_plain, _), (ours, keys_ours, model) = runs
    assert keys_plain == keys_ours  # nothing added to what is saved
    assert all(p.dtype is torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    # the same training up to the float32 summation order: bfloat16 rounding, not a new run
    assert max(abs(a - b) for a, b in zip(plain, ours, strict=True)) < 0.02
    assert ours[-1] < ours[0]


def test_float32_models_and_cpus_with_a_bfloat16_gemm_are_left_alone():
    model = make_tiny_model(320)
    assert use_float32_gemm(model, even_with_native=True) == 0  # float32 layers
    bf16 = make_tiny_model(320).to(torch.bfloat16)
    n = use_float32_gemm(bf16)
    assert n == (0 if native_bfloat16_gemm() else sum(type(m) is nn.Linear for m in bf16.modules()))
