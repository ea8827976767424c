"""Every fit option is checked when the options are made, before any work."""

from __future__ import annotations

import re

import numpy as np
import pytest

from forgetscale.errors import UserError
from forgetscale.laws.options import FitOptions, check_number, check_values
from forgetscale.laws.table import Holdout

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("min_step", NAN, "--min-step (min_step) must be a finite number"),
        ("min_step", INF, "--min-step (min_step) must be a finite number"),
        ("min_step", -1, "--min-step (min_step) must be >= 0"),
        ("min_step", "50", "--min-step (min_step) must be a number"),
        ("n_boot", -1, "--bootstrap (n_boot) must be >= 0"),
        ("n_boot", 1, "must be 0 (no intervals) or >= 2"),
        ("n_boot", 10**9, "--bootstrap (n_boot) must be <= 100000"),
        ("n_boot", 2.5, "--bootstrap (n_boot) must be an integer"),
        ("n_boot", True, "--bootstrap (n_boot) must be an integer"),
        ("seed", -3, "--seed (seed) must be >= 0"),
        ("seed", 2**64, "--seed (seed) must be <="),
        ("n_starts", 0, "--starts (n_starts) must be >= 1"),
        ("workers", 0, "--workers (workers) must be >= 1"),
        ("delta", 0.0, "delta must be > 0"),
        ("delta", NAN, "delta must be a finite number"),
    ],
)
def test_each_bad_option_is_one_user_error_naming_it(field, value, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        FitOptions(**{field: value})


def test_good_options_are_normalised():
    opts = FitOptions(min_step=50, holdout="largest-N", n_boot=np.int64(10), n_starts=None)
    assert opts.holdout == Holdout("largest-N")
    assert opts.n_boot == 10 and isinstance(opts.n_boot, int)
    assert FitOptions(holdout=["a", "b"]).holdout.run_ids == ("a", "b")
    assert FitOptions().holdout is None
    # a name that is no scheme is a run id, checked against the table when fitting
    assert FitOptions(holdout="largest-Q").holdout == Holdout("runs", run_ids=("largest-Q",))


def test_check_number_and_values():
    assert check_number(3.0, "x", integer=True) == 3
    with pytest.raises(UserError, match="x must be > 0, got 0"):
        check_number(0, "x", above=0)
    np.testing.assert_array_equal(check_values([1, 2.5], "--params", above=0), [1.0, 2.5])
    for bad, needle in (
        ([1, NAN], "finite"),
        ([0.0], "> 0"),
        ([], "one or more"),
        ("a", "numbers"),
    ):
        with pytest.raises(UserError, match=needle):
            check_values(bad, "--params", above=0)
