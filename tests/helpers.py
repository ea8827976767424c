"""Helpers shared by the training tests: the shipped minimal config and tiny-model configs."""

from __future__ import annotations

from pathlib import Path

from forgetscale.config import build_config

# the minimal config as shipped in configs/ (it must run as it is)
MINIMAL = (Path(__file__).resolve().parent.parent / "configs" / "minimal.yaml").read_text()


def tiny_config(workdir: Path, **overrides):
    """The minimal config (quiet, a small forgetting budget) with ``overrides``."""
    import yaml

    values = yaml.safe_load(MINIMAL)
    values.update(progress=False, forgetting_max_tokens=1024)
    values.update(overrides)
    return build_config(values, base_dir=workdir)


def tiny_causal_lm(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)
