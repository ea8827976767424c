"""Benchmark: what replay and the KL-to-base penalty cost per update in ``forgetscale train``.

Four arms on the same config, each the real ``forgetscale.training.train`` measured only at
step 0 and the last step (the evaluations are not in the step time):

- plain: the config as it is;
- replay: ``replay_fraction`` p of each update's blocks from ``--replay-data``;
- KL on replay: the same replay + ``kl_weight`` λ on the replay blocks;
- KL on task: λ on the task blocks, no replay.

For each it prints the seconds per update (median over ``--repeats``, arms alternating), the
task and replay tokens per update, the KL positions per update and the KL term's forward
seconds per update (from ``TrainResult.mitigation_costs``), the setup the mitigation added
(reading the replay corpus, the leak check, building the KL reference once), and the ratio of
each arm's seconds per update to plain's. Replay takes the place of task blocks (same tokens
per update); the KL penalty's extra work is the lumped top-K KL on the logits the update has
already computed (no second model).

    python benchmarks/bench_mitigation.py                       # configs/smollm2-lora.yaml
    python benchmarks/bench_mitigation.py --steps 6 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "smollm2-lora.yaml"))
    parser.add_argument("--steps", type=int, default=10, help="update steps per timed run")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the arms")
    parser.add_argument("--replay-data", default="pydoc-replay")
    parser.add_argument("--fraction", type=float, default=0.25, help="replay fraction p")
    parser.add_argument("--kl-weight", type=float, default=0.1, help="λ")
    args = parser.parse_args()

    from forgetscale.config import load_config
    from forgetscale.training import train

    base = load_config(args.config).to_dict()
    k = args.steps
    tmp = Path(tempfile.mkdtemp(prefix="bench-mitigation-"))
    common = {"max_steps": k, "eval_steps": [0, k], "progress": False}
    replay = {"replay_data": args.replay_data, "replay_fraction": args.fraction}
    arms = {
        "plain": {},
        f"replay p={args.fraction:g}": replay,
        f"KL λ={args.kl_weight:g} on replay": {
            **replay,
            "kl_weight": args.kl_weight,
            "kl_data": "replay",
        },
        f"KL λ={args.kl_weight:g} on task": {"kl_weight": args.kl_weight, "kl_data": "task"},
    }
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"cuda={torch.cuda.get_device_name() if torch.cuda.is_available() else None}"
    )
    print(
        f"config: {args.config}: {base['model']}, {base['method']} r={base['rank']}, batch "
        f"{base['batch_size']} x {base['block_size']} tokens; {k} timed steps, "
        f"{args.repeats} repeats"
    )
    # warm-up: loads the model once and builds the forgetting and KL references (cached in
    # the reference folder, which every timed run then finds)
    for extra in arms.values():
        train({**base, **common, **extra, "max_steps": 1, "eval_steps": [0],
               "store": str(tmp / "warm.db")}, log=lambda m: None)  # fmt: skip

    costs: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    setup: dict[str, float] = {}
    for r in range(args.repeats):
        for i, (name, extra) in enumerate(arms.items()):
            store = str(tmp / f"bench-{r}-{i}.db")
            result = train({**base, **common, **extra, "store": store}, log=lambda m: None)
            costs[name].append(result.mitigation_costs())
            setup[name] = result.mitigation_setup_s
            print(f"  repeat {r + 1}: {name}: {costs[name][-1]['step_s_per_update']:.3f} s/update")

    def med(name: str, key: str) -> float:
        return statistics.median(c[key] for c in costs[name])

    plain = med("plain", "step_s_per_update")
    print()
    print(f"{'arm':<24} {'s/update':>9} {'ratio':>6} {'task tok':>9} {'replay tok':>10} "
          f"{'KL pos':>7} {'KL fwd s':>9} {'setup s':>8}")  # fmt: skip
    for name in arms:
        s = med(name, "step_s_per_update")
        print(
            f"{name:<24} {s:>9.3f} {s / plain:>6.3f} {med(name, 'task_tokens_per_update'):>9.0f} "
            f"{med(name, 'replay_tokens_per_update'):>10.0f} "
            f"{med(name, 'kl_positions_per_update'):>7.0f} "
            f"{med(name, 'kl_term_s_per_update'):>9.4f} {setup[name]:>8.2f}"
        )
    print("(ratio: the arm's seconds per update over plain's; setup: the warm reference found)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
