"""Benchmark: fitting a law to 5,000 points and a 200-resample bootstrap.

Ours: ``forgetscale.laws.fit_law`` (vectorised grid of starts, L-BFGS-B with an
analytic gradient from the best grid points, single-threaded BLAS, bootstrap in a
process pool). Baseline: what one writes by hand, a single-start
``scipy.optimize.minimize`` (L-BFGS-B, numeric gradient, default threads) of the
same Huber-on-log-residuals objective of the same law, from the middle of the same
grid. Both run here, in this process, on the same data; the bootstrap baseline is
timed on ``--baseline-boot`` resamples and scaled to ``--boot``.

    python benchmarks/bench_fit.py                 # additive law, forgetting target
    python benchmarks/bench_fit.py --law kalajdzievski --boot 50
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy.optimize import minimize

from forgetscale.laws import fit_law, get_law
from forgetscale.laws.bootstrap import resample_indices
from forgetscale.laws.fitting import start_points
from forgetscale.laws.objective import Objective
from forgetscale.laws.synthetic import synthetic_runs


def make_data(n_points: int, seed: int = 0):
    """Synthetic runs from the OpenOrca preset: 10 P values x 2 seeds x n/20 steps."""
    steps = np.arange(261 - n_points // 20, 261)  # the last n/20 steps up to 260
    P = [2e7 * 2 ** (k / 2) for k in range(10)]
    return synthetic_runs(
        "kalajdzievski:openorca", params_trained=P, steps=steps, noise=0.01, seed=seed, runs_per_p=2
    )


def plain_fit(law, targets, X, Y, x0):
    """Single-start scipy fit of the same objective, natural parameters, numeric gradient."""
    logy = {t: np.log(Y[t]) for t in targets}
    names = law.param_names
    bounds = [(p.lower, p.upper) for p in law.params]
    delta = 1e-3

    def f(x):
        theta = dict(zip(names, x, strict=True))
        total = 0.0
        for t in targets:
            yhat = law.predict(theta, X, t)
            r = np.log(np.maximum(yhat, 1e-12)) - logy[t]
            a = np.abs(r)
            total += np.sum(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)))
        return total / (delta**2 * sum(len(Y[t]) for t in targets))

    res = minimize(f, x0, method="L-BFGS-B", bounds=bounds)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--law", default="additive")
    ap.add_argument("--target", default="forgetting_loss")
    ap.add_argument("--points", type=int, default=5000)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--baseline-boot", type=int, default=10)
    args = ap.parse_args()

    law = get_law(args.law)
    targets = law.targets if law.joint else (args.target,)
    df = make_data(args.points)
    n = len(df)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU"
    )
    print(
        f"data: {n} points, {df.run_id.nunique()} runs; law {law.name}, targets {', '.join(targets)}"
    )

    fit_law(df.iloc[::25], law, None if law.joint else args.target)  # warm-up (imports)
    t0 = time.perf_counter()
    fit = fit_law(df, law, None if law.joint else args.target)
    ours_fit = time.perf_counter() - t0

    X = {v: df[v].to_numpy(float) for v in law.variables}
    Y = {t: df[t].to_numpy(float) for t in targets}
    obj = Objective(law, targets, X, Y)
    points = start_points(law, X | Y, None if law.joint else targets[0])
    x0 = np.array([points[len(points) // 2][p] for p in law.param_names])
    t0 = time.perf_counter()
    res = plain_fit(law, targets, X, Y, x0)
    base_fit = time.perf_counter() - t0
    base_obj = obj.value(obj.to_z(res.x))

    print()
    print(
        f"{'fit of ' + str(n) + ' points':<34} {'seconds':>9} {'objective':>11} {'converged':>10}"
    )
    print(f"{'forgetscale (grid ' + str(fit.n_grid) + ', ' + str(fit.n_starts) + ' starts)':<34} "
          f"{ours_fit:>9.2f} {fit.objective:>11.5f} {fit.converged!s:>10}")  # fmt: skip
    print(
        f"{'plain scipy (1 start)':<34} {base_fit:>9.2f} {base_obj:>11.5f} {bool(res.success)!s:>10}"
    )
    verdict = "lower (better)" if fit.objective < base_obj - 1e-9 else "not lower"
    print(f"time ratio forgetscale / plain: {ours_fit / base_fit:.2f}; forgetscale's objective "
          f"is {verdict}: {fit.objective:.5f} vs {base_obj:.5f}")  # fmt: skip

    t0 = time.perf_counter()
    booted = fit_law(df, law, None if law.joint else args.target, n_boot=args.boot, seed=0)
    ours_boot = time.perf_counter() - t0 - booted.seconds["fit"]
    idx = resample_indices(df.run_id.astype(str).to_numpy(), args.baseline_boot, seed=0)
    t0 = time.perf_counter()
    for rows in idx:
        plain_fit(
            law,
            targets,
            {k: v[rows] for k, v in X.items()},
            {t: Y[t][rows] for t in targets},
            res.x,
        )
    base_boot = (time.perf_counter() - t0) * args.boot / args.baseline_boot
    print()
    print(f"{'bootstrap, ' + str(args.boot) + ' run resamples':<34} {'seconds':>9}")
    print(f"{'forgetscale':<34} {ours_boot:>9.2f}")
    print(f"{'plain scipy (timed ' + str(args.baseline_boot) + ', scaled)':<34} {base_boot:>9.2f}")
    print(f"time ratio forgetscale / plain: {ours_boot / base_boot:.2f} "
          f"(forgetscale {base_boot / ours_boot:.1f}x faster)")  # fmt: skip


if __name__ == "__main__":
    main()
