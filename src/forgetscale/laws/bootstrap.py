"""Bootstrap confidence intervals that resample whole runs.

Measurements of one run are correlated (same adapter, same data order), so the
unit of resampling is the run: each resample draws as many runs as there are,
with replacement, keeps all their rows, and refits the law with L-BFGS-B started
from the full-data optimum. The resample indices come from one
``numpy.random.default_rng(seed)`` stream drawn up front, so results do not depend
on how the refits are spread over processes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from forgetscale.laws._threads import single_blas_thread
from forgetscale.laws.objective import Objective
from forgetscale.laws.registry import get_law

#: Below this many (resamples x observations) a process pool costs more than it saves.
PARALLEL_THRESHOLD = 200_000

_SHARED: dict = {}


def resample_indices(run_id: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """Row indices of ``n_boot`` run-level resamples (fixed ``seed``)."""
    runs, inverse = np.unique(run_id, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == i) for i in range(len(runs))]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(runs), size=(n_boot, len(runs)))
    return [np.concatenate([rows_of[j] for j in d]) for d in draws]


def _refit(law_name: str, targets, X, Y, idx, z0, delta) -> np.ndarray:
    from scipy.optimize import minimize

    law = get_law(law_name)
    obj = Objective(
        law, targets, {k: v[idx] for k, v in X.items()}, {t: Y[t][idx] for t in targets}, delta
    )
    res = minimize(
        obj.value_and_grad,
        z0,
        jac=True,
        method="L-BFGS-B",
        bounds=obj.bounds,
        options={"maxiter": 1000, "ftol": 1e-9, "gtol": 1e-8},
    )
    return obj.from_z(res.x) if np.isfinite(res.fun) else np.full_like(z0, np.nan)


def _worker(chunk: Sequence[int]) -> list[np.ndarray]:
    s = _SHARED
    with single_blas_thread():
        return [
            _refit(s["law"], s["targets"], s["X"], s["Y"], s["indices"][i], s["z0"], s["delta"])
            for i in chunk
        ]


def bootstrap_params(
    law_name: str,
    targets: Sequence[str],
    X: dict[str, np.ndarray],
    Y: dict[str, np.ndarray],
    run_id: np.ndarray,
    z0: np.ndarray,
    n_boot: int,
    seed: int = 0,
    delta: float = 1e-3,
    workers: int | None = None,
) -> np.ndarray:
    """Refit on ``n_boot`` run-level resamples; returns natural parameters ``(n_boot, k)``.

    ``workers=None`` uses a process pool (fork, all cores) when the work is large
    enough to pay for it, ``workers=1`` forces a single process.
    """
    indices = resample_indices(run_id, n_boot, seed)
    n_obs = len(run_id) * len(targets)
    if workers is None:
        cores = os.cpu_count() or 1
        workers = cores if n_boot * n_obs >= PARALLEL_THRESHOLD else 1
    can_fork = "fork" in mp.get_all_start_methods()
    _SHARED.update(
        law=law_name, targets=tuple(targets), X=X, Y=Y, indices=indices, z0=z0, delta=delta
    )
    try:
        if workers > 1 and can_fork and n_boot > 1:
            chunks = [list(range(i, n_boot, workers)) for i in range(workers)]
            ctx = mp.get_context("fork")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                results = list(pool.map(_worker, chunks))
            out = np.empty((n_boot, len(z0)))
            for chunk, res in zip(chunks, results, strict=True):
                out[chunk] = np.array(res)
            return out
        return np.array(_worker(range(n_boot))).reshape(n_boot, len(z0))
    finally:
        _SHARED.clear()
