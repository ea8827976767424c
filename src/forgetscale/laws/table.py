"""Reading and checking measurement tables for fitting.

A measurement table has the export columns of the results store, at least
``run_id, params_trained, step, finetune_loss, forgetting_loss`` (more are allowed
and ignored). It can be a CSV file, a parquet file, or a SQLite results store
(``.db``/``.sqlite``, read with :func:`forgetscale.store.read_measurements`).

Every problem with the table is a :class:`~forgetscale.errors.UserError` with one
clear line: a missing column, NaN/inf or non-positive losses, too few points for
the law's parameters, a single P where the law needs several.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from forgetscale.errors import UserError
from forgetscale.laws.registry import Law

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

EXPORT_COLUMNS = ("run_id", "params_trained", "step", "finetune_loss", "forgetting_loss")
#: Fraction of the distinct step values held out by ``--holdout largest-N``.
LARGEST_N_FRACTION = 0.2


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, parquet or SQLite results store into a DataFrame."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise UserError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".db", ".sqlite", ".sqlite3"):
            try:
                from forgetscale.store import read_measurements
            except ImportError as exc:
                raise UserError(
                    f"cannot read {path}: this install has no results-store reader"
                ) from exc
            df = read_measurements(path)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".txt"):
            df = pd.read_csv(path)
        elif suffix == ".tsv":
            df = pd.read_csv(path, sep="\t")
        else:
            raise UserError(f"{path}: unknown table format {suffix!r} (use .csv, .parquet or .db)")
    except UserError:
        raise
    except Exception as exc:  # parser errors of all kinds -> one line
        raise UserError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if len(df) == 0:
        raise UserError(f"{path}: the table has no rows")
    return df


@dataclass
class FitData:
    """Rows selected for a fit.

    Attributes:
        run_id: Run of each row (bootstrap resamples whole runs), shape ``(n,)``.
        columns: Column name -> float array ``(n,)`` for the law's variables and targets.
    """

    run_id: np.ndarray
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.run_id)

    def subset(self, mask: np.ndarray) -> FitData:
        return FitData(self.run_id[mask], {k: v[mask] for k, v in self.columns.items()})


def _numeric(df: pd.DataFrame, col: str) -> np.ndarray:
    import pandas as pd

    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(values) & df[col].notna().to_numpy()
    if bad.any():
        raise UserError(f"column {col} has non-numeric values (e.g. {df[col][bad].iloc[0]!r})")
    return values


def check_table(df: pd.DataFrame, law: Law, targets: Sequence[str]) -> FitData:
    """Check the columns ``law`` needs and convert them to arrays (all rows)."""
    needed = ["run_id", "step", *law.variables, *targets]
    if "params_trained" in df.columns and "params_trained" not in needed:
        needed.append("params_trained")  # used by --holdout largest-P and the plots
    needed = list(dict.fromkeys(needed))
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise UserError(
            f"missing column(s) {', '.join(missing)}; the table needs the export columns "
            f"{', '.join(EXPORT_COLUMNS)}"
        )
    cols: dict[str, np.ndarray] = {}
    for c in needed[1:]:
        v = _numeric(df, c)
        nonfinite = ~np.isfinite(v)
        if nonfinite.any():
            i = int(np.argmax(nonfinite))
            raise UserError(
                f"column {c} has {int(nonfinite.sum())} NaN/inf value(s) "
                f"(first: run {df['run_id'].iloc[i]!r}, row {i}); drop or fix those rows"
            )
        cols[c] = v
    for c in ("finetune_loss", "forgetting_loss"):
        if c in cols and (cols[c] <= 0).any():
            i = int(np.argmax(cols[c] <= 0))
            raise UserError(
                f"column {c} has non-positive values (e.g. {float(cols[c][i]):g} in run "
                f"{df['run_id'].iloc[i]!r}); losses must be > 0"
            )
    if "params_trained" in cols and (cols["params_trained"] <= 0).any():
        raise UserError("column params_trained has values <= 0")
    if (cols["step"] < 0).any():
        raise UserError("column step has negative values")
    if df["run_id"].isna().any():
        raise UserError("column run_id has empty values")
    return FitData(df["run_id"].astype(str).to_numpy(), cols)


def holdout_mask(data: FitData, holdout: str | Sequence[str] | None) -> np.ndarray | None:
    """Rows to hold out: ``largest-P``, ``largest-N`` or a list of run ids."""
    if holdout is None or (not isinstance(holdout, str) and len(holdout) == 0):
        return None
    if isinstance(holdout, str):
        holdout = [holdout]
    holdout = list(holdout)
    if holdout == ["largest-P"]:
        if "params_trained" not in data.columns:
            raise UserError("--holdout largest-P needs the params_trained column")
        p = data.columns["params_trained"]
        return p == p.max()
    if holdout == ["largest-N"]:
        steps = np.unique(data.columns["step"])
        k = max(1, int(round(LARGEST_N_FRACTION * len(steps))))
        return data.columns["step"] >= steps[-k]
    if any(h in ("largest-P", "largest-N") for h in holdout):
        raise UserError("--holdout takes largest-P, largest-N, or one or more run ids")
    unknown = sorted(set(holdout) - set(data.run_id.tolist()))
    if unknown:
        raise UserError(f"--holdout: unknown run id(s) {', '.join(unknown)}")
    return np.isin(data.run_id, holdout)


def select_rows(
    data: FitData,
    law: Law,
    targets: Sequence[str],
    min_step: float = 1,
    holdout: str | Sequence[str] | None = None,
) -> tuple[FitData, FitData | None]:
    """Apply ``min_step`` (and N > 0 for power laws) and split off the held-out rows.

    Returns ``(train, held_out)``; ``held_out`` is ``None`` without ``holdout``.
    Raises :class:`UserError` when the training rows cannot identify the law.
    """
    keep = data.columns["step"] >= min_step
    if law.power_law:
        keep &= data.columns["step"] > 0
    data = data.subset(keep)
    if len(data) == 0:
        raise UserError(f"no rows left after --min-step {min_step:g}")
    mask = holdout_mask(data, holdout)
    held = None
    if mask is not None:
        if not mask.any():
            raise UserError("--holdout selects no rows")
        held = data.subset(mask)
        data = data.subset(~mask)
        if len(data) == 0:
            raise UserError("--holdout leaves no rows to fit on")
    n_obs = len(data) * len(targets)
    k = len(law.params)
    if n_obs <= k:
        raise UserError(
            f"law {law.name!r} has {k} parameters but only {n_obs} observation(s) remain "
            f"to fit (after --min-step{' and --holdout' if mask is not None else ''}); "
            f"need more than {k}"
        )
    for col, need in law.min_distinct.items():
        got = len(np.unique(data.columns[col]))
        if got < need:
            raise UserError(
                f"law {law.name!r} needs at least {need} distinct {col} values to identify "
                f"its parameters, got {got}"
            )
    return data, held
