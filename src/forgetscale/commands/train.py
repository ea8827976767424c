"""``forgetscale train``: one fine-tuning run that tracks forgetting step by step."""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "fine-tune a model and measure L_ft and L_f at scheduled steps"
DESCRIPTION = """\
Fine-tune a model (LoRA, IA3, top layers or full) on task data and measure, at
step 0 (the base) and then at log-spaced and/or regular steps, the fine-tuning
loss L_ft on held-out task data and the forgetting loss L_f against the base
model's reference cache (built when missing). Results go to a SQLite store keyed
by the hash of the resolved config: running the same config again resumes an
interrupted run or does nothing for a finished one.

  forgetscale train configs/smollm2-lora.yaml --rank=16 --max_steps=50

Any config key can be overridden with --key=value (typed by the key's type;
lists as --eval_steps=0,1,2,4). `--help-config` lists every key.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config file (flat key: value pairs)")
    parser.add_argument(
        "--help-config", action="store_true", help="list every config key with its default"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config and run id, then exit without training",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard this config's earlier measurements and checkpoint and run again",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (the config key progress: false)",
    )
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="--key=value",
        help="config overrides",
    )


def run(args: argparse.Namespace) -> int:
    from forgetscale.config import config_help, load_config, stable_json
    from forgetscale.errors import UserError

    # Our own flags may also come after the config file, among the overrides.
    overrides = []
    for item in args.overrides or []:
        flag = item.replace("_", "-")
        if flag in ("--print-config", "--restart", "--help-config", "--no-progress"):
            setattr(args, flag[2:].replace("-", "_"), True)
        else:
            overrides.append(item)
    if args.no_progress:  # as in every command that shows progress
        overrides.append("--progress=false")
    if args.help_config:
        print(config_help())
        return 0
    if args.config is None:
        raise UserError(
            "a config file is required: forgetscale train CONFIG.yaml [--key=value ...]"
        )
    config = load_config(args.config, overrides)
    if args.print_config:
        print(f"run id: {config.run_id}")
        print(stable_json(config.to_dict()))
        return 0

    import signal

    from forgetscale.training import train

    def terminated(signum, frame):  # a SIGTERM (kill, a scheduler) ends the run as Ctrl-C does:
        raise KeyboardInterrupt  # marked interrupted in the store, resumable, not "running"

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, terminated)
    result = train(config, restart=args.restart)
    print(result.summary())
    return 0 if result.status in ("finished", "diverged") else 1
