"""``forgetscale train`` end to end on the embedded default (slow: minutes on 2 CPU cores).

SmolLM2-135M-Instruct (from PyPI), Shakespeare fine-tuning, pydoc reference,
LoRA r=4 on all linear modules, 20 steps: L_ft falls and L_f rises from step 0.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from forgetscale.store import read_measurements

pytestmark = pytest.mark.slow

CONFIG = """\
model: smollm2-135m
task_data: shakespeare
forgetting_data: pydoc
method: lora
rank: 4
target_modules: all-linear
block_size: 64
batch_size: 4
learning_rate: 1.0e-3
max_steps: 20
eval_steps: [0, 5, 10, 20]
forgetting_max_tokens: 2048
heldout_max_tokens: 1024
seed: 0
store: results.db
"""


def test_lora_on_shakespeare_forgets_pydoc(tmp_path):
    (tmp_path / "run.yaml").write_text(CONFIG)
    proc = subprocess.run(
        [sys.executable, "-m", "forgetscale", "train", "run.yaml", "--progress=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr
    assert "P = " in proc.stderr and "finished after 20 steps" in proc.stdout
    df = read_measurements(tmp_path / "results.db")
    assert df.step.tolist() == [0, 5, 10, 20]
    first, last = df.iloc[0], df.iloc[-1]
    assert first.kl == pytest.approx(0.0, abs=1e-5) and first.agreement == 1.0
    assert last.finetune_loss < first.finetune_loss - 0.1  # learns Shakespeare
    assert last.forgetting_loss > first.forgetting_loss  # forgets some of its base behaviour
    assert last.kl > 0 and last.agreement < 1.0
    # P for SmolLM2-135M (30 blocks, hidden 576, MLP 1536, 9 heads of 64, 3 KV heads), r=4:
    # per block q,o: 4*(576+576), k,v: 4*(576+192), gate,up: 4*(576+1536), down: 4*(1536+576)
    per_block = 4 * (2 * 1152 + 2 * 768 + 3 * 2112)
    assert df.params_trained.iloc[0] == 30 * per_block

    export = subprocess.run(
        [sys.executable, "-m", "forgetscale", "export", "--from", "results.db"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    header = "run_id,method,rank,params_trained,replay_fraction,kl_weight,step"
    assert export.stdout.splitlines()[0].startswith(header)
