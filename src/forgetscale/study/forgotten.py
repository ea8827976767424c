"""What was forgotten: the largest-rank run with a saved adapter measured again against
the reference, keeping the blocks of the forgetting corpus with the largest mean KL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from forgetscale.errors import UserError

#: How many of the most-forgotten blocks the report shows.
BLOCKS = 5


def most_forgotten(
    runs: list[dict[str, Any]], adapters: Mapping[str, str], reference: str
) -> dict[str, Any]:
    """The run of the largest P among ``adapters`` (``{run_id: adapter folder}``) measured
    with :func:`forgetscale.metrics.measure`: its metrics and its most-forgotten blocks."""
    from forgetscale.metrics import measure

    known = [r for r in runs if r["run_id"] in adapters]
    if not known:
        raise UserError("none of the runs given adapters is in the report")
    run = max(known, key=lambda r: (r["params_trained"] or 0, r["rank"] or 0))
    model = run["model"] or run["config"].get("model")
    if not model:
        raise UserError(f"run {run['label']} does not record its base model")
    result = measure(
        model,
        reference,
        adapter=adapters[run["run_id"]],
        dtype=run["dtype"] or "float32",
        report_blocks=BLOCKS,
        progress=False,
    )
    return {
        "run_id": run["run_id"],
        "label": run["label"],
        "adapter": str(adapters[run["run_id"]]),
        "reference": str(reference),
        "forgetting_loss": result.forgetting_loss,
        "forgetting_loss_soft": result.forgetting_loss_soft,
        "kl": result.kl,
        "agreement": result.agreement,
        "base_forgetting_loss": result.base_forgetting_loss,
        "blocks": [asdict(b) for b in result.most_forgotten],
    }
