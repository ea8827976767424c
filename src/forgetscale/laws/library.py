"""The built-in laws: ``linear``, ``additive``, ``multiplicative``, ``kalajdzievski``,
``linear_multiplicative``, and with the replay fraction p as a variable ``replay_power``
and ``replay_multiplicative``.

This module only defines them (:data:`BUILTIN_LAWS`); :mod:`forgetscale.laws`
registers them when it is imported.

Notation: P = ``params_trained`` (trainable non-embedding parameters), N = ``step``
(optimizer updates), L_ft = ``finetune_loss``, L_f = ``forgetting_loss``, p =
``replay_fraction`` (the share of each update's blocks drawn from replay data).

Sign rule (docs/design.md, "The laws (names used by the CLI)"): the fine-tuning loss *falls* with P and N
towards its floor E, so the power terms are added; every forgetting quantity
(L_f hard and soft, KL, 1 - agreement) *rises* with P and N towards its ceiling E,
so the same terms are subtracted (:attr:`Target.rises <forgetscale.laws.registry.Target>`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from forgetscale.laws.presets import TABLE1
from forgetscale.laws.registry import TARGETS, Law, Param

FT, F = "finetune_loss", "forgetting_loss"
#: Targets that rise with P and N (every forgetting quantity).
RISING = tuple(t.name for t in TARGETS.values() if t.rises)
#: Targets that fall with P and N.
FALLING = tuple(t.name for t in TARGETS.values() if not t.rises)


def _sign(target: str) -> float:
    """+1 for falling targets (power terms added), -1 for rising ones (subtracted)."""
    return -1.0 if TARGETS[target].rises else 1.0


def _geomean(x: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(x))))


def _floor_grid(data: Mapping[str, np.ndarray], target: str) -> tuple[float, ...]:
    """Starting values for the asymptote E, relative to the observed losses."""
    y = data[target]
    if not TARGETS[target].rises:
        return tuple(float(f * y.min()) for f in (0.5, 0.8, 0.95))
    return tuple(float(f * y.max()) for f in (1.02, 1.15, 1.5))


# --------------------------------------------------------------------------- linear


def _linear(theta: Mapping[str, Any], X: Mapping[str, np.ndarray], target: str) -> np.ndarray:
    return theta["s_f_ft"] - theta["c_f_ft"] * X[FT]


def _linear_jac(theta, X, target):
    return {"s_f_ft": np.ones_like(X[FT]), "c_f_ft": -X[FT]}


def _linear_grid(data, target):
    y = data[target]
    slope, intercept = np.polyfit(data[FT], y, 1) if np.ptp(data[FT]) > 0 else (0.0, 1.0)
    c = float(np.clip(-slope, -50.0, 50.0))
    s = float(np.clip(intercept, 1e-3, 99.0))
    return {"s_f_ft": (s, 1.0, 3.0), "c_f_ft": (c, 0.5, 1.5)}


LINEAR = Law(
    name="linear",
    description=(
        "Forgetting is linear in the fine-tuning loss (paper Eq. 4, Fig. 2): the lower "
        "the fine-tuning loss, the more the model forgets. Fits any forgetting "
        "quantity (--target) against L_ft."
    ),
    params=(
        Param("s_f_ft", 1e-6, 100.0, grid=(1.0, 3.0), doc="L_f when L_ft = 0 (intercept)"),
        Param(
            "c_f_ft",
            -100.0,
            100.0,
            grid=(0.5, 1.5),
            log=False,
            doc="forgetting per unit fine-tuning loss (minus the slope)",
        ),
    ),
    variables=(FT,),
    targets=RISING,
    formula={t: f"{TARGETS[t].symbol} = s_f_ft - c_f_ft * L_ft" for t in RISING},
    predict=_linear,
    jacobian=_linear_jac,
    power_law=False,
    min_distinct={FT: 2},
    grid_fn=_linear_grid,
)

# ------------------------------------------------------------------------- additive


def _additive(theta, X, target):
    P, N = X["params_trained"], X["step"]
    terms = theta["A"] * P ** -theta["alpha"] + theta["B"] * N ** -theta["beta"]
    return theta["E"] + _sign(target) * terms


def _additive_jac(theta, X, target):
    s = _sign(target)
    P, N = X["params_trained"], X["step"]
    tp = P ** -theta["alpha"]
    tn = N ** -theta["beta"]
    return {
        "E": np.ones_like(P),
        "A": s * tp,
        "alpha": -s * theta["A"] * tp * np.log(P),
        "B": s * tn,
        "beta": -s * theta["B"] * tn * np.log(N),
    }


_EXPONENTS = (0.05, 0.2, 0.5, 1.0)


def _additive_grid(data, target):
    return {
        "E": _floor_grid(data, target),
        "A": tuple(float(np.exp(v)) for v in (-2.0, 2.0, 6.0, 10.0, 14.0)),
        "alpha": _EXPONENTS,
        "B": tuple(float(np.exp(v)) for v in (-2.0, 0.0, 2.0, 4.0)),
        "beta": _EXPONENTS,
    }


_POWER_PARAMS = dict(
    E=Param("E", 1e-4, 100.0, grid=(1.0,), doc="asymptote as P, N -> infinity"),
    A=Param("A", 1e-8, 1e12, grid=(1.0,), doc="scale of the P term"),
    alpha=Param("alpha", 1e-4, 5.0, grid=(0.3,), doc="exponent in P"),
    B=Param("B", 1e-8, 1e12, grid=(1.0,), doc="scale of the N term"),
    beta=Param("beta", 1e-4, 5.0, grid=(0.3,), doc="exponent in N"),
)

ADDITIVE = Law(
    name="additive",
    description=(
        "Chinchilla-style sum of power laws in P and N (Hoffmann et al. 2022). For the "
        "forgetting targets the power terms are subtracted: L_f rises towards E."
    ),
    params=tuple(_POWER_PARAMS[k] for k in ("E", "A", "alpha", "B", "beta")),
    variables=("params_trained", "step"),
    targets=(F, *FALLING, *RISING[1:]),
    formula={
        t: f"{TARGETS[t].symbol} = E {'-' if TARGETS[t].rises else '+'} A * P^-alpha "
        f"{'-' if TARGETS[t].rises else '+'} B * N^-beta"
        for t in TARGETS
    },
    predict=_additive,
    jacobian=_additive_jac,
    min_distinct={"params_trained": 3, "step": 3},
    grid_fn=_additive_grid,
)

# ------------------------------------------------------------------- multiplicative


def _multiplicative(theta, X, target):
    P, N = X["params_trained"], X["step"]
    return theta["E"] + _sign(target) * theta["A"] * P ** -theta["alpha"] * N ** -theta["beta"]


def _multiplicative_jac(theta, X, target):
    s = _sign(target)
    P, N = X["params_trained"], X["step"]
    t = P ** -theta["alpha"] * N ** -theta["beta"]
    return {
        "E": np.ones_like(P),
        "A": s * t,
        "alpha": -s * theta["A"] * t * np.log(P),
        "beta": -s * theta["A"] * t * np.log(N),
    }


def _multiplicative_grid(data, target):
    return {
        "E": _floor_grid(data, target),
        "A": tuple(float(np.exp(v)) for v in (-2.0, 2.0, 6.0, 10.0, 14.0)),
        "alpha": _EXPONENTS,
        "beta": _EXPONENTS,
    }


MULTIPLICATIVE = Law(
    name="multiplicative",
    description=(
        "Product of power laws in P and N (Zhang et al., ICLR 2024). For the forgetting "
        "targets the power term is subtracted: L_f rises towards E."
    ),
    params=tuple(_POWER_PARAMS[k] for k in ("E", "A", "alpha", "beta")),
    variables=("params_trained", "step"),
    targets=(F, *FALLING, *RISING[1:]),
    formula={
        t: f"{TARGETS[t].symbol} = E {'-' if TARGETS[t].rises else '+'} A * P^-alpha * N^-beta"
        for t in TARGETS
    },
    predict=_multiplicative,
    jacobian=_multiplicative_jac,
    min_distinct={"params_trained": 3, "step": 3},
    grid_fn=_multiplicative_grid,
)

# ------------------------------------------------------------- linear_multiplicative


def _linear_multiplicative(theta, X, target):
    finetune = _multiplicative(theta, X, FT)
    if target == FT:
        return finetune
    return theta["s_f_ft"] - theta["c_f_ft"] * finetune


def _linear_multiplicative_jac(theta, X, target):
    j = _multiplicative_jac(theta, X, FT)
    zero = np.zeros_like(X["params_trained"])
    if target == FT:
        return {**j, "s_f_ft": zero, "c_f_ft": zero}
    c = theta["c_f_ft"]
    j = {k: -c * v for k, v in j.items()}
    j["s_f_ft"] = np.ones_like(zero)
    j["c_f_ft"] = -_multiplicative(theta, X, FT)
    return j


def _linear_multiplicative_grid(data, target):
    grid = _multiplicative_grid(data, FT)
    linear = _linear_grid(data, F)
    return {**grid, "s_f_ft": linear["s_f_ft"][:2], "c_f_ft": linear["c_f_ft"][:2]}


LINEAR_MULTIPLICATIVE = Law(
    name="linear_multiplicative",
    description=(
        "The paper's Eq. 4 (L_f linear in L_ft) composed with the multiplicative law "
        "for L_ft, fitted on both targets at once: L_f depends on P and N only through "
        "the fine-tuning loss, so the smoother L_ft carries the extrapolation."
    ),
    params=(
        *(_POWER_PARAMS[k] for k in ("E", "A", "alpha", "beta")),
        *LINEAR.params,
    ),
    variables=("params_trained", "step"),
    targets=(FT, F),
    formula={
        FT: "L_ft = E + A * P^-alpha * N^-beta",
        F: "L_f = s_f_ft - c_f_ft * (E + A * P^-alpha * N^-beta)",
    },
    predict=_linear_multiplicative,
    jacobian=_linear_multiplicative_jac,
    joint=True,
    min_distinct={"params_trained": 3, "step": 3},
    grid_fn=_linear_multiplicative_grid,
)

# --------------------------------------------------------------------- kalajdzievski


def _inner(theta, X, suffix):
    u = (theta["a" + suffix] / X["params_trained"]) ** theta["alpha" + suffix]
    v = (theta["b" + suffix] / X["step"]) ** theta["beta" + suffix]
    return u, v, u + v


def _kalajdzievski(theta, X, target):
    if target == FT:
        _, _, inner = _inner(theta, X, "_ft")
        return theta["c_ft"] * inner ** theta["rho"] + theta["s_ft"]
    _, _, inner = _inner(theta, X, "_f")
    shifted = theta["c_ft"] * inner ** theta["rho"] + theta["s_ft"]
    return theta["s_f_ft"] - theta["c_f_ft"] * shifted


def _kalajdzievski_jac(theta, X, target):
    suffix = "_ft" if target == FT else "_f"
    other = "_f" if target == FT else "_ft"
    P, N = X["params_trained"], X["step"]
    u, v, inner = _inner(theta, X, suffix)
    rho, c_ft = theta["rho"], theta["c_ft"]
    powered = inner**rho
    d_inner = c_ft * rho * inner ** (rho - 1.0)  # d(c_ft * I^rho) / dI
    zero = np.zeros_like(P)
    j = {
        "c_ft": powered,
        "s_ft": np.ones_like(P),
        "rho": c_ft * powered * np.log(inner),
        "a" + suffix: d_inner * u * theta["alpha" + suffix] / theta["a" + suffix],
        "alpha" + suffix: d_inner * u * np.log(theta["a" + suffix] / P),
        "b" + suffix: d_inner * v * theta["beta" + suffix] / theta["b" + suffix],
        "beta" + suffix: d_inner * v * np.log(theta["b" + suffix] / N),
        "a" + other: zero,
        "alpha" + other: zero,
        "b" + other: zero,
        "beta" + other: zero,
        "c_f_ft": zero,
        "s_f_ft": zero,
    }
    if target == F:
        c = theta["c_f_ft"]
        j = {k: -c * val for k, val in j.items()}
        j["c_f_ft"] = -(c_ft * powered + theta["s_ft"])
        j["s_f_ft"] = np.ones_like(P)
    return j


def _kalajdzievski_grid(data, target):
    """Starting points: the two published presets plus a data-scaled grid."""
    points = [dict(v) for v in TABLE1.values()]
    lft, lf = data[FT], data[F]
    slope, intercept = np.polyfit(lft, lf, 1) if np.ptp(lft) > 0 else (-1.0, 2.0 * lf.max())
    c_f_ft = float(np.clip(-slope, 0.05, 50.0))
    s_f_ft = float(np.clip(intercept, 1e-3, 99.0))
    a0, b0 = _geomean(data["params_trained"]), _geomean(data["step"])
    for rho in (1.0, 3.0, 7.7):
        for alpha in (0.04, 0.3):
            for beta in (0.12, 0.5):
                for a_scale in (1e-2, 1.0):
                    s_ft = 0.8 * float(lft.min())
                    # I = u + v ~ 2 at the data's centre; choose c_ft to hit the median loss
                    c_ft = max(float(np.median(lft)) - s_ft, 1e-3) / 2.0**rho
                    points.append(
                        {
                            "a_f": a0 * a_scale,
                            "a_ft": a0 * a_scale,
                            "b_f": b0,
                            "b_ft": b0,
                            "c_ft": c_ft,
                            "c_f_ft": c_f_ft,
                            "s_ft": s_ft,
                            "s_f_ft": s_f_ft,
                            "alpha_f": alpha,
                            "alpha_ft": alpha,
                            "beta_f": beta,
                            "beta_ft": beta,
                            "rho": rho,
                        }
                    )
    return points


KALAJDZIEVSKI = Law(
    name="kalajdzievski",
    description=(
        "The joint laws of Kalajdzievski (arXiv 2401.05605), fitted on both targets at "
        "once: shifted power laws in P and N for L_ft, and L_f linear in the same form "
        "with its own P and N constants. The form is RECONSTRUCTED from the constants "
        "published in the paper's Table 1 (the paper gives the constants, not one "
        "unambiguous formula); presets kalajdzievski:openorca and kalajdzievski:news "
        "carry those constants."
    ),
    params=(
        Param("a_f", 1e-3, 1e13, grid=(1e5,), doc="P scale of the forgetting term"),
        Param("a_ft", 1e-3, 1e13, grid=(1e4,), doc="P scale of the fine-tuning term"),
        Param("b_f", 1e-3, 1e8, grid=(30.0,), doc="N scale of the forgetting term"),
        Param("b_ft", 1e-3, 1e8, grid=(50.0,), doc="N scale of the fine-tuning term"),
        Param("c_ft", 1e-10, 1e4, grid=(0.002,), doc="multiplier of the power term"),
        Param("c_f_ft", 1e-4, 100.0, grid=(1.5,), doc="forgetting per unit L_ft"),
        Param("s_ft", 1e-6, 50.0, grid=(0.6,), doc="shift (floor) of L_ft"),
        Param("s_f_ft", 1e-6, 100.0, grid=(2.0,), doc="intercept of L_f vs L_ft"),
        Param("alpha_f", 1e-4, 5.0, grid=(0.04,), doc="P exponent, forgetting"),
        Param("alpha_ft", 1e-4, 5.0, grid=(0.04,), doc="P exponent, fine-tuning"),
        Param("beta_f", 1e-4, 5.0, grid=(0.12,), doc="N exponent, forgetting"),
        Param("beta_ft", 1e-4, 5.0, grid=(0.12,), doc="N exponent, fine-tuning"),
        Param("rho", 0.05, 20.0, grid=(7.7,), doc="outer exponent"),
    ),
    variables=("params_trained", "step"),
    targets=(FT, F),
    formula={
        FT: "L_ft = c_ft * [(a_ft/P)^alpha_ft + (b_ft/N)^beta_ft]^rho + s_ft",
        F: "L_f = s_f_ft - c_f_ft * (c_ft * [(a_f/P)^alpha_f + (b_f/N)^beta_f]^rho + s_ft)",
    },
    predict=_kalajdzievski,
    jacobian=_kalajdzievski_jac,
    joint=True,
    min_distinct={"params_trained": 3, "step": 3},
    grid_fn=_kalajdzievski_grid,
)

# ------------------------------------------------------------------- replay fraction p
#
# Bethune et al. (ICML 2025, "Scaling Laws for Forgetting during Finetuning with Pretraining
# Data Injection") model the pretraining loss after fine-tuning on D tokens of a model of
# size M with a fraction p of pretraining data injected as
#     L_pt = L_pt0 + A * D^beta / ((1 + B p) M)^alpha,
# multiplicative: injection scales the model's effective capacity by (1 + B p). Here the
# base model is fixed, D grows with the updates N (fixed tokens per update) and P, the
# trained parameters, makes forgetting *rise*, so the forgetting term is divided by (1 + B p)
# (Bethune's alpha on the capacity factor taken as 1: p enters through B alone).


def _replay_power(theta, X, target):
    N, p = X["step"], X["replay_fraction"]
    return theta["L0"] + theta["A"] * N ** theta["beta"] / (1.0 + theta["B"] * p)


def _replay_multiplicative(theta, X, target):
    P, N, p = X["params_trained"], X["step"], X["replay_fraction"]
    term = theta["A"] * (P / 1e6) ** theta["alpha"] * N ** theta["beta"]
    return theta["L0"] + term / (1.0 + theta["B"] * p)


def _replay_grid(data, target):
    y = data[target]
    return {
        "L0": tuple(float(f * y.min()) for f in (0.9, 0.98)),
        "A": tuple(float(np.exp(v)) for v in (-6.0, -3.0, 0.0)),
        "beta": (0.1, 0.4, 1.0),
        "B": (1.0, 10.0, 100.0, 1000.0),
    }


_REPLAY_PARAMS = dict(
    L0=Param("L0", 1e-4, 100.0, grid=(1.0,), doc="L_f of the base (N = 0)"),
    A=Param("A", 1e-10, 1e4, grid=(0.1,), doc="scale of the forgetting term"),
    alpha=Param("alpha", 1e-4, 5.0, grid=(0.2,), doc="exponent in P (P in millions)"),
    beta=Param("beta", 1e-4, 5.0, grid=(0.3,), doc="exponent in N"),
    B=Param("B", 1e-4, 1e6, grid=(10.0,), doc="replay efficiency: p divides forgetting by 1 + B p"),
)

REPLAY_POWER = Law(
    name="replay_power",
    description=(
        "Forgetting with replay at one P (after Bethune et al. 2025's multiplicative law): "
        "L_f rises from the base's L0 as a power of N, divided by (1 + B p) where p is the "
        "share of replay blocks per update. Needs two or more values of p."
    ),
    params=tuple(_REPLAY_PARAMS[k] for k in ("L0", "A", "beta", "B")),
    variables=("step", "replay_fraction"),
    targets=RISING,
    formula={t: f"{TARGETS[t].symbol} = L0 + A * N^beta / (1 + B p)" for t in RISING},
    predict=_replay_power,
    power_law=False,
    min_distinct={"step": 3, "replay_fraction": 2},
    grid_fn=_replay_grid,
)

REPLAY_MULTIPLICATIVE = Law(
    name="replay_multiplicative",
    description=(
        "Forgetting in P, N and the replay fraction p (after Bethune et al. 2025): "
        "L_f = L0 + A (P/1e6)^alpha N^beta / (1 + B p); the forgetting term grows with the "
        "trained parameters and the updates and replay divides it by (1 + B p)."
    ),
    params=tuple(_REPLAY_PARAMS[k] for k in ("L0", "A", "alpha", "beta", "B")),
    variables=("params_trained", "step", "replay_fraction"),
    targets=RISING,
    formula={
        t: f"{TARGETS[t].symbol} = L0 + A * (P/1e6)^alpha * N^beta / (1 + B p)" for t in RISING
    },
    predict=_replay_multiplicative,
    power_law=False,
    min_distinct={"params_trained": 2, "step": 3, "replay_fraction": 2},
    grid_fn=lambda data, target: {**_replay_grid(data, target), "alpha": (0.05, 0.3)},
)

#: The built-in laws, in the order ``forgetscale fit --help`` lists them.
BUILTIN_LAWS: tuple[Law, ...] = (
    LINEAR,
    ADDITIVE,
    MULTIPLICATIVE,
    KALAJDZIEVSKI,
    LINEAR_MULTIPLICATIVE,
    REPLAY_POWER,
    REPLAY_MULTIPLICATIVE,
)
