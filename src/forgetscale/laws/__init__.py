"""Scaling laws for forgetting: registry, fitting, bootstrap, presets, prediction.

Laws (see :mod:`forgetscale.laws.library`): ``linear``, ``additive``,
``multiplicative`` and ``kalajdzievski`` (the paper's joint laws, reconstructed from
its published Table 1 constants, which ship as presets ``kalajdzievski:openorca``
and ``kalajdzievski:news``).

>>> from forgetscale.laws import fit_law, predict
>>> fit = fit_law("runs.csv", "additive", target="forgetting_loss", n_boot=200)
>>> predict(fit, params_trained=4e7, step=200)["forgetting_loss"]["value"]
"""

from forgetscale.laws.fitting import FitResult, fit_law, load_fit, predict
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

__all__ = [
    "FitResult",
    "Law",
    "Param",
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
