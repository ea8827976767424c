"""Checkpoints: exact, pickle-free round trips."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_causal_lm, tiny_config

from forgetscale.training.checkpoint import (
    Progress,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from forgetscale.training.methods import apply_method
from forgetscale.training.optim import make_optimizer, make_scheduler


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_checkpoint_roundtrip_is_exact_and_pickle_free(
    tiny_model_dir, workdir, tmp_path, optimizer
):
    cfg = tiny_config(workdir, optimizer=optimizer, schedule="cosine", warmup_steps=2)
    model = apply_method(tiny_causal_lm(tiny_model_dir), cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    sched = make_scheduler(opt, cfg)
    x = torch.randint(0, 300, (2, 16))
    for _ in range(3):
        model(input_ids=x, labels=x).loss.backward()
        opt.step(), sched.step(), opt.zero_grad()
    save_checkpoint(tmp_path / "ck", "run-a", 3, model, opt, sched, Progress(tokens_seen=7))
    assert latest_checkpoint(tmp_path / "ck", "run-a").name == "step-000003"
    files = sorted(p.name for p in (tmp_path / "ck" / "step-000003").iterdir())
    assert files == [
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
        "trainable.safetensors",
    ]
    torch.manual_seed(123)  # a different RNG state, restored by the load
    model2 = apply_method(tiny_causal_lm(tiny_model_dir), cfg)
    params2 = [p for p in model2.parameters() if p.requires_grad]
    opt2 = make_optimizer(params2, cfg)
    sched2 = make_scheduler(opt2, cfg)
    state = load_checkpoint(tmp_path / "ck" / "step-000003", model2, opt2, sched2)
    assert state.progress == Progress(tokens_seen=7) and state.step == 3
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr()
    # one more identical step on both gives identical weights
    for m, o in ((model, opt), (model2, opt2)):
        m(input_ids=x, labels=x).loss.backward()
        o.step()
    for p1, p2 in zip(params, params2, strict=True):
        assert torch.equal(p1, p2)
