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


# ------------------------------------------------------------------------------------------
# torch_compile: regional compilation of the transformer blocks


def test_the_transformer_blocks_are_the_largest_stack_of_one_class():
    from forgetscale.kernels import transformer_blocks

    model = make_tiny_model(64)
    assert transformer_blocks(model) is model.model.layers
    assert transformer_blocks(_lora(make_tiny_model(64))) is not None  # inside PEFT's wrapper
    assert transformer_blocks(nn.Sequential(nn.Linear(2, 2))) is None


def test_a_compiled_run_measures_step_0_exactly_and_trains_like_eager(workdir):
    """The compiled blocks train within rounding of eager; evaluation stays eager, so the
    base's step-0 row is identical and the run id is the eager one's plus the key."""
    from helpers import tiny_config

    from forgetscale.kernels import compile_unavailable
    from forgetscale.training import train

    assert compile_unavailable(torch.device("cpu")) is None  # gcc is on every machine we test
    common = {"max_steps": 12, "eval_steps": [0, 6, 12], "learning_rate": 5e-3}
    logs = []
    eager = train(tiny_config(workdir, store="eager.db", **common), log=lambda m: None)
    compiled = train(
        tiny_config(workdir, store="compiled.db", torch_compile=True, **common), log=logs.append
    )
    assert any("2 blocks compiled (torch.compile)" in m for m in logs)
    assert eager.run_id != compiled.run_id
    first_e, first_c = eager.measurements[0], compiled.measurements[0]
    for key in ("finetune_loss", "forgetting_loss", "kl", "agreement"):
        assert first_c[key] == first_e[key]
    for row_e, row_c in zip(eager.measurements[1:], compiled.measurements[1:], strict=True):
        for key in ("finetune_loss", "forgetting_loss"):
            assert abs(row_c[key] - row_e[key]) < 2e-3 * abs(row_e[key]), (key, row_e, row_c)
    assert compiled.measurements[-1]["finetune_loss"] < first_c["finetune_loss"]


def test_without_a_compiler_a_compiled_run_says_so_and_trains_eagerly(workdir, monkeypatch):
    from helpers import tiny_config

    from forgetscale.training import train

    monkeypatch.setenv("PATH", str(workdir))  # no g++, c++ or clang++ on it
    monkeypatch.delenv("CXX", raising=False)
    common = {"max_steps": 3, "eval_steps": [0, 3]}
    logs = []
    compiled = train(
        tiny_config(workdir, store="c.db", torch_compile=True, **common), log=logs.append
    )
    assert any("torch_compile: no C++ compiler" in m and "training eagerly" in m for m in logs)
    eager = train(tiny_config(workdir, store="e.db", **common), log=lambda m: None)
    keys = ("finetune_loss", "forgetting_loss", "forgetting_loss_soft", "kl", "train_loss")
    for row_e, row_c in zip(eager.measurements, compiled.measurements, strict=True):
        assert [row_c[k] for k in keys] == [row_e[k] for k in keys]  # eager, bit for bit


def test_a_compiled_run_gives_the_same_numbers_after_other_runs_in_its_process(workdir):
    """A sweep's worker trains many ranks in one process: a compiled run's numbers must not
    depend on what that process compiled before (no shapes made dynamic, no recompile limit
    reached)."""
    from helpers import tiny_config

    from forgetscale.training import train

    common = {"max_steps": 4, "eval_steps": [0, 4], "torch_compile": True}
    first = train(tiny_config(workdir, store="a.db", rank=4, **common), log=lambda m: None)
    for rank in (1, 2, 8):
        train(tiny_config(workdir, store=f"r{rank}.db", rank=rank, **common), log=lambda m: None)
    again = train(tiny_config(workdir, store="b.db", rank=4, **common), log=lambda m: None)
    keys = ("finetune_loss", "forgetting_loss", "kl", "train_loss")
    assert [[r[k] for k in keys] for r in again.measurements] == [
        [r[k] for k in keys] for r in first.measurements
    ]


def test_compiled_blocks_train_with_plain_attention_on_the_cpu_and_evaluate_with_their_own():
    """On the CPU the compiled blocks attend with transformers' plain attention (faster than
    the fused kernel's backward at short sequences); evaluation switches the model back to
    its own attention, so its logits are the uncompiled model's, bit for bit."""
    from forgetscale.kernels import compile_blocks, eager_evaluation

    torch.manual_seed(0)
    model = _lora(make_tiny_model(64))
    reference = _lora(make_tiny_model(64))
    reference.load_state_dict(model.state_dict())
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    long_model = _lora(make_tiny_model(64))
    compile_blocks(long_model, torch.device("cpu"), sequence_length=1024)
    assert long_model.config._attn_implementation == "sdpa"  # long sequences: the fused kernel
    compiled, why = compile_blocks(model, torch.device("cpu"), sequence_length=16)
    assert compiled == 2 and why is None
    assert model.config._attn_implementation == "eager"  # training attends plainly
    with eager_evaluation(model), torch.no_grad():
        assert model.config._attn_implementation == "sdpa"
        assert torch.equal(model(input_ids=ids).logits, expected)
    assert model.config._attn_implementation == "eager"
    model.train()
    loss = model(input_ids=ids, labels=ids).loss  # a compiled training pass with it
    loss.backward()
    assert torch.isfinite(loss)
