"""Learning-rate schedules and the data order."""

from __future__ import annotations

import pytest
import torch

from forgetscale.training.optim import batch_indices, lr_factor


def test_lr_schedules():
    assert [lr_factor(s, warmup=2, total=10, schedule="constant") for s in (0, 1, 5)] == [
        0.5,
        1.0,
        1.0,
    ]
    assert lr_factor(2, warmup=2, total=10, schedule="linear") == 1.0
    assert lr_factor(10, warmup=2, total=10, schedule="linear") == 0.0
    assert lr_factor(6, warmup=2, total=10, schedule="cosine") == pytest.approx(0.5)


def test_batch_indices_cover_each_epoch():
    seen = torch.cat([batch_indices(s, 10, 4, seed=3) for s in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(batch_indices(2, 10, 4, 3), batch_indices(2, 10, 4, 3))
    assert not torch.equal(batch_indices(0, 10, 4, 3), batch_indices(0, 10, 4, 4))
