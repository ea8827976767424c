"""Pilot -> plan -> check: run the configuration a plan chose and compare it with its interval.

``forgetscale plan --verify STORE`` (and :func:`verify_plan`) takes the plan's choice, builds
the train config ``--emit forgetscale`` prints (the pilot run nearest in rank, with the chosen
rank and steps), runs it with :func:`forgetscale.training.train` into ``STORE`` and reports
it as ``--check`` does (:func:`forgetscale.laws.planning.check_plan`): per target the observed
value at the chosen step, the interval for one new run, inside or not. Beside it: the
planned run's wall time, the pilot's (its runs' started-to-ended times) and an estimate of
what a grid of every candidate at its planned size would have taken (the planned run's
seconds per update times every candidate's updates).

The planned run goes to its own store, never the pilot's (a later fit on the pilot would
otherwise include the run that checks it). An interrupted verification resumes: the run
id is the config's, so running the same plan again continues from its checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from forgetscale.errors import UserError


def check_verify_store(path: str, *, pilot: Path) -> None:
    """Refuse, before any work, a verification store that is the pilot's, is a folder, is
    a file but no results store, or lies in a folder that cannot be written."""
    from forgetscale.outputs import check_folder
    from forgetscale.store import open_store

    target = Path(path).expanduser()
    if target.exists() and pilot.exists() and target.resolve() == pilot.resolve():
        raise UserError(
            f"--verify {path} is the pilot's store (--from); give another results store "
            "(the planned run must not enter the pilot's fits)"
        )
    if target.is_dir():
        raise UserError(f"--verify {path} is a folder; give a results store file (e.g. planned.db)")
    if target.exists():
        with open_store(target, create=False):
            pass  # a file that is no results store is refused here, in one line
    else:
        check_folder(target.parent if str(target.parent) else Path("."), what="--verify")


def pilot_seconds(store: Path) -> tuple[float, int]:
    """The pilot's training time: the sum over its ended runs of started -> ended, and how
    many runs that is."""
    from forgetscale.store import open_store

    with open_store(store, create=False) as st:
        runs = [r for r in st.list_runs() if r.ended is not None]
    return float(sum(r.ended - r.started for r in runs)), len(runs)


def verify_plan(
    laws: Mapping[str, Any],
    choice: Mapping[str, Any],
    pilot: Path,
    out: str,
    *,
    coverage: float,
    candidates: list[Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the chosen configuration into ``out`` and check it against its interval.

    Returns :func:`~forgetscale.laws.planning.check_plan`'s dict plus ``"verify"``: the run
    id, its status, wall seconds, the pilot's seconds and runs, and the estimated seconds of
    a grid of ``candidates`` at their planned size."""
    import yaml

    from forgetscale.config.train import build_config
    from forgetscale.laws.plan_output import emit_snippet
    from forgetscale.laws.planning import check_plan
    from forgetscale.laws.table import read_table
    from forgetscale.training import train

    values = yaml.safe_load(emit_snippet("forgetscale", pilot, dict(choice)))
    values["store"] = str(Path(out).expanduser().resolve())
    values["progress"] = progress
    values["name"] = f"planned: rank {values['rank']}, {values['max_steps']} steps"
    config = build_config(values, where="the planned configuration")
    result = train(config)
    if result.status != "finished":
        raise UserError(
            f"--verify: the planned run {result.run_id} ended {result.status}"
            + (f" ({result.message})" if result.message else "")
            + f"; its measurements are in {out}"
        )
    df = read_table(Path(out))
    df = df[df["run_id"] == result.run_id]
    check = check_plan(laws, choice, df, coverage=coverage, tolerance=None)  # P as it came out
    seconds = _run_seconds(Path(out), result.run_id, result.wall_s)
    pilot_s, pilot_runs = pilot_seconds(pilot)
    info: dict[str, Any] = {
        "run_id": result.run_id,
        "store": str(out),
        "status": result.status,
        "seconds": seconds,
        "pilot_seconds": pilot_s,
        "pilot_runs": pilot_runs,
    }
    if candidates:
        per_update = seconds / max(1, int(config.max_steps))
        info["grid_seconds"] = per_update * sum(math.ceil(c["step"]) for c in candidates)
        info["grid_runs"] = len(candidates)
    check["verify"] = info
    return check


def _run_seconds(store: Path, run_id: str, fallback: float) -> float:
    """The run's started -> ended time in the store (all of it, across resumes), else the
    wall time of this call."""
    from forgetscale.store import open_store

    with open_store(store, create=False) as st:
        run = st.get_run(run_id)
    if run is not None and run.ended is not None:
        return float(run.ended - run.started)
    return float(fallback)
