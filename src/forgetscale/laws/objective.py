"""The fitting objective: Huber loss on log residuals, vectorised over parameter vectors.

Parameters are optimised in a transformed space ``z``: ``z = log(value)`` for
positive (``log=True``) parameters, ``z = value`` otherwise. The objective is

    f(z) = mean_i huber_delta( log yhat_i(z) - log y_i ) / delta**2

(the division by delta**2 only rescales f to order one so that L-BFGS-B's
relative stopping rule is meaningful; it does not move the minimum). When a
prediction is not positive its log is continued linearly below ``eps`` so the
objective stays finite and pushes the parameters back to valid predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from forgetscale.laws.registry import Law

HUBER_DELTA = 1e-3
_CHUNK_ELEMENTS = 2_000_000  # grid points x observations evaluated at once


class Objective:
    """Huber-on-log-residual objective for ``law`` on fixed data.

    Args:
        law: The law being fitted.
        targets: Targets fitted (one, or all of a joint law's targets).
        X: Variable columns, each of shape ``(n,)``, shared by all targets.
        Y: Observed values per target, each of shape ``(n,)`` and positive.
        delta: Huber threshold on log residuals.
    """

    def __init__(
        self,
        law: Law,
        targets: Sequence[str],
        X: Mapping[str, np.ndarray],
        Y: Mapping[str, np.ndarray],
        delta: float = HUBER_DELTA,
    ) -> None:
        self.law = law
        self.targets = tuple(targets)
        self.X = {k: np.asarray(X[k], dtype=float) for k in law.variables}
        self.Y = {t: np.asarray(Y[t], dtype=float) for t in self.targets}
        self.logy = np.concatenate([np.log(self.Y[t]) for t in self.targets])
        self.delta = float(delta)
        self.n = len(self.logy)
        ymin = min(float(v.min()) for v in self.Y.values())
        self.eps = min(1e-3, 0.1 * ymin)
        self.log_mask = np.array([p.log for p in law.params])
        lower = np.array([p.lower for p in law.params], dtype=float)
        upper = np.array([p.upper for p in law.params], dtype=float)
        self.zlower = np.where(self.log_mask, np.log(np.where(self.log_mask, lower, 1.0)), lower)
        self.zupper = np.where(self.log_mask, np.log(np.where(self.log_mask, upper, 1.0)), upper)

    # -- transforms -----------------------------------------------------------------
    def to_z(self, values: Mapping[str, float] | np.ndarray) -> np.ndarray:
        """Natural parameter values (mapping or array ``(..., k)``) to ``z``."""
        if isinstance(values, Mapping):
            values = np.array([float(values[p]) for p in self.law.param_names])
        values = np.asarray(values, dtype=float)
        z = np.where(self.log_mask, np.log(np.abs(values) + (~self.log_mask)), values)
        return np.clip(z, self.zlower, self.zupper)

    def from_z(self, z: np.ndarray) -> np.ndarray:
        """``z`` (shape ``(..., k)``) to natural parameter values."""
        z = np.asarray(z, dtype=float)
        return np.where(self.log_mask, np.exp(z), z)

    def theta(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """Parameter mapping for the law; ``z`` of shape ``(G, k)`` gives ``(G, 1)`` values."""
        values = self.from_z(z)
        if values.ndim == 1:
            return {p: float(values[i]) for i, p in enumerate(self.law.param_names)}
        return {p: values[:, i : i + 1] for i, p in enumerate(self.law.param_names)}

    # -- predictions ----------------------------------------------------------------
    def predict(self, z: np.ndarray) -> np.ndarray:
        """Stacked predictions over targets: ``(n,)`` for one ``z``, ``(G, n)`` for many."""
        th = self.theta(z)
        m = self.n // len(self.targets)
        shape = (m,) if np.ndim(z) == 1 else (len(z), m)
        parts = [
            np.broadcast_to(np.asarray(self.law.predict(th, self.X, t), dtype=float), shape)
            for t in self.targets
        ]
        return np.concatenate(parts, axis=-1)

    def _safe_log(self, yhat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = yhat > self.eps
        with np.errstate(invalid="ignore", divide="ignore"):
            logv = np.where(ok, np.log(np.where(ok, yhat, 1.0)), 0.0)
        logv = np.where(ok, logv, np.log(self.eps) + (yhat - self.eps) / self.eps)
        dlog = np.where(ok, 1.0 / np.where(ok, yhat, 1.0), 1.0 / self.eps)
        return logv, dlog

    def _huber(self, r: np.ndarray) -> np.ndarray:
        a = np.abs(r)
        d = self.delta
        return np.where(a <= d, 0.5 * r * r, d * (a - 0.5 * d)) / (d * d)

    # -- objective ------------------------------------------------------------------
    def values(self, Z: np.ndarray) -> np.ndarray:
        """Objective at many parameter vectors ``Z`` of shape ``(G, k)``, vectorised."""
        Z = np.atleast_2d(np.asarray(Z, dtype=float))
        out = np.empty(len(Z))
        step = max(1, _CHUNK_ELEMENTS // max(self.n, 1))
        with np.errstate(all="ignore"):
            for start in range(0, len(Z), step):
                chunk = Z[start : start + step]
                logv, _ = self._safe_log(self.predict(chunk))
                f = self._huber(logv - self.logy).mean(axis=1)
                out[start : start + step] = np.where(np.isfinite(f), f, np.inf)
        return out

    def value(self, z: np.ndarray) -> float:
        return float(self.values(np.asarray(z)[None, :])[0])

    def jacobian_z(self, z: np.ndarray) -> np.ndarray:
        """d prediction / d z, shape ``(k, n)``: analytic if the law has one, else numeric."""
        z = np.asarray(z, dtype=float)
        k = len(z)
        if self.law.jacobian is not None:
            th = self.theta(z)
            rows = []
            for t in self.targets:
                jac = self.law.jacobian(th, self.X, t)
                m = self.n // len(self.targets)
                cols = [
                    np.broadcast_to(np.asarray(jac[p], float), (m,)) for p in self.law.param_names
                ]
                rows.append(np.stack(cols))
            J = np.concatenate(rows, axis=1)
            scale = np.where(self.log_mask, self.from_z(z), 1.0)
            return J * scale[:, None]
        h = 1e-6 * np.maximum(1.0, np.abs(z))
        Z = np.concatenate([z + np.diag(h), z - np.diag(h)])
        P = self.predict(Z)
        return (P[:k] - P[k:]) / (2 * h[:, None])

    def value_and_grad(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        """Objective and its gradient in ``z`` (for L-BFGS-B)."""
        with np.errstate(all="ignore"):
            yhat = self.predict(z)
            logv, dlog = self._safe_log(yhat)
            r = logv - self.logy
            f = float(self._huber(r).mean())
            if not np.isfinite(f):
                return 1e300, np.zeros_like(z)
            dr = np.clip(r, -self.delta, self.delta) / (self.delta**2) * dlog / self.n
            g = self.jacobian_z(z) @ dr
        if not np.all(np.isfinite(g)):
            g = np.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
        return f, g

    @property
    def bounds(self) -> list[tuple[float, float]]:
        return list(zip(self.zlower.tolist(), self.zupper.tolist(), strict=True))
