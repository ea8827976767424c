"""End to end on the embedded default: SmolLM2-135M-Instruct vs a LoRA trained a few steps on Shakespeare.

Slow: loads the 135M model and trains 4 LoRA steps on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def train_lora_on_shakespeare(out: Path, steps: int = 4) -> Path:
    """A rank-8 LoRA on all linear layers, a few AdamW steps on Shakespeare blocks."""
    from peft import LoraConfig, get_peft_model

    from forgetscale.corpus import load_documents, pack_documents
    from forgetscale.models import load_model

    torch.manual_seed(0)
    loaded = load_model("smollm2-135m", device="cpu")
    model = get_peft_model(
        loaded.model, LoraConfig(r=8, lora_alpha=16, use_rslora=True, target_modules="all-linear")
    )
    blocks = pack_documents(load_documents("shakespeare")[:2], loaded.tokenizer, 64)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for step in range(steps):
        batch = blocks[4 * step : 4 * step + 4]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out


def test_evaluate_base_vs_lora_on_the_embedded_default(tmp_path):
    adapter = train_lora_on_shakespeare(tmp_path / "lora")
    gens = tmp_path / "gens.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    argv = [
        sys.executable, "-m", "forgetscale", "evaluate", "--model", "smollm2-135m",
        "--adapter", str(adapter), "--suite", "probe", "--suite", "refusal", "--suite", "generations",
        "--limit", "12", "--max-new-tokens", "24", "--cache-dir", str(tmp_path / "cache"),
        "--generations-out", str(gens), "--json",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    suites = {s["suite"]: {m["metric"]: m for m in s["metrics"]} for s in report["suites"]}
    probe = suites["probe"]
    assert probe["acc"]["base"]["n"] == 12
    assert probe["acc"]["base"]["value"] >= 0.5  # the base knows its Python docs (4 choices)
    assert probe["agreement"]["base"]["value"] == 1.0
    refusal = suites["refusal"]
    assert refusal["refusal_rate"]["base"]["n"] == 12
    assert refusal["over_refusal_rate"]["base"]["n"] == 12
    rows = [json.loads(line) for line in gens.read_text().splitlines()]
    assert len(rows) == 12 + 12 + 12
    assert all(r["base"] for r in rows)  # the instruct model answers every prompt
    # second run: the base side comes from the cache and the numbers are the same
    again = subprocess.run(argv, capture_output=True, text=True, timeout=1500, env=env)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert all(s["base_cached"] for s in second["suites"])
    assert [s["metrics"] for s in second["suites"]] == [s["metrics"] for s in report["suites"]]
