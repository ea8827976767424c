"""What the analysis is asked to do (the study file's ``analysis:`` block) and the names
and thresholds every part of the study shares: the targets in report order, their
symbols, the measured metrics, and the acceptance ratios.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from forgetscale import quantities
from forgetscale.config.fields import (
    check_field_values,
    coerce_value,
    config_field,
    config_from_mapping,
    fields_help_dict,
)
from forgetscale.errors import UserError
from forgetscale.laws.options import MAX_BOOTSTRAP, MAX_SEED

#: Laws fitted per target when the study file names none.
DEFAULT_LAWS: dict[str, list[str]] = {
    "forgetting_loss": ["linear", "multiplicative", "linear_multiplicative", "additive"],
    "finetune_loss": ["multiplicative", "additive"],
    "forgetting_loss_soft": ["multiplicative"],
}

#: Targets in the order the report shows them: the paper's three quantities first, then the
#: others a law may predict (:mod:`forgetscale.quantities`).
_LEAD = (
    *quantities.forgetting_losses(),
    *(t for t in quantities.losses() if t not in quantities.forgetting_losses()),
)
_TARGETS = {q.name: q for q in quantities.targets()}
TARGET_ORDER: tuple[str, ...] = (
    *(t for t in _LEAD if t in _TARGETS),
    *(t for t in _TARGETS if t not in _LEAD),
)
#: Each target's name in the report's text and tables.
SYMBOLS: dict[str, str] = {t: _TARGETS[t].short for t in TARGET_ORDER}
#: Measured columns shown for the base (step 0) and in the seed spread.
METRICS: tuple[str, ...] = quantities.summarised()
#: Config keys that do not change what a run measures (left out when grouping seeds).
#: The acceptance ratio of held-out to in-sample RMSE.
EXTRAPOLATION_RATIO = 2.0
#: The R^2 the linear law L_f(L_ft) should reach.
LINEAR_R2 = 0.9
#: Neighbouring P are told apart when their L_f (means over k seeds) differs by at least this
#: many times the noise of such a difference: the seed spread (the difference between two
#: seeds at a typical step) / sqrt(k).
TOLD_APART_RATIO = 2.0


@dataclass(frozen=True)
class AnalysisConfig:
    """The ``analysis:`` block of a study file: which laws, which held-out design.

    Every key is checked when the config is made (its type, its bounds, the laws and their
    targets); a bad value is a :class:`~forgetscale.errors.UserError` naming the key.
    """

    laws: dict[str, list[str]] = config_field(
        DEFAULT_LAWS,
        "laws to fit per target: {target: [law, ...]}. Targets: "
        + ", ".join(TARGET_ORDER)
        + "; laws: linear (L_f as a "
        "function of L_ft), multiplicative, additive, linear_multiplicative (joint: L_f linear in a "
        "multiplicative L_ft), kalajdzievski (joint L_ft and L_f)",
    )
    min_step: int = config_field(
        1, "steps below this are not fitted (step 0 is the base model; the paper used 50)", ge=0
    )
    holdout_runs: int = config_field(
        1,
        "held-out runs: the runs of this many largest P values are left out of a second "
        "fit, which predicts them (0 = no held-out runs)",
        ge=0,
    )
    holdout_steps: float = config_field(
        0.25,
        "held-out steps: this fraction of every run's measured steps (the last ones) is "
        "left out of a third fit, which predicts them (0 = no held-out steps)",
        ge=0,
        lt=1,
    )
    bootstrap: int = config_field(
        200,
        f"bootstrap resamples of whole runs for the intervals (0 = none, else 2 to "
        f"{MAX_BOOTSTRAP:,})",
        ge=0,
        le=MAX_BOOTSTRAP,
    )
    predict_ranks: list[int] = config_field(
        [],
        "LoRA ranks to predict (default: the powers of two from half the smallest to "
        "4x the largest rank run, that were not run)",
        ge=1,
    )
    seed: int = config_field(0, "seed of the bootstrap", ge=0, le=MAX_SEED)

    def __post_init__(self) -> None:
        where = "analysis"
        for key, tp in (
            ("min_step", int),
            ("holdout_runs", int),
            ("bootstrap", int),
            ("seed", int),
            ("holdout_steps", float),
        ):
            object.__setattr__(self, key, _typed(f"{where}.{key}", getattr(self, key), tp))
        ranks = self.predict_ranks
        if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
            raise UserError(f"{where}.predict_ranks: give a list of ranks, got {ranks!r}")
        ranks = [_typed(f"{where}.predict_ranks", r, int) for r in ranks]
        object.__setattr__(self, "predict_ranks", sorted(set(ranks)))
        check_field_values(self, where)
        if self.bootstrap == 1:
            raise UserError(f"{where}.bootstrap must be 0 (no intervals) or at least 2, got 1")
        object.__setattr__(self, "laws", _checked_laws(self.laws, where))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> AnalysisConfig:
        """The config from a study file's ``analysis:`` mapping (unknown keys refused)."""
        return config_from_mapping(cls, values, "analysis")

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each key's help line."""
        return fields_help_dict(cls)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _typed(where: str, value: Any, tp: type) -> Any:
    """``value`` as ``tp`` (numpy integers and whole floats are integers; a bool is not)."""
    if isinstance(value, np.integer):
        value = int(value)
    if tp is int and isinstance(value, float) and not value.is_integer():
        raise UserError(f"{where} must be an integer, got {value!r}")
    return coerce_value(where, value, tp)


def _checked_laws(laws: Any, where: str) -> dict[str, list[str]]:
    """The ``laws:`` mapping, each target known and each law one that predicts it."""
    from forgetscale.laws import get_law
    from forgetscale.laws.registry import TARGETS

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
        if not all(isinstance(n, str) for n in names):
            raise UserError(f"{where}.laws.{target}: law names are strings, got {list(names)!r}")
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
        clean[str(target)] = list(names)
    return clean
