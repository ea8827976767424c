"""Benchmark of ``forgetscale sweep``'s overhead: the same runs through the sweep vs a loop.

The same 8 tiny runs (a tiny random Llama, LoRA ranks 2/4/8/16 x seeds 0/1) are run

- **loop**: one Python process calling the train API ``forgetscale.training.train`` on each
  expanded config in turn (the reference is built by the first run and reused);
- **sweep**: ``forgetscale sweep SWEEP.yaml --executor local`` (one worker: the same runs one
  after the other), i.e. the driver (plan, reference built once, dispatch) plus a worker
  process, run folders and the merge into the sweep's store.

Both are timed as whole processes (imports included), with the same threads, alternating
``--repeats`` times; the medians are compared. The sweep's overhead (dispatch, reference
sharing, merging) is ``sweep / loop - 1``; target <= 5% of the runs' own time.

Other executors: ``--executor ray --executor slurm`` runs the same sweep through them too
and reports each one's overhead per run, ``(time - loop) / runs``; give their flags with
``--executor-flags 'ray=--ray-address=auto'``. An executor whose extra or cluster is
missing is reported as not run.

    python benchmarks/bench_sweep.py                        # 8 runs of 60 steps
    python benchmarks/bench_sweep.py --steps 30 --repeats 1
    python benchmarks/bench_sweep.py --executor local --executor ray

Prints our figure, the plain baseline's, and their ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOOP = """
import sys, time
from forgetscale.sweep.spec import load_sweep
from forgetscale.training import train
sweep = load_sweep(sys.argv[1], {"store": sys.argv[2]})
for run in sweep.runs:
    config = run.config.to_dict() | {
        "store": sys.argv[2], "checkpoint_dir": None, "output_dir": None, "reference_dir": None
    }
    result = train(config, log=lambda m: None)
    assert result.status == "finished", result.summary()
"""


WORKER_IMPORTS = """
import peft, torch, transformers
import forgetscale.sweep.worker, forgetscale.training
"""


def make_inputs(folder: Path, hidden: int, layers: int) -> None:
    """A tiny random Llama with a BPE tokenizer, task text and a forgetting corpus."""
    sys.path.insert(0, str(ROOT / "tests"))
    from pydoc_data.topics import topics

    from conftest import make_tiny_model, train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(320)
    model = make_tiny_model(len(tokenizer), hidden=hidden, layers=layers)
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    keys = sorted(topics)
    with (folder / "task.jsonl").open("w") as fh:
        for k in keys[:40]:
            fh.write(json.dumps({"text": topics[k][:3000]}) + "\n")
    with (folder / "general.jsonl").open("w") as fh:
        for k in keys[-20:]:
            fh.write(json.dumps({"text": topics[k][:3000]}) + "\n")


def write_sweep(folder: Path, steps: int) -> Path:
    text = f"""\
base:
  model: ./model
  task_data: ./task.jsonl
  forgetting_data: ./general.jsonl
  block_size: 64
  batch_size: 8
  learning_rate: 1.0e-3
  max_steps: {steps}
  eval_log_points: 6
  forgetting_max_tokens: 4096
  heldout_max_tokens: 2048
grid:
  rank: [2, 4, 8, 16]
  seed: [0, 1]
"""
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system, of the process and every process it waited
    for: the sweep's workers included) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="updates per run")
    parser.add_argument("--hidden", type=int, default=64, help="tiny model's hidden size")
    parser.add_argument("--layers", type=int, default=4, help="tiny model's layers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats")
    parser.add_argument(
        "--executor",
        action="append",
        help="executors to time (default: local); repeat for several",
    )
    parser.add_argument(
        "--executor-flags",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="extra flags for one executor, e.g. 'ray=--ray-address=auto'",
    )
    args = parser.parse_args()
    executors = args.executor or ["local"]
    extra = {}
    for item in args.executor_flags:
        name, _, flags = item.partition("=")
        extra[name] = shlex.split(flags)

    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "FORGETSCALE_THREADS": str(args.threads),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        make_inputs(work, args.hidden, args.layers)
        sweep = write_sweep(work, args.steps)
        n_runs = 8
        times: dict[str, list[tuple[float, float]]] = {"loop": [], **{e: [] for e in executors}}
        skipped: dict[str, str] = {}
        for r in range(args.repeats):
            loop_store = work / f"loop-{r}" / "results.db"
            times["loop"].append(
                timed([sys.executable, "-c", LOOP, str(sweep), str(loop_store)], work, env)
            )
            for name in executors:
                if name in skipped:
                    continue
                store = work / f"{name}-{r}" / "results.db"
                cmd = [
                    sys.executable, "-m", "forgetscale", "sweep", str(sweep),
                    "--executor", name, "--no-progress", f"--store={store}",
                    *(["--workers", "1"] if name == "local" else []),
                    *extra.get(name, []),
                ]  # fmt: skip
                try:
                    times[name].append(timed(cmd, work, env))
                except RuntimeError as exc:
                    skipped[name] = str(exc).strip().splitlines()[-1]
            print(
                f"repeat {r + 1}: "
                + ", ".join(
                    f"{k} {v[-1][0]:.1f}s wall / {v[-1][1]:.1f}s CPU"
                    for k, v in times.items()
                    if len(v) > r
                ),
                file=sys.stderr,
            )

        # what a worker process costs to start (once per worker, not per run)
        start_cpu = statistics.median(
            timed([sys.executable, "-c", WORKER_IMPORTS], work, env)[1] for _ in range(3)
        )

        def med(name: str, i: int) -> float:
            return statistics.median(t[i] for t in times[name])

        print(
            f"bench_sweep: {n_runs} runs x {args.steps} steps, tiny Llama hidden {args.hidden} x "
            f"{args.layers} layers, {args.threads} thread(s); "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
            f"average {os.getloadavg()[0]:.1f}; medians of {args.repeats}"
        )
        print("  wall time is what a user waits; CPU time (processes and their workers) is the")
        print("  work done, and stays comparable on a machine shared with other jobs")
        loop_wall, loop_cpu = med("loop", 0), med("loop", 1)
        print(f"  train API loop (baseline)     {loop_wall:8.1f} s wall  {loop_cpu:8.1f} s CPU")
        for name in executors:
            if name in skipped:
                print(f"  sweep --executor {name:<6}: not run ({skipped[name]})")
                continue
            wall, cpu = med(name, 0), med(name, 1)
            print(
                f"  sweep --executor {name:<6}      {wall:8.1f} s wall  {cpu:8.1f} s CPU   "
                f"ratio {wall / loop_wall:.3f} wall, {cpu / loop_cpu:.3f} CPU "
                f"(overhead {100 * (cpu / loop_cpu - 1):+.1f}% CPU, "
                f"{(wall - loop_wall) / n_runs:+.2f} s wall per run)"
            )
            if name == "local":
                per_run = (cpu - loop_cpu) / n_runs
                print(
                    f"    the worker imports torch, transformers and PEFT once ({start_cpu:.1f} s "
                    f"CPU), as the loop's own process does; the driver imports neither. What the "
                    f"sweep adds per run (dispatch, run folder, merge, progress): "
                    f"{per_run:+.2f} s CPU = {100 * per_run * n_runs / loop_cpu:+.1f}%"
                )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
