"""Reading and checking measurement tables for fitting.

A measurement table has the export columns of the results store: every fit needs
``run_id`` and ``step`` (:data:`REQUIRED_FIT_COLUMNS`) plus the columns its law reads
and predicts (``params_trained``, ``finetune_loss``, ``forgetting_loss``, ...); more
are allowed and ignored. ``disagreement`` is derived from ``agreement``. It can be a CSV file, a parquet file, or a SQLite results store
(``.db``/``.sqlite``, read with :func:`forgetscale.store.read_measurements`).

Every problem with the table is a :class:`~forgetscale.errors.UserError` with one
clear line: a missing column, NaN/inf or non-positive losses, too few points for
the law's parameters, a single P where the law needs several.

Which rows a fit never sees (to measure how it extrapolates) is a :class:`Holdout`;
:mod:`forgetscale.laws.holdout` evaluates a law on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from forgetscale import quantities
from forgetscale.errors import UserError
from forgetscale.laws.registry import Law
from forgetscale.store import read_measurements

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Columns every fit needs besides its law's variables and targets: the run (the
#: bootstrap resamples whole runs) and the step (N; step 0 is the base model).
REQUIRED_FIT_COLUMNS: tuple[str, ...] = ("run_id", "step")
#: Targets computed from another export column when the table lacks them (a share and its
#: complement: ``disagreement = 1 - agreement``), from :mod:`forgetscale.quantities`.
DERIVED_TARGETS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    q.name: (q.derived_from, lambda share: 1.0 - share)
    for q in quantities.QUANTITIES
    if q.derived_from
}
#: Share of each run's steps (the last ones) that ``--holdout largest-N`` holds out.
LARGEST_N_FRACTION = 0.2
#: The named held-out schemes: the runs with the largest P, the last steps of every run.
HOLDOUT_SCHEMES: tuple[str, ...] = ("largest-P", "largest-N")


def folder_not_a_store(path: Path) -> str:
    """The one-line refusal of a folder where a results store or table was asked for."""
    db = path / "results.db"
    hint = f"; its results store is {db}" if db.is_file() else ""
    return f"{path} is a folder, not a results store or table{hint}"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, parquet or SQLite results store into a DataFrame."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise UserError(f"no such file: {path}")
    if path.is_dir():
        raise UserError(folder_not_a_store(path))
    suffix = path.suffix.lower()
    try:
        if suffix in (".db", ".sqlite", ".sqlite3"):
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


def _column(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df.columns and col in DERIVED_TARGETS:
        source, derive = DERIVED_TARGETS[col]
        return derive(_numeric(df, source))
    return _numeric(df, col)


def check_table(
    df: pd.DataFrame, law: Law, targets: Sequence[str], extra: Sequence[str] = ()
) -> FitData:
    """Check the columns ``law`` needs for ``targets`` and convert them to arrays (all rows).

    ``extra`` columns (e.g. for figures) are checked and converted too.
    """
    needed = [*REQUIRED_FIT_COLUMNS, *law.variables, *targets, *extra]
    if "params_trained" in df.columns and "params_trained" not in needed:
        needed.append("params_trained")  # used by --holdout largest-P and the plots
    needed = list(dict.fromkeys(needed))
    present = set(df.columns) | {d for d, (src, _) in DERIVED_TARGETS.items() if src in df.columns}
    missing = [c for c in needed if c not in present]
    if missing:
        what = f"law {law.name!r} on {', '.join(targets)}"
        raise UserError(
            f"missing column(s) {', '.join(missing)}; {what} needs the columns "
            f"{', '.join(needed)} (as `forgetscale export` writes them"
            + (", disagreement from agreement)" if "disagreement" in missing else ")")
        )
    if df["run_id"].isna().any():
        raise UserError("column run_id has empty values")
    cols: dict[str, np.ndarray] = {}
    for c in needed[1:]:
        v = _column(df, c)
        nonfinite = ~np.isfinite(v)
        if nonfinite.any():
            i = int(np.argmax(nonfinite))
            raise UserError(
                f"column {c} has {int(nonfinite.sum())} NaN/inf value(s) "
                f"(first: run {df['run_id'].iloc[i]!r}, row {i}); drop or fix those rows"
            )
        cols[c] = v
    if "params_trained" in cols and (cols["params_trained"] <= 0).any():
        raise UserError("column params_trained has values <= 0")
    if (cols["step"] < 0).any():
        raise UserError("column step has negative values")
    run_id = df["run_id"].astype(str).to_numpy()
    keep = _check_runs(df, run_id, cols)
    return FitData(run_id[keep], {k: v[keep] for k, v in cols.items()})


#: Columns that hold one value per run (a run's method, rank, P and the settings read from its
#: config, the replay fraction and the KL weight, never change).
PER_RUN_COLUMNS: tuple[str, ...] = (
    "params_trained", "method", "rank", *(q.name for q in quantities.run_settings())
)  # fmt: skip


def _check_runs(df: pd.DataFrame, run_id: np.ndarray, cols: dict[str, np.ndarray]) -> np.ndarray:
    """The rows to fit on, once each run is known to be one run: whole steps, one value per
    run of its P (and method, rank), cumulative ``tokens_seen`` never falling, one row per
    (run, step). A row repeated exactly is dropped with a warning; anything else that makes
    two runs look like one is a :class:`UserError` saying which run and step."""
    import warnings

    import pandas as pd

    step = cols["step"]
    fractional = step != np.round(step)
    if fractional.any():
        i = int(np.argmax(fractional))
        raise UserError(
            f"column step has fractional values (e.g. {step[i]:g} in run {run_id[i]!r}): "
            "a step counts optimizer updates, a whole number"
        )
    for col in PER_RUN_COLUMNS:
        if col not in df.columns:
            continue
        counts = df[col].groupby(run_id, sort=False).nunique()
        if (counts > 1).any():
            rid = counts.index[int(np.argmax(counts.to_numpy() > 1))]
            seen = pd.unique(df[col][run_id == rid].dropna())
            raise UserError(
                f"run {rid!r} has {len(seen)} values of {col} ({seen[0]} and {seen[1]}): a "
                f"run's {col} does not change, so two runs share this run_id; give each run "
                "its own id"
            )
    if "tokens_seen" in df.columns:
        tokens = pd.to_numeric(df["tokens_seen"], errors="coerce").to_numpy(dtype=float)
        order = np.lexsort((step, run_id))
        same = run_id[order][1:] == run_id[order][:-1]
        t = tokens[order]
        falls = same & (t[1:] < t[:-1])
        if falls.any():
            k = int(np.argmax(falls))
            a, b = order[k], order[k + 1]
            raise UserError(
                f"run {run_id[a]!r}: tokens_seen falls from {t[k]:g} at step {step[a]:g} to "
                f"{t[k + 1]:g} at step {step[b]:g}: two runs share this run_id; give each "
                "run its own id"
            )
    table = pd.DataFrame({"run_id": run_id, **cols})
    repeated = table.duplicated(["run_id", "step"]).to_numpy()
    exact = table.duplicated().to_numpy()
    conflict = repeated & ~exact
    if conflict.any():
        i = int(np.argmax(conflict))
        first = int(np.argmax((run_id == run_id[i]) & (step == step[i])))
        c = next(c for c in sorted(cols) if cols[c][i] != cols[c][first])
        raise UserError(
            f"run {run_id[i]!r} has two rows for step {step[i]:g} with different values "
            f"({c} {cols[c][first]:g} and {cols[c][i]:g}): two runs share this run_id, or a "
            "table was appended twice; keep one row per run and step"
        )
    keep = ~exact
    dropped = int(exact.sum())
    if dropped:
        warnings.warn(
            f"dropped {dropped} row(s) that repeat another row exactly (same run_id, step "
            "and values); each (run, step) is fitted once",
            UserWarning,
            stacklevel=3,
        )
    return keep


@dataclass(frozen=True)
class Holdout:
    """Which rows a fit never sees, so that its error on them measures extrapolation.

    Attributes:
        scheme: ``largest-P``: the runs with the largest P, fitted on the others (does
            the law extrapolate to a bigger adapter?); ``largest-N``: the last steps of
            every run, fitted on the earlier ones (to a longer run?); ``runs``: the
            runs named in ``run_ids``.
        run_ids: The runs held out by scheme ``runs``.
        fraction: Share of each run's steps that ``largest-N`` holds out, the last
            ones, at least one step per run.
    """

    scheme: str
    run_ids: tuple[str, ...] = ()
    fraction: float = LARGEST_N_FRACTION

    def __post_init__(self) -> None:
        if self.scheme not in (*HOLDOUT_SCHEMES, "runs"):
            raise UserError(
                f"--holdout: unknown scheme {self.scheme!r}; use largest-P, largest-N or run ids"
            )
        if (self.scheme == "runs") != bool(self.run_ids):
            raise UserError("--holdout: run ids go with (and only with) the scheme 'runs'")
        if not (np.isfinite(self.fraction) and 0 < self.fraction < 1):
            raise UserError(
                f"holdout fraction must lie strictly between 0 and 1, got {self.fraction}"
            )

    @classmethod
    def parse(cls, spec: str | Sequence[str] | Holdout | None) -> Holdout | None:
        """``largest-P``, ``largest-N``, run ids (a list), a :class:`Holdout` or ``None``."""
        if spec is None or isinstance(spec, Holdout):
            return spec
        names = [spec] if isinstance(spec, str) else [str(s) for s in spec]
        if not names:
            return None
        if len(names) == 1 and names[0] in HOLDOUT_SCHEMES:
            return cls(names[0])
        if any(n in HOLDOUT_SCHEMES for n in names):
            raise UserError("--holdout takes largest-P, largest-N, or one or more run ids")
        if len(set(names)) != len(names):
            raise UserError("--holdout names a run id twice")
        return cls("runs", run_ids=tuple(names))

    def mask(self, data: FitData) -> np.ndarray:
        """Boolean mask of the held-out rows of ``data``."""
        if self.scheme == "largest-P":
            if "params_trained" not in data.columns:
                raise UserError("--holdout largest-P needs the params_trained column")
            p = data.columns["params_trained"]
            return p == p.max()
        if self.scheme == "largest-N":
            step = data.columns["step"]
            held = np.zeros(len(data), dtype=bool)
            for run in np.unique(data.run_id):
                rows = data.run_id == run
                steps = np.unique(step[rows])
                k = max(1, int(round(self.fraction * len(steps))))
                held |= rows & (step >= steps[-k])
            return held
        unknown = sorted(set(self.run_ids) - set(data.run_id.tolist()))
        if unknown:
            raise UserError(f"--holdout: unknown run id(s) {', '.join(unknown)}")
        return np.isin(data.run_id, self.run_ids)

    def describe(self, held: FitData) -> str:
        """The held-out rows ``held`` in words, for reports."""
        runs = ", ".join(sorted(np.unique(held.run_id)))
        if self.scheme == "largest-P":
            p = held.columns["params_trained"].max()
            return f"the runs with the largest P, P = {p:.4g}: {runs}"
        if self.scheme == "largest-N":
            return (
                f"the last {self.fraction:.0%} of the steps of every run, the earliest "
                f"at step {held.columns['step'].min():g}"
            )
        return f"the runs {runs}"


def select_rows(
    data: FitData,
    law: Law,
    targets: Sequence[str],
    min_step: float = 1,
    holdout: Holdout | None = None,
) -> tuple[FitData, FitData | None]:
    """Apply ``min_step`` (and N > 0 for power laws) and split off the held-out rows.

    Returns ``(train, held_out)``; ``held_out`` is ``None`` without ``holdout``.
    Raises :class:`UserError` when the training rows cannot identify the law, or a
    fitted column is not positive (the fit works on log residuals).
    """
    keep = data.columns["step"] >= min_step
    if law.power_law:
        keep &= data.columns["step"] > 0
    data = data.subset(keep)
    if len(data) == 0:
        raise UserError(f"no rows left after --min-step {min_step:g}")
    for c in dict.fromkeys([*targets, *(v for v in law.variables if v == "finetune_loss")]):
        bad = data.columns[c] <= 0
        if bad.any():
            i = int(np.argmax(bad))
            raise UserError(
                f"column {c} has non-positive values (e.g. {float(data.columns[c][i]):g} in run "
                f"{data.run_id[i]!r} at step {data.columns['step'][i]:g}); fits use log "
                f"residuals, so it must be > 0 (raise --min-step to skip the base model)"
            )
    held = None
    if holdout is not None:
        mask = holdout.mask(data)
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
            f"to fit (after --min-step{' and --holdout' if holdout is not None else ''}); "
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
