"""Do compiled blocks train the same run as eager ones? The default study's rank-8 run,
``--steps`` updates (20 by default), once eagerly and once with ``torch_compile``: L_ft and
L_f at the last step side by side, their differences, and the time of the update loop
(compilation included, once per process; the disk caches may be warm from earlier runs).

    python benchmarks/compile_match.py

The compiled blocks fuse the elementwise work and round once where eager rounds after each
op, so the two runs differ in the last bits at first and by the chaos of training later;
what matters is that the difference stays under the study's noise floor (the spread of L_f
between two seeds of one configuration, in the study's report).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from bench_train import study_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="updates per run")
    args = parser.parse_args()

    from forgetscale.environment import cpu_name
    from forgetscale.training import train

    print(f"machine: {cpu_name()}; the default study's run at rank 8, {args.steps} updates")
    tmp = tempfile.mkdtemp(prefix="compile-match-")
    rows = {}
    for compiled in (False, True):
        config = {
            **study_config(),
            "max_steps": args.steps,
            "eval_steps": [0, args.steps],
            "progress": False,
            "torch_compile": compiled,
            "store": f"{tmp}/{'compiled' if compiled else 'eager'}.db",
        }
        t0 = time.perf_counter()
        result = train(config, log=lambda m: None)
        last = result.measurements[-1]
        rows[compiled] = (last["finetune_loss"], last["forgetting_loss"], result.step_s)
        print(
            f"  {'compiled' if compiled else 'eager   '}: L_ft {last['finetune_loss']:.4f}, "
            f"L_f {last['forgetting_loss']:.4f}, update loop {result.step_s:.1f}s, "
            f"run {time.perf_counter() - t0:.1f}s"
        )
    d_ft = abs(rows[True][0] - rows[False][0])
    d_f = abs(rows[True][1] - rows[False][1])
    print(f"|compiled - eager| at step {args.steps}: L_ft {d_ft:.4f}, L_f {d_f:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
