"""Synthetic measurement tables drawn from a known law (for tests, docs and benchmarks).

>>> from forgetscale.laws.synthetic import synthetic_runs, lora_params
>>> df = synthetic_runs("kalajdzievski:openorca", noise=0.01, seed=0)

Each run is one P value (one LoRA rank); its rows are the measurement steps. Noise
is multiplicative: ``y * exp(noise * standard normal)``, i.e. ``noise`` is the
standard deviation of the log residual (0.01 = about 1%).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from forgetscale.laws.registry import Law, get_law, get_preset

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: LoRA ranks of the paper's sweep.
PAPER_RANKS: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
#: Measurement steps: every 10 steps up to the paper's 260.
DEFAULT_STEPS: tuple[int, ...] = tuple(range(10, 261, 10))


def lora_params(
    rank: int | np.ndarray,
    hidden: int = 4096,
    intermediate: int = 11008,
    layers: int = 32,
) -> int | np.ndarray:
    """Trainable parameters of LoRA rank ``rank`` on all attention and MLP linears.

    Defaults are Llama 2 7B (the paper's model): q, k, v, o are hidden x hidden and
    gate, up, down are hidden x intermediate; a rank-r adapter on a d_in x d_out
    matrix has r * (d_in + d_out) parameters. Rank 8 gives about 2.0e7, rank 256
    about 6.4e8.
    """
    per_layer = 4 * 2 * hidden + 3 * (hidden + intermediate)
    return (
        np.asarray(rank) * per_layer * layers if np.ndim(rank) else int(rank) * per_layer * layers
    )


def synthetic_runs(
    law: str | Law,
    params: Mapping[str, float] | None = None,
    *,
    targets: Sequence[str] | None = None,
    params_trained: Sequence[float] | None = None,
    steps: Sequence[int] = DEFAULT_STEPS,
    noise: float = 0.01,
    seed: int = 0,
    runs_per_p: int = 1,
    include_base: bool = False,
) -> pd.DataFrame:
    """A measurement table with the export columns, drawn from a law.

    Args:
        law: A law name (then give ``params``) or a preset such as ``kalajdzievski:openorca``.
        params: Parameter values (required unless ``law`` is a preset).
        targets: Targets to draw (default: the law's joint targets, or its first). Columns
            the law does not predict are filled with a placeholder: ``finetune_loss`` =
            1.0 if absent, ``forgetting_loss`` from L_f = 2 - L_ft if absent. A
            ``disagreement`` target is written as the export column ``agreement``
            (1 - disagreement), as the results store keeps it.
        params_trained: P values (default: :func:`lora_params` of the paper's ranks).
        steps: Measurement steps (>= 1).
        noise: Standard deviation of the multiplicative log-normal noise.
        seed: Random seed.
        runs_per_p: Independent runs (seeds) per P value.
        include_base: Also write a step-0 row per run (the base model; excluded by fits).
            Its finetune_loss is the law at step 1, its forgetting losses 0.9 x the
            run's smallest ones, its KL 0 and agreement 1 (the base has forgotten nothing).
    """
    import pandas as pd

    if params is None:
        spec, params, _ = get_preset(str(law))
    else:
        spec = law if isinstance(law, Law) else get_law(law)
    if not targets:
        primary = tuple(t for t in spec.targets if t in ("finetune_loss", "forgetting_loss"))
        targets = spec.targets if spec.joint else primary or spec.targets[:1]
    targets = tuple(targets)
    P_values = (
        list(params_trained)
        if params_trained is not None
        else list(lora_params(np.array(PAPER_RANKS)))
    )
    rng = np.random.default_rng(seed)
    steps_arr = np.asarray(steps, dtype=float)
    rows = []
    for i, P in enumerate(P_values):
        for r in range(runs_per_p):
            run = {
                "run_id": f"p{i}" + (f"-s{r}" if runs_per_p > 1 else ""),
                "params_trained": np.full(len(steps_arr), float(P)),
                "step": steps_arr.astype(int),
            }
            clean = {}
            if "finetune_loss" not in targets:
                clean["finetune_loss"] = np.ones(len(steps_arr))
            X = {"params_trained": run["params_trained"], "step": steps_arr}
            if "finetune_loss" in targets:
                clean["finetune_loss"] = np.asarray(spec.predict(params, X, "finetune_loss"))
            if spec.variables == ("finetune_loss",):
                X = {"finetune_loss": clean["finetune_loss"]}
            if "forgetting_loss" in targets:
                clean["forgetting_loss"] = np.asarray(spec.predict(params, X, "forgetting_loss"))
            else:
                clean["forgetting_loss"] = 2.0 - clean["finetune_loss"]
            for t in targets:
                if t not in clean:
                    clean[t] = np.asarray(spec.predict(params, X, t))
            for col, y in clean.items():
                y = np.broadcast_to(y, steps_arr.shape)
                run[col] = y * np.exp(noise * rng.standard_normal(len(y)))
            if "disagreement" in run:  # the store keeps agreement; fits derive 1 - agreement
                run["agreement"] = 1.0 - run.pop("disagreement")
            frame = pd.DataFrame(run)
            if include_base:
                base_ft = (
                    float(
                        spec.predict(
                            params, {"params_trained": float(P), "step": 1.0}, "finetune_loss"
                        )
                    )
                    if "finetune_loss" in spec.targets and "step" in spec.variables
                    else float(frame["finetune_loss"].max() * 1.2)
                )
                base = {
                    "run_id": run["run_id"],
                    "params_trained": float(P),
                    "step": 0,
                    "finetune_loss": base_ft,
                    "forgetting_loss": 0.9 * float(frame["forgetting_loss"].min()),
                }
                # the base against its own reference: no KL, full agreement
                if "kl" in frame:
                    base["kl"] = 0.0
                if "agreement" in frame:
                    base["agreement"] = 1.0
                if "forgetting_loss_soft" in frame:
                    base["forgetting_loss_soft"] = 0.9 * float(frame["forgetting_loss_soft"].min())
                frame = pd.concat([pd.DataFrame([base]), frame], ignore_index=True)
            rows.append(frame)
    df = pd.concat(rows, ignore_index=True)
    df["params_trained"] = df["params_trained"].astype("int64")
    return df
