"""``forgetscale runs``: list the runs in a results store."""

from __future__ import annotations

import argparse
import datetime as dt

from forgetscale.outputs import dumps
from forgetscale.store import RUN_STATUSES

NAME = "runs"
HELP = "list the runs in a results store"
DESCRIPTION = """\
List the runs in a results store: id (the hash of the resolved config), status,
method, rank, P (trainable non-embedding parameters), steps measured, the last
L_ft and L_f, the last value of each downstream suite, and the label. `--json` prints
one JSON object per run.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        "--store",
        dest="store",
        required=True,
        metavar="STORE",
        help="results store (.db); --store is the same option, spelled as train and sweep spell it",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--status", choices=RUN_STATUSES, help="only runs with this status")


def _fmt(x: object, spec: str = ".4f") -> str:
    if x is None:
        return "-"
    try:
        if x != x:  # NaN
            return "-"
        return format(x, spec)
    except (TypeError, ValueError):
        return str(x)


def run(args: argparse.Namespace) -> int:
    from forgetscale.metrics import hard_below_base_note
    from forgetscale.store import open_store

    with open_store(args.store, create=False) as store:
        runs = store.list_runs()
        if args.status:
            runs = [r for r in runs if r.status == args.status]
        df = store.measurements()
        ds = store.downstream()
    # the last downstream value of each suite (its first metric) per run
    ds_last: dict[str, dict[str, tuple[str, float]]] = {}
    for (run_id, suite), rows in ds.groupby(["run_id", "suite"], sort=False):
        last = rows[rows.step == rows.step.max()]
        ds_last.setdefault(run_id, {})[suite] = (last.metric.iloc[0], last.value.iloc[0])
    suites = list(dict.fromkeys(s for by_suite in ds_last.values() for s in by_suite))
    if args.json:
        for r in runs:
            rows = df[df.run_id == r.id].to_dict(orient="records")
            print(
                dumps(
                    {
                        "id": r.id,
                        "name": r.name,
                        "status": r.status,
                        "method": r.method,
                        "rank": r.rank,
                        "params_trained": r.params_trained,
                        "max_steps": r.max_steps,
                        "last_step": r.last_step,
                        "diverged_step": r.diverged_step,
                        "message": r.message,
                        "model": r.model,
                        "task_data": r.task_data,
                        "started": r.started,
                        "ended": r.ended,
                        "versions": r.versions,
                        "measurements": len(rows),
                        "downstream": {
                            f"{suite}:{metric}": value
                            for suite, (metric, value) in ds_last.get(r.id, {}).items()
                        },
                    }
                )
            )
        return 0
    if not runs:
        print(f"no runs in {args.store}")
        return 0
    header = (
        f"{'id':<16}  {'status':<8}  {'method':<10}  {'rank':>4}  {'P':>10}  "
        f"{'steps':>9}  {'evals':>5}  {'L_ft':>7}  {'L_f':>7}  {'L_f@0':>7}  "
        + "".join(f"{s:>14}  " for s in suites)
        + "started           name"
    )
    print(header)
    notes: list[str] = []
    for r in runs:
        m = df[df.run_id == r.id].sort_values("step")
        last = m.iloc[-1] if len(m) else None
        first = m.iloc[0] if len(m) and int(m.iloc[0].step) == 0 else None
        steps = f"{_fmt(r.last_step, 'd')}/{_fmt(r.max_steps, 'd')}"
        started = dt.datetime.fromtimestamp(r.started).strftime("%Y-%m-%d %H:%M")
        status = r.status if r.status != "diverged" else f"diverged@{r.diverged_step}"
        print(
            f"{r.id:<16}  {status:<8}  {r.method:<10}  {_fmt(r.rank, 'd'):>4}  "
            f"{_fmt(r.params_trained, ',d'):>10}  {steps:>9}  {len(m):>5}  "
            f"{_fmt(None if last is None else last.finetune_loss):>7}  "
            f"{_fmt(None if last is None else last.forgetting_loss):>7}  "
            f"{_fmt(None if first is None else first.forgetting_loss):>7}  "
            + "".join(
                f"{_fmt(ds_last.get(r.id, {}).get(s, (None, None))[1]):>14}  " for s in suites
            )
            + f"{started:<16}  {r.name or ''}"
        )
        if last is not None and first is not None:
            note = hard_below_base_note(last.forgetting_loss, first.forgetting_loss, last.kl)
            if note:
                notes.append(f"{r.id}: {note}")
    if suites:
        metrics = {s: m for by_suite in ds_last.values() for s, (m, _) in by_suite.items()}
        print(
            "downstream columns: "
            + ", ".join(f"{s} = {metrics[s]} at the last step" for s in suites)
        )
    for note in notes:
        print(f"note: {note}")
    return 0
