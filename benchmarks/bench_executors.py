"""Per-run overhead of the Ray and Slurm executors against running the worker directly.

The same tiny run (the tests' 2-layer random Llama, configs/minimal.yaml: 12 steps, 6
evaluations) is trained ``--runs`` times, each time a new run (another seed) in its own run
folder, one at a time, by:

- ``direct``: :func:`forgetscale.sweep.worker.run_folder` in this process (imports warm);
- ``process``: ``python -m forgetscale.sweep.worker RUN_DIR``, a fresh process per run (what a
  local worker pays: interpreter + torch/transformers imports);
- ``ray``: one Ray task per run on a local Ray (2 CPUs; started once before, its start-up time
  printed apart), time from ``submit`` to ``wait`` returning it;
- ``slurm``: one Slurm job per run on the running cluster (``scripts/local-slurm.sh start``),
  time from ``submit`` to ``wait`` returning it (poll interval 0.5 s).

The shared reference is built before the timings. Prints the median seconds per run, the
overhead over ``direct`` and the ratio to it, measured in one run (and the first run of each way
apart: a Ray worker process is reused by later tasks, so only the first pays the imports).

    OMP_NUM_THREADS=1 python benchmarks/bench_executors.py            # direct, process, ray, slurm
    OMP_NUM_THREADS=1 python benchmarks/bench_executors.py --runs 5 --skip slurm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' tiny model and run folders


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per way (median reported)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["process", "ray", "slurm"])
    args = ap.parse_args()

    import torch
    from conftest import save_tiny_model_dir
    from sweep_runs import make_inputs, make_run, worker_env

    from forgetscale.sweep.executors import get_executor
    from forgetscale.sweep.worker import run_folder

    torch.set_num_threads(1)
    os.environ.update(worker_env())  # Ray/Slurm workers: this checkout, one thread
    work = Path(tempfile.mkdtemp(prefix="bench-executors-", dir=os.environ.get("BENCH_DIR")))
    inputs = make_inputs(work, save_tiny_model_dir(work / "model"), _general(work))
    seed = iter(range(10_000))

    def new_run(way: str):
        return make_run(work / way, inputs, f"{way}-{len(list((work / way).glob('*')))}",
                        seed=next(seed))  # fmt: skip

    run_folder(new_run("warmup").run_dir, threads=1)  # builds the shared reference
    times: dict[str, list[float]] = {}
    run_walls: dict[str, list[float]] = {}

    def timed(way: str, fn) -> None:
        (work / way).mkdir(exist_ok=True)
        for _ in range(args.runs):
            task = new_run(way)
            t0 = time.perf_counter()
            fn(task)
            times.setdefault(way, []).append(time.perf_counter() - t0)
            state = json.loads((task.run_dir / "status.json").read_text())
            assert state["status"] == "finished", state
            run_walls.setdefault(way, []).append(state["wall_s"])

    timed("direct", lambda t: run_folder(t.run_dir, threads=1))
    if "process" not in args.skip:
        timed("process", lambda t: subprocess.run(
            [sys.executable, "-m", "forgetscale.sweep.worker", str(t.run_dir)],
            env=worker_env(), check=True))  # fmt: skip
    extra = {}
    for name in ("ray", "slurm"):
        if name in args.skip:
            continue
        cls = get_executor(name)
        opts = cls.Options(num_cpus=2) if name == "ray" else cls.Options(poll_interval_s=0.5)
        t0 = time.perf_counter()
        try:
            ex = cls(opts, work)
        except Exception as exc:  # e.g. Slurm not running: say so, go on
            print(f"{name}: skipped ({exc})")
            continue
        extra[name] = time.perf_counter() - t0

        def through(task, ex=ex):
            ex.submit(task)
            while not ex.wait(timeout=60):
                pass

        try:
            timed(name, through)
        finally:
            ex.close()

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}; tiny run: 12 steps, 6 evaluations; median of {args.runs} runs")  # fmt: skip
    for name, secs in extra.items():
        what = "local Ray start (once per sweep)" if name == "ray" else "Slurm checks (once)"
        print(f"{what}: {secs:.2f} s")
    base = statistics.median(times["direct"])
    print("inside run_folder: its own wall time (status.json; in a fresh process it includes the")
    print("lazy transformers/peft imports); overhead and ratio: median s/run against direct")
    print(f"{'way':<8} {'first s':>8} {'median s/run':>13} {'inside run_folder':>18} "
          f"{'overhead s/run':>15} {'ratio':>6}")  # fmt: skip
    for way, secs in times.items():
        med = statistics.median(secs)
        inside = statistics.median(run_walls[way])
        print(f"{way:<8} {secs[0]:8.2f} {med:13.2f} {inside:18.2f} {med - base:15.2f} "
              f"{med / base:6.2f}")  # fmt: skip
    return 0


def _general(root: Path) -> Path:
    from pydoc_data.topics import topics

    path = root / "general.jsonl"
    with path.open("w") as fh:
        for key in sorted(topics)[40:52]:
            fh.write(json.dumps({"text": topics[key][:1500]}) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
