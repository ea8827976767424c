"""The law registry: every scaling law is one :class:`Law` registered by name.

A law declares everything the fitter, the CLI and the plots need to know about it
(its parameters with bounds and starting grid, the columns it reads, the targets it
predicts, a printable formula), so adding a law is one :func:`register_law` call
and no edits anywhere else::

    register_law(Law(
        name="my_law",
        description="...",
        params=(Param("E", 1e-3, 20.0, grid=(0.5, 1.0, 2.0)), ...),
        variables=("params_trained", "step"),
        targets=("finetune_loss", "forgetting_loss"),
        formula={"finetune_loss": "L = E + ...", "forgetting_loss": "L = E - ..."},
        predict=my_function,
    ))

``predict(theta, X, target)`` gets ``theta`` as a mapping from parameter name to a
value (a float, or an array of shape ``(G, 1)`` when the fitter evaluates G
parameter vectors at once), ``X`` as a mapping from column name to an array of
shape ``(n,)``, and returns the predicted ``target`` (broadcast to ``(n,)`` or
``(G, n)``). It must be written with numpy operations only so that broadcasting
works. An optional ``jacobian(theta, X, target)`` returns ``{name: dy/dparam}``;
without it the fitter differentiates numerically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forgetscale import quantities
from forgetscale.errors import UserError
from forgetscale.quantities import Quantity

#: Columns (from the export table of the results store) that laws may read: the variables of
#: :mod:`forgetscale.quantities` (P, N, the replay fraction p, the KL weight) and L_ft.
VARIABLE_COLUMNS: tuple[str, ...] = (*(q.name for q in quantities.VARIABLES), "finetune_loss")


Target = Quantity
"""A quantity a law can predict (:class:`forgetscale.quantities.Quantity` with ``target``):
its ``name`` (``fit --target NAME``), ``symbol`` (in formulas and tables), ``rises`` (grows
with P and N, as forgetting does; the fine-tuning loss falls: power laws subtract their
power terms for rising targets, so the curve approaches its asymptote E from below) and
``help``."""

#: Everything a law may predict, by column name, from :mod:`forgetscale.quantities`. A
#: ``derived_from`` target (``disagreement``) is computed when a table lacks its column.
TARGETS: dict[str, Target] = {q.name: q for q in quantities.targets()}
#: Columns a law may predict.
TARGET_COLUMNS: tuple[str, ...] = tuple(TARGETS)

PredictFn = Callable[[Mapping[str, Any], Mapping[str, np.ndarray], str], np.ndarray]
JacobianFn = Callable[[Mapping[str, Any], Mapping[str, np.ndarray], str], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Param:
    """One parameter of a law.

    Attributes:
        name: Parameter name as printed and stored (e.g. ``"alpha"``).
        lower: Lower bound. Parameters with ``log=True`` need ``lower > 0``.
        upper: Upper bound.
        grid: Starting values (natural scale) for the initialisation grid. The
            fitter takes the Cartesian product over all parameters.
        log: Optimise ``log(value)`` instead of ``value`` (all positive parameters).
        doc: One line shown in ``forgetscale fit`` output and the docs.
    """

    name: str
    lower: float
    upper: float
    grid: tuple[float, ...]
    log: bool = True
    doc: str = ""

    def __post_init__(self) -> None:
        if self.log and self.lower <= 0:
            raise ValueError(f"parameter {self.name}: log-space parameters need lower > 0")
        if not self.lower < self.upper:
            raise ValueError(f"parameter {self.name}: need lower < upper")
        bad = [g for g in self.grid if not self.lower <= g <= self.upper]
        if bad or not self.grid:
            raise ValueError(f"parameter {self.name}: grid values must lie within the bounds")


@dataclass(frozen=True)
class Law:
    """A scaling law that can be fitted, predicted from and plotted.

    Attributes:
        name: Registry name used by the CLI (``--law NAME``).
        description: One paragraph for ``forgetscale fit --help`` and the docs.
        params: The parameters, in the order they are printed and stored.
        variables: Table columns the law reads (a subset of :data:`VARIABLE_COLUMNS`).
        targets: Columns the law can predict (a subset of :data:`TARGET_COLUMNS`).
        formula: Printable formula per target.
        predict: ``predict(theta, X, target) -> y`` written with numpy (see module doc).
        jacobian: Optional analytic ``{param: dy/dparam}``; numeric if ``None``.
        joint: If true the law is fitted on all its ``targets`` at once (shared
            parameters); otherwise one target is chosen per fit.
        power_law: The law is a power law in P and N (log axes in plots; step 0,
            where N^-beta is undefined, is excluded from its fits).
        min_distinct: Minimum number of distinct values per variable column that
            a fit needs (e.g. several P values to identify an exponent in P).
        grid_fn: Optional ``grid_fn(data, target)`` giving data-dependent starting
            points instead of the product of ``Param.grid``: either a mapping
            ``{param: starting values}`` (the fitter takes the product) or a list of
            complete starting points ``[{param: value}, ...]``. ``data`` maps column
            names to the arrays being fitted; ``target`` is ``None`` for joint laws.
    """

    name: str
    description: str
    params: tuple[Param, ...]
    variables: tuple[str, ...]
    targets: tuple[str, ...]
    formula: Mapping[str, str]
    predict: PredictFn
    jacobian: JacobianFn | None = None
    joint: bool = False
    power_law: bool = True
    min_distinct: Mapping[str, int] = field(default_factory=dict)
    grid_fn: Callable[[Any, str | None], Any] | None = None

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def __call__(self, theta: Mapping[str, Any], target: str, **variables: Any) -> np.ndarray:
        """Evaluate the law: ``law(theta, "forgetting_loss", params_trained=P, step=N)``."""
        if target not in self.targets:
            raise UserError(f"law {self.name!r} does not predict {target!r}")
        missing = [v for v in self.variables if v not in variables]
        if missing:
            raise UserError(f"law {self.name!r} needs {', '.join(missing)} to predict")
        X = {v: np.asarray(variables[v], dtype=float) for v in self.variables}
        return np.asarray(self.predict(theta, X, target), dtype=float)


_LAWS: dict[str, Law] = {}
_PRESETS: dict[str, tuple[str, dict[str, float], str]] = {}


def register_law(law: Law, *, override: bool = False) -> Law:
    """Add ``law`` to the registry and return it.

    The built-in laws are registered when :mod:`forgetscale.laws` is imported, so they
    are always there before user code runs. A name that is already registered is
    refused with a :class:`ValueError` unless ``override=True``, which replaces that
    law everywhere (its presets stay, and must name only parameters the new law has).
    """
    if ":" in law.name:
        raise ValueError("law names may not contain ':' (reserved for presets)")
    if law.name in _LAWS and not override:
        raise ValueError(
            f"law {law.name!r} is already registered; choose another name, or pass "
            f"override=True to replace it"
        )
    unknown = set(law.variables) - set(VARIABLE_COLUMNS)
    unknown |= set(law.targets) - set(TARGET_COLUMNS)
    if unknown:
        raise ValueError(f"law {law.name!r}: unknown columns {sorted(unknown)}")
    for full, (law_name, params, _) in _PRESETS.items():
        if law_name == law.name and set(params) != set(law.param_names):
            raise ValueError(
                f"law {law.name!r}: preset {full} has parameters {sorted(params)}, "
                f"the new law {sorted(law.param_names)}"
            )
    _LAWS[law.name] = law
    return law


def register_preset(name: str, law: str, params: Mapping[str, float], source: str) -> None:
    """Register published constants for the registered ``law`` under ``"law:name"``."""
    full = f"{law}:{name}"
    if law not in _LAWS:
        raise ValueError(f"preset {full}: no law {law!r} is registered")
    if full in _PRESETS:
        raise ValueError(f"preset {full} is already registered")
    spec = _LAWS[law]
    missing = set(spec.param_names) - set(params)
    if missing:
        raise ValueError(f"preset {full}: missing parameters {sorted(missing)}")
    _PRESETS[full] = (law, {k: float(params[k]) for k in spec.param_names}, source)


def get_law(name: str) -> Law:
    """Return the registered law ``name``; a :class:`UserError` lists the known ones."""
    if name in _LAWS:
        return _LAWS[name]
    if name in _PRESETS:
        return _LAWS[_PRESETS[name][0]]
    raise UserError(f"unknown law {name!r}; known laws: {', '.join(list_laws())}")


def get_preset(name: str) -> tuple[Law, dict[str, float], str]:
    """Return ``(law, constants, source)`` for a preset such as ``kalajdzievski:openorca``."""
    if name not in _PRESETS:
        known = ", ".join(sorted(_PRESETS))
        raise UserError(f"unknown preset {name!r}; known presets: {known}")
    law_name, params, source = _PRESETS[name]
    return _LAWS[law_name], dict(params), source


def list_laws() -> list[str]:
    """Names of the registered laws, in registration order."""
    return list(_LAWS)


def list_presets() -> list[str]:
    """Names of the registered presets (``law:name``)."""
    return sorted(_PRESETS)
