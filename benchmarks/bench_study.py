"""Where a study's wall time goes, and how fast its training runs against the machine's peak.

Runs a study (default: the built-in ``quick`` study, shortened with ``--max_steps``) through
``forgetscale study`` in a fresh folder, then reads what every run folder recorded
(``status.json`` timings: setup, training steps, L_ft evaluations, L_f evaluations,
checkpoints, downstream suites) and the report's analysis time, and prints:

- the study's wall time split into those parts, and the evaluation share (target <= 15%);
- the training throughput in tokens/s and in achieved FLOP/s (6 x (non-embedding parameters +
  output head) of the base x training tokens, the usual dense-transformer estimate: LoRA still
  runs the full forward and the backward through the frozen weights), against the matmul peak in
  the study's dtype, measured here on square matmuls with the same threads.

    python benchmarks/bench_study.py                       # quick study, 40 steps
    python benchmarks/bench_study.py --study default       # the default study (~30 min)
    python benchmarks/bench_study.py --max_steps=10        # a shorter look
    python benchmarks/bench_study.py --out DIR --existing  # a study that already ran
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def matmul_peak(dtype: torch.dtype, threads: int, n: int = 2048, seconds: float = 3.0) -> float:
    """Sustained FLOP/s of an n x n matmul in ``dtype`` on ``threads`` CPU threads."""
    torch.set_num_threads(threads)
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="quick", help="built-in study or study file")
    parser.add_argument("--out", help="study folder (default: a fresh temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="threads for the matmul peak")
    parser.add_argument(
        "--existing", action="store_true", help="read the study in --out instead of running one"
    )
    args, overrides = parser.parse_known_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-study-"))
    if args.existing:  # a study that already ran: its own records say where its time went
        report = json.loads((out / "report.json").read_text())
        wall = float(report["study"]["runs_wall_s"]) + float(report["seconds"]["total"])
    else:
        cmd = [sys.executable, "-m", "forgetscale", "study", args.study, "--out", str(out),
               "--no-progress", *overrides]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        report = json.loads((out / "report.json").read_text())
    parts: dict[str, float] = {}
    tokens = 0
    for run in report["runs"]:
        status = json.loads((out / "runs" / run["run_id"] / "status.json").read_text())
        for part, seconds in status.get("timings", {}).items():
            if isinstance(seconds, (int, float)):  # not the per-update costs
                parts[part] = parts.get(part, 0.0) + seconds
        tokens += run["last_step"] * run["batch_size"] * run["config"]["block_size"]
    runs_wall = parts.pop("wall", 0.0)
    analysis = float(report["seconds"]["total"])
    other = wall - runs_wall - analysis  # reference build, imports, merging, the report's file
    rows = [(name, parts.get(name, 0.0)) for name in (
        "setup", "steps", "eval_finetune", "eval_forgetting", "eval_other", "checkpoints",
        "downstream")] + [("analysis + report", analysis), ("driver (reference, start-up)", other)]  # fmt: skip
    name = report["study"].get("name") or args.study
    print(f"study {name} ({len(report['runs'])} runs) in {out}: {wall:.1f} s wall")
    for name, seconds in rows:
        print(f"  {name:<30} {seconds:8.1f} s  {100 * seconds / wall:5.1f}%")
    evaluation = parts.get("eval_finetune", 0) + parts.get("eval_forgetting", 0) + parts.get("eval_other", 0)  # fmt: skip
    print(f"  evaluation share                {100 * evaluation / wall:5.1f}%  (target <= 15%)")

    from forgetscale.models import count_parameters, load_model

    first = report["runs"][0]["config"]
    dtype = getattr(torch, first["dtype"])
    base = load_model(first["model"], dtype=first["dtype"]).model
    # every parameter of a freshly loaded model trains, so this is the non-embedding count;
    # the output head's matmul runs on every token too
    n_params = count_parameters(base).trainable_non_embedding
    n_params += base.get_output_embeddings().weight.numel()
    achieved = 6 * n_params * tokens / max(parts.get("steps", 0.0), 1e-9)
    peak = matmul_peak(dtype, args.threads)
    print(f"training: {tokens:,} tokens in {parts.get('steps', 0):.1f} s of steps = "
          f"{tokens / max(parts.get('steps', 0), 1e-9):,.0f} tokens/s")  # fmt: skip
    print(
        f"  achieved {achieved / 1e9:.1f} GFLOP/s (6 x {n_params:,} params (non-embedding + head) x tokens)"
    )
    print(f"  matmul peak ({first['dtype']}, {args.threads} threads) {peak / 1e9:.1f} GFLOP/s")
    print(f"  ratio achieved / peak: {achieved / peak:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
