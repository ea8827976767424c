"""``forgetscale.measure``: forgetting of a model (optionally + adapter) against a reference.

The library entry point behind ``forgetscale measure``; a thin composition of
:func:`forgetscale.models.load_model`, :meth:`ReferenceCache.load` and
:func:`forgetscale.metrics.evaluate_forgetting`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from forgetscale.metrics import ForgettingResult, evaluate_forgetting
from forgetscale.models import load_model
from forgetscale.reference import ReferenceCache


class PrecisionWarning(UserWarning):
    """The model runs in another dtype than the reference was built in."""


def measure(
    model: str | nn.Module,
    reference: str | os.PathLike[str] | ReferenceCache,
    *,
    adapter: str | None = None,
    tokenizer: Any = None,
    dtype: str = "float32",
    batch_size: int = 8,
    max_blocks: int | None = None,
    report_blocks: int = 5,
    trust_remote_code: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> ForgettingResult:
    """Measure how much ``model`` has forgotten of the base behind ``reference``.

    Args:
        model: a model spec (embedded name, folder, .gguf, hub id) or a loaded model.
        reference: a reference file from ``forgetscale reference`` or a loaded cache.
        adapter: a PEFT adapter folder to apply to ``model`` (when it is a spec).
        tokenizer: the tokenizer of a loaded ``model`` (checked against the reference,
            and used to show the text of the most-forgotten blocks).
        dtype: ``float32`` or ``bfloat16`` when loading ``model`` from a spec.
        batch_size: blocks per forward pass.
        max_blocks: evaluate only the first ``max_blocks`` blocks.
        report_blocks: number of most-forgotten blocks to return.
        trust_remote_code: allow hub model code (off unless asked).
        device: where to run a model loaded from a spec (``auto``: CUDA if present).
        progress: show a progress bar.

    Example:
        >>> import forgetscale
        >>> result = forgetscale.measure("./my-finetune", "pydoc.ref.safetensors")
        >>> result.forgetting_loss, result.kl, result.agreement
    """
    reference_path = None
    if not isinstance(reference, ReferenceCache):
        reference_path = str(Path(reference))
        reference = ReferenceCache.load(reference)
    if isinstance(model, str):
        loaded = load_model(
            model,
            adapter=adapter,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            device=device,
        )
        model, tokenizer = loaded.model, loaded.tokenizer
    if tokenizer is not None:
        reference.check_compatible(tokenizer, model)
    model_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    ref_dtype = reference.fingerprint.get("dtype")
    if ref_dtype and model_dtype != ref_dtype:
        warnings.warn(
            f"the model runs in {model_dtype} but the reference was built in {ref_dtype}: "
            "precision alone moves the base's own top-1 token on a few percent of positions, "
            "the same order as the forgetting measured",
            PrecisionWarning,
            stacklevel=2,
        )
    return evaluate_forgetting(
        model,
        reference,
        batch_size=batch_size,
        max_blocks=max_blocks,
        progress=progress,
        tokenizer=tokenizer,
        report_blocks=report_blocks,
        reference_path=reference_path,
    )
