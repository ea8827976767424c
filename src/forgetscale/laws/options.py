"""The options of a fit, checked when they are made, before any work.

Every number a user gives ``fit``, ``compare``, ``predict`` or the Python API is a field of
:class:`FitOptions` (its help, flag and bounds on the field, checked by the config machinery
every config shares, :mod:`forgetscale.config.fields`) or passes through
:func:`check_number` or :func:`check_values`: finite, of the right kind, in its range, or a
:class:`~forgetscale.errors.UserError` naming the option (its command-line flag and its
Python name) and what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from forgetscale.config.fields import check_bounds, check_fields, check_type, config_field
from forgetscale.errors import UserError
from forgetscale.laws.objective import HUBER_DELTA
from forgetscale.laws.table import Holdout

#: Upper limits that keep a typo from running for days.
MAX_BOOTSTRAP = 100_000
MAX_STARTS = 10_000
MAX_WORKERS = 1024
#: Seeds are numpy ``default_rng`` seeds: integers in [0, 2**63).
MAX_SEED = 2**63 - 1


def check_number(
    value: Any,
    name: str,
    *,
    integer: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
) -> float | int:
    """``value`` as a finite number (an ``int`` if ``integer``) within the bounds.

    ``minimum``/``maximum`` are inclusive, ``above`` is an exclusive lower bound;
    ``name`` is how the error names the input (e.g. ``"--min-step (min_step)"``).
    """
    value = check_type(name, value, int if integer else float)
    bounds = {"ge": minimum, "le": maximum, "gt": above}
    check_bounds(name, value, {k: v for k, v in bounds.items() if v is not None}, symbols=True)
    return value


def check_values(values: Any, name: str, *, above: float | None = None) -> np.ndarray:
    """``values`` (a number or a sequence) as a 1-d float array, all finite and > ``above``."""
    try:
        arr = np.atleast_1d(np.asarray(values, dtype=float))
    except (TypeError, ValueError):
        raise UserError(f"{name} must be numbers, got {values!r}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise UserError(f"{name} must be one or more numbers, got {values!r}")
    for v in arr:
        check_number(float(v), name, above=above)
    return arr


@dataclass(frozen=True)
class FitOptions:
    """How a law is fitted (``forgetscale fit``/``compare`` and :func:`fit_law`).

    Each field carries its help text, its command-line flag and its bounds
    (:func:`~forgetscale.config.fields.config_field`); they are checked when the options are
    made (:func:`~forgetscale.config.fields.check_fields`), and the commands' ``--help``
    reads the same help text. In Python, ``n_starts=None`` starts from every grid point.
    """

    min_step: float = config_field(
        1,
        "exclude steps below this (power laws in N always exclude step 0, the base model; "
        "the paper used 50)",
        flag="--min-step",
        ge=0,
    )
    holdout: Holdout | str | Sequence[str] | None = config_field(
        None,
        "rows the fit never sees: largest-P, largest-N or run ids (a Holdout); the result "
        "reports the error on them",
        flag="--holdout",
    )
    n_boot: int = config_field(
        0,
        "bootstrap resamples of whole runs for the confidence intervals (0 = none, else at "
        "least 2)",
        flag="--bootstrap",
        ge=0,
        le=MAX_BOOTSTRAP,
    )
    seed: int = config_field(0, "bootstrap seed", flag="--seed", ge=0, le=MAX_SEED)
    n_starts: int | None = config_field(
        10,
        "L-BFGS-B starts from the best grid points",
        flag="--starts",
        ge=1,
        le=MAX_STARTS,
    )
    delta: float = config_field(HUBER_DELTA, "Huber threshold on log residuals", gt=0)
    workers: int | None = config_field(
        None,
        "processes for the bootstrap (1 = serial; unset: all cores when it pays)",
        flag="--workers",
        ge=1,
        le=MAX_WORKERS,
    )

    def __post_init__(self) -> None:
        check_fields(self, symbols=True)
        if self.n_boot == 1:
            raise UserError("--bootstrap (n_boot) must be 0 (no intervals) or >= 2, got 1")
        object.__setattr__(self, "holdout", Holdout.parse(self.holdout))
