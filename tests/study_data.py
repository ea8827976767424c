"""Results stores for the study tests: measurements drawn from known laws, written
through the real store API (``start_run``, ``add_measurement``, ``set_status``).

The hard and soft L_f and L_ft follow multiplicative laws ``E -/+ A P^-alpha N^-beta``
with the constants below; KL is the soft L_f minus a constant base entropy, and
agreement falls with KL. Step 0 is the base against its own reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from forgetscale.store import open_store

#: P per LoRA rank (P is linear in r).
P_PER_RANK = 120_000
STEPS = (1, 2, 4, 8, 16, 32, 64, 100)
TRUE = {
    "forgetting_loss": {"E": 2.3, "A": 6.0, "alpha": 0.15, "beta": 0.3},
    "forgetting_loss_soft": {"E": 2.6, "A": 6.5, "alpha": 0.15, "beta": 0.3},
    "finetune_loss": {"E": 1.5, "A": 10.0, "alpha": 0.1, "beta": 0.25},
}
BASE = {"forgetting_loss": 1.0, "forgetting_loss_soft": 1.1, "finetune_loss": 4.0}
ENTROPY = 1.1


def law_value(target: str, P: float, N: float, params: dict | None = None) -> float:
    c = params or TRUE[target]
    term = c["A"] * P ** -c["alpha"] * N ** -c["beta"]
    return c["E"] + term if target == "finetune_loss" else c["E"] - term


def make_store(
    path: str | Path,
    ranks: Sequence[int] = (1, 2, 4, 8, 16, 32),
    steps: Sequence[int] = STEPS,
    *,
    seeds: dict[int, int] | None = None,
    noise: float = 0.003,
    seed: int = 0,
    no_p_effect: bool = False,
    unbounded: bool = False,
    confident_run: int | None = None,
    statuses: dict[int, str] | None = None,
    downstream: bool = False,
    config: dict | None = None,
) -> dict[str, str]:
    """Write one finished run per rank (``seeds`` = {rank: number of seeds}) and return
    ``{run_id: "r{rank}s{seed}"}``.

    ``no_p_effect`` gives every P the same curves; ``unbounded`` makes L_f (hard and
    soft) grow like log N and log P without a ceiling, so the power laws' asymptote E
    and exponents run to their bounds;
    ``confident_run`` makes that rank's hard L_f dip below its step-0 value while KL
    rises; ``statuses`` = {rank: status} marks runs failed or diverged. ``config``: keys
    every run's recorded config gets (a real model and data, for a plan that runs one).
    """
    rng = np.random.default_rng(seed)
    seeds = seeds or {}
    statuses = statuses or {}
    ids = {}
    with open_store(path) as st:
        for r in ranks:
            for s in range(seeds.get(r, 1)):
                run_id = f"run-r{r}-s{s}"
                P = P_PER_RANK * r
                Peff = P_PER_RANK if no_p_effect else P
                cfg = {
                    "model": "tiny-llama",
                    "task_data": "shakespeare",
                    "forgetting_data": "pydoc",
                    "method": "lora",
                    "rank": r,
                    "seed": s,
                    "dtype": "bfloat16",
                    "learning_rate": 1e-4,
                    "batch_size": 8,
                    "max_steps": max(steps),
                }
                cfg = {**cfg, **(config or {}), "rank": r, "seed": s, "max_steps": max(steps)}
                st.start_run(run_id, cfg, method="lora", rank=r, params_trained=P,
                             versions={"forgetscale": "test"})  # fmt: skip
                st.add_measurement(
                    run_id,
                    0,
                    {
                        "forgetting_loss": BASE["forgetting_loss"],
                        "forgetting_loss_soft": BASE["forgetting_loss_soft"],
                        "kl": 2e-4,
                        "base_entropy": ENTROPY,
                        "agreement": 0.985,
                        "finetune_loss": BASE["finetune_loss"],
                        "wall_s": 0.0,
                    },
                )
                status = statuses.get(r, "finished")
                for i, n in enumerate(steps):
                    if status != "finished" and i >= len(steps) // 2:
                        break
                    vals = {
                        t: law_value(t, Peff, n) * float(np.exp(noise * rng.standard_normal()))
                        for t in TRUE
                    }
                    if unbounded:
                        for t in ("forgetting_loss", "forgetting_loss_soft"):
                            grow = 1.2 + 0.15 * np.log(n) + 0.05 * np.log(Peff / P_PER_RANK)
                            vals[t] = grow * float(np.exp(noise * rng.standard_normal()))
                    if confident_run == r and n <= 4:
                        vals["forgetting_loss"] = BASE["forgetting_loss"] - 0.04
                    kl = vals["forgetting_loss_soft"] - ENTROPY + 0.01
                    st.add_measurement(
                        run_id,
                        n,
                        {
                            **vals,
                            "kl": kl,
                            "base_entropy": ENTROPY,
                            "agreement": float(np.exp(-0.5 * kl)),
                            "wall_s": 2.0 * n,
                        },
                    )
                if status == "diverged":
                    st.set_status(run_id, "diverged", diverged_step=steps[len(steps) // 2])
                elif status == "failed":
                    st.set_status(run_id, "failed", message="out of memory")
                else:
                    st.set_status(run_id, "finished")
                ids[run_id] = f"r{r}s{s}"
        if downstream:
            for run_id in ids:
                for n, v in ((0, 0.62), (max(steps), 0.55)):
                    row = {"suite": "arc-easy", "metric": "accuracy", "value": v, "n": 200,
                           "ci_low": v - 0.07, "ci_high": v + 0.07}  # fmt: skip
                    st.add_downstream(run_id, n, [row])
    return ids


def add_linear_downstream(
    path: str | Path,
    intercept: float,
    slope: float,
    *,
    noise: float,
    steps: Sequence[int] = (0, 16, 64, 100),
    suite: str = "probe",
    metric: str = "acc",
    seed: int = 3,
) -> None:
    """Write a downstream metric into the store at ``steps`` of every run: ``intercept +
    slope * L_f`` with the hard L_f the run measured at that step, plus normal noise of sd
    ``noise`` (none at step 0: the base model, the same for every run)."""
    from forgetscale.laws.table import read_table

    df = read_table(path)
    rng = np.random.default_rng(seed)
    with open_store(path) as st:
        for run_id, g in df.groupby("run_id"):
            for step in steps:
                lf = float(g.loc[g["step"] == step, "forgetting_loss"].iloc[0])
                v = intercept + slope * lf + (noise * rng.standard_normal() if step else 0.0)
                row = {"suite": suite, "metric": metric, "value": v, "n": 278,
                       "ci_low": v - 0.05, "ci_high": v + 0.05}  # fmt: skip
                st.add_downstream(run_id, step, [row])


_ROOT: list[Path] = []


def _root() -> Path:
    if not _ROOT:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="forgetscale-study-tests-"))
        atexit.register(shutil.rmtree, root, True)
        _ROOT.append(root)
    return _ROOT[0]


_CACHE: dict[str, tuple] = {}


def analysed(name: str):
    """``(store path, run ids, StudyReport)`` of one of the shared test studies, made once
    per test session: ``good`` (known laws, 6 ranks, rank 4 with 2 seeds), ``degenerate``
    (L_f without a ceiling: the power laws' E on its bound), ``mixed`` (a diverged and a
    failed run, a hard L_f below the base while KL rises, a downstream table)."""
    from forgetscale.study.analysis import AnalysisConfig, analyse

    if name in _CACHE:
        return _CACHE[name]
    path = _root() / f"{name}.db"
    if name == "good":
        ids = make_store(path, seeds={4: 2})
        config = AnalysisConfig(bootstrap=8)
    elif name == "degenerate":
        ids = make_store(path, ranks=(1, 2, 4, 8), unbounded=True)
        config = AnalysisConfig(bootstrap=0, laws={"forgetting_loss": ["linear", "multiplicative"]})
    elif name == "mixed":
        ids = make_store(
            path,
            ranks=(1, 2, 4, 8, 16, 32),
            confident_run=2,
            statuses={16: "diverged", 32: "failed"},
            downstream=True,
        )
        config = AnalysisConfig(
            bootstrap=0,
            laws={"forgetting_loss": ["multiplicative"], "forgetting_loss_soft": ["linear"]},
        )
    else:
        raise KeyError(name)
    study = {
        "command": f"forgetscale study tests/{name}.yaml --out {path.parent}",
        "machine": "test machine, 2 cores",
        "versions": {"forgetscale": "test", "torch": "none"},
        "wall_s": 123.0,
    }
    report = analyse(path, config, study=study)
    _CACHE[name] = (path, ids, report)
    return _CACHE[name]
