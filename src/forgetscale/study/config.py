"""What the analysis is asked to do (the study file's ``analysis:`` block) and the names
and thresholds every part of the study shares: the targets in report order, their
symbols, the measured metrics, and the acceptance ratios.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from forgetscale.errors import UserError

#: Laws fitted per target when the study file names none.
DEFAULT_LAWS: dict[str, list[str]] = {
    "forgetting_loss": ["linear", "multiplicative", "linear_multiplicative", "additive"],
    "finetune_loss": ["multiplicative", "additive"],
    "forgetting_loss_soft": ["multiplicative"],
}

#: Targets in the order the report shows them.
TARGET_ORDER = ("forgetting_loss", "forgetting_loss_soft", "finetune_loss", "kl", "disagreement")
SYMBOLS = {
    "finetune_loss": "L_ft",
    "forgetting_loss": "L_f (hard)",
    "forgetting_loss_soft": "L_f (soft)",
    "kl": "KL",
    "disagreement": "1 - agreement",
}
#: Measured columns shown for the base (step 0) and in the seed spread.
METRICS = ("forgetting_loss", "forgetting_loss_soft", "kl", "disagreement", "finetune_loss")
#: Config keys that do not change what a run measures (left out when grouping seeds).
#: The acceptance ratio of held-out to in-sample RMSE.
EXTRAPOLATION_RATIO = 2.0
#: The R^2 the linear law L_f(L_ft) should reach.
LINEAR_R2 = 0.9


def _cfg(default: Any = None, help: str = "", factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class AnalysisConfig:
    """The ``analysis:`` block of a study file: which laws, which held-out design.

    Every key is checked when the config is made; a bad value is a
    :class:`~forgetscale.errors.UserError` naming the key.
    """

    laws: dict[str, list[str]] = _cfg(
        help="laws to fit per target: {target: [law, ...]}. Targets: forgetting_loss, "
        "forgetting_loss_soft, finetune_loss, kl, disagreement; laws: linear (L_f as a "
        "function of L_ft), multiplicative, additive, linear_multiplicative (joint: L_f linear in a "
        "multiplicative L_ft), kalajdzievski (joint L_ft and L_f)",
        factory=lambda: {k: list(v) for k, v in DEFAULT_LAWS.items()},
    )
    min_step: int = _cfg(
        1, "steps below this are not fitted (step 0 is the base model; the paper used 50)"
    )
    holdout_runs: int = _cfg(
        1,
        "held-out runs: the runs of this many largest P values are left out of a second "
        "fit, which predicts them (0 = no held-out runs)",
    )
    holdout_steps: float = _cfg(
        0.25,
        "held-out steps: this fraction of every run's measured steps (the last ones) is "
        "left out of a third fit, which predicts them (0 = no held-out steps)",
    )
    bootstrap: int = _cfg(200, "bootstrap resamples of whole runs for the intervals (0 = none)")
    predict_ranks: list[int] = _cfg(
        help="LoRA ranks to predict (default: the powers of two from half the smallest to "
        "4x the largest rank run, that were not run)",
        factory=list,
    )
    seed: int = _cfg(0, "seed of the bootstrap")

    def __post_init__(self) -> None:
        from forgetscale.laws import get_law
        from forgetscale.laws.registry import TARGETS

        where = "analysis"
        laws = self.laws
        if not isinstance(laws, Mapping) or not laws:
            raise UserError(f"{where}.laws: give a mapping {{target: [law, ...]}}, got {laws!r}")
        clean: dict[str, list[str]] = {}
        for target, names in laws.items():
            if target not in TARGETS:
                raise UserError(
                    f"{where}.laws: unknown target {target!r}; use one of {', '.join(TARGETS)}"
                )
            if isinstance(names, str):
                names = [names]
            if not isinstance(names, Sequence) or not names:
                raise UserError(f"{where}.laws.{target}: give a non-empty list of law names")
            names = [str(n) for n in names]
            if len(set(names)) != len(names):
                raise UserError(f"{where}.laws.{target}: a law is named twice")
            for name in names:
                try:
                    law = get_law(name)
                except UserError as exc:
                    raise UserError(f"{where}.laws.{target}: {exc}") from None
                if target not in law.targets:
                    raise UserError(
                        f"{where}.laws.{target}: law {name!r} predicts "
                        f"{', '.join(law.targets)}, not {target}"
                    )
            clean[str(target)] = names
        object.__setattr__(self, "laws", clean)
        for key, low in (("min_step", 0), ("holdout_runs", 0), ("bootstrap", 0), ("seed", 0)):
            value = getattr(self, key)
            if not _is_int(value) or value < low:
                raise UserError(f"{where}.{key}: give an integer >= {low}, got {value!r}")
            object.__setattr__(self, key, int(value))
        hs = self.holdout_steps
        if isinstance(hs, bool) or not isinstance(hs, (int, float)) or not 0 <= hs < 1:
            raise UserError(f"{where}.holdout_steps: give a fraction in [0, 1), got {hs!r}")
        object.__setattr__(self, "holdout_steps", float(hs))
        ranks = self.predict_ranks
        if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
            raise UserError(f"{where}.predict_ranks: give a list of ranks, got {ranks!r}")
        if any(not _is_int(r) or r < 1 for r in ranks):
            raise UserError(f"{where}.predict_ranks: ranks are integers >= 1, got {list(ranks)!r}")
        object.__setattr__(self, "predict_ranks", sorted({int(r) for r in ranks}))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> AnalysisConfig:
        """The config from a study file's ``analysis:`` mapping (unknown keys refused)."""
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise UserError(f"analysis: give a mapping of keys, got {values!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"analysis: unknown key(s) {', '.join(map(str, unknown))}; known: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**dict(values))

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each key's help line."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
