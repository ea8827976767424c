"""Scaling laws for forgetting: registry, fitting, bootstrap, presets, held-out
evaluation, prediction.

Laws (see :mod:`forgetscale.laws.library`): ``linear``, ``additive``,
``multiplicative`` and ``kalajdzievski`` (the paper's joint laws, reconstructed from
its published Table 1 constants, which ship as presets ``kalajdzievski:openorca``
and ``kalajdzievski:news``).

>>> from forgetscale.laws import fit_law, predict
>>> fit = fit_law("runs.csv", "additive", target="forgetting_loss", n_boot=200)
>>> predict(fit, params_trained=4e7, step=200)["forgetting_loss"]["value"]
>>> ev = evaluate_holdout("runs.csv", "multiplicative", "forgetting_loss", "largest-P")
>>> ev.rmse_held_out, ev.rmse_in_sample

Importing this package registers the built-in laws and the presets, once, before
any user code can look a law up or register its own
(:func:`~forgetscale.laws.registry.register_law`); the registry itself imports
nothing of the laws.
"""

from forgetscale.laws.fitfile import load_fit
from forgetscale.laws.fitting import FitResult, fit_law
from forgetscale.laws.holdout import HoldoutEvaluation, compare_laws, evaluate_holdout
from forgetscale.laws.library import BUILTIN_LAWS
from forgetscale.laws.prediction import predict
from forgetscale.laws.presets import PRESETS
from forgetscale.laws.registry import (
    Law,
    Param,
    get_law,
    get_preset,
    list_laws,
    list_presets,
    register_law,
    register_preset,
)
from forgetscale.laws.table import Holdout

for _law in BUILTIN_LAWS:
    register_law(_law)
for _law_name, _preset_name, _constants, _source in PRESETS:
    register_preset(_preset_name, _law_name, _constants, _source)

__all__ = [
    "FitResult",
    "Holdout",
    "HoldoutEvaluation",
    "Law",
    "Param",
    "compare_laws",
    "evaluate_holdout",
    "fit_law",
    "get_law",
    "get_preset",
    "list_laws",
    "list_presets",
    "load_fit",
    "predict",
    "register_law",
    "register_preset",
]
