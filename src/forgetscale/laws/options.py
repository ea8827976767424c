"""The options of a fit, checked when they are made, before any work.

Every number a user gives ``fit``, ``compare``, ``predict`` or the Python API passes
through :func:`check_number` or :func:`check_values`: finite, of the right kind, in
its range, or a :class:`~forgetscale.errors.UserError` naming the option (its
command-line flag and its Python name) and what is wrong.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value}")
    if integer:
        if value != int(value):
            raise UserError(f"{name} must be an integer, got {value}")
        value = int(value)
    if minimum is not None and value < minimum:
        raise UserError(f"{name} must be >= {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise UserError(f"{name} must be <= {maximum:g}, got {value:g}")
    if above is not None and value <= above:
        raise UserError(f"{name} must be > {above:g}, got {value:g}")
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

    Attributes:
        min_step: Exclude rows with ``step < min_step`` (>= 0). Power laws in N always
            exclude step 0 (the base model, N = 0). The paper used 50.
        holdout: Rows the fit never sees (:class:`~forgetscale.laws.table.Holdout`,
            or ``largest-P``, ``largest-N``, run ids); the result reports the error on them.
        n_boot: Bootstrap resamples of whole runs for confidence intervals (0 = none;
            otherwise 2..``MAX_BOOTSTRAP``).
        seed: Seed of the bootstrap resampling (0 .. 2**63 - 1).
        n_starts: L-BFGS-B starts from the best grid points (``None`` = every grid point).
        delta: Huber threshold on log residuals (> 0).
        workers: Processes for the bootstrap (``None`` = automatic, 1 = serial).
    """

    min_step: float = 1
    holdout: Holdout | str | Sequence[str] | None = None
    n_boot: int = 0
    seed: int = 0
    n_starts: int | None = 10
    delta: float = HUBER_DELTA
    workers: int | None = None

    def __post_init__(self) -> None:
        fix = object.__setattr__
        fix(self, "min_step", check_number(self.min_step, "--min-step (min_step)", minimum=0))
        fix(self, "holdout", Holdout.parse(self.holdout))
        n_boot = check_number(
            self.n_boot, "--bootstrap (n_boot)", integer=True, minimum=0, maximum=MAX_BOOTSTRAP
        )
        if n_boot == 1:
            raise UserError("--bootstrap (n_boot) must be 0 (no intervals) or >= 2, got 1")
        fix(self, "n_boot", n_boot)
        fix(
            self,
            "seed",
            check_number(self.seed, "--seed (seed)", integer=True, minimum=0, maximum=MAX_SEED),
        )
        if self.n_starts is not None:
            fix(
                self,
                "n_starts",
                check_number(
                    self.n_starts,
                    "--starts (n_starts)",
                    integer=True,
                    minimum=1,
                    maximum=MAX_STARTS,
                ),
            )
        fix(self, "delta", check_number(self.delta, "delta", above=0))
        if self.workers is not None:
            fix(
                self,
                "workers",
                check_number(
                    self.workers,
                    "--workers (workers)",
                    integer=True,
                    minimum=1,
                    maximum=MAX_WORKERS,
                ),
            )
