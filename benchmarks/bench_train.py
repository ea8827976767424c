"""Benchmark of ``forgetscale train``'s step loop, and of the cost of its evaluations.

1. Step loop vs a plain PEFT loop. Both train the same LoRA (same PEFT config, AdamW,
   gradient clipping, LambdaLR) on the same model and the same batches (the plain loop
   gets its batches pre-built, which only favours it). Ours is the real
   ``forgetscale.training.train`` with measurements only at step 0 and the last step; its
   loop time excludes those two evaluations (they are part 2). Runs alternate
   plain / ours ``--repeats`` times; the medians are compared. Target: ours >= 0.95 x plain.

2. Evaluation share. From the same runs: the time of one evaluation (L_ft on the
   held-out budget + L_f, soft L_f, KL, agreement on the forgetting budget) and of one
   update step, and from these the share of wall time spent evaluating under the config's
   evaluation schedule (default: step 0 + 6 log-spaced steps over max_steps) with its
   max_steps. Target: <= 20%.

    python benchmarks/bench_train.py                       # configs/smollm2-lora.yaml
    python benchmarks/bench_train.py --steps 20 --repeats 3

Prints our figure, the plain baseline's, and their ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def plain_peft_loop(config, batches: list[torch.Tensor]) -> float:
    """A plain PEFT training loop over ``batches``; returns its wall time in seconds."""

    from forgetscale.models import load_model, resolve_device
    from forgetscale.training.checkpoint import seed_everything
    from forgetscale.training.methods import resolve_target_modules
    from forgetscale.training.optim import make_scheduler

    device = resolve_device(config.device)
    loaded = load_model(config.model, dtype=config.dtype, device=device)
    model = loaded.model
    targets, _ = resolve_target_modules(model, config)
    seed_everything(config.seed)
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        model = _peft(model, config, targets)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    scheduler = make_scheduler(optimizer, config)
    model.train()
    batches = [b.to(device) for b in batches]
    with torch.inference_mode():  # the same warm-up ours gets from its step-0 evaluation
        model.eval()
        model(input_ids=batches[0])
        model.train()
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peft(model, config, targets):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model,
        LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            use_rslora=config.rslora,
            target_modules=targets,
            task_type="CAUSAL_LM",
        ),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "smollm2-lora.yaml"))
    parser.add_argument("--steps", type=int, default=10, help="update steps per timed run")
    parser.add_argument("--repeats", type=int, default=2, help="plain/ours alternations")
    args = parser.parse_args()

    from forgetscale.config import load_config
    from forgetscale.finetune_data import RecordFields, load_task_data
    from forgetscale.training import train
    from forgetscale.training.optim import batch_indices

    base = load_config(args.config)
    if base.method != "lora" or base.optimizer != "adamw" or base.grad_accumulation != 1:
        sys.exit("the plain baseline is a LoRA + AdamW loop without accumulation")
    full_schedule = base.evaluation_steps()
    k = args.steps
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    # the reference is built once, outside any timing, and shared through its folder
    overrides = {
        "max_steps": k,
        "eval_steps": [0, k],
        "progress": False,
        "store": str(tmp / "bench.db"),
    }

    from forgetscale.models import load_tokenizer, resolve_model_source

    tokenizer = load_tokenizer(resolve_model_source(base.model))
    data = load_task_data(
        base.task_data,
        tokenizer,
        block_size=base.block_size,
        fmt=base.task_format,
        fields=RecordFields(base.text_field, base.prompt_field, base.response_field),
        split=base.task_split,
        heldout_source=base.heldout_data,
        heldout_fraction=base.heldout_fraction,
    )
    batches = [
        data.train.input_ids[batch_indices(s, len(data.train), base.batch_size, base.seed)]
        for s in range(k)
    ]

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"cuda={torch.cuda.get_device_name() if torch.cuda.is_available() else None}"
    )
    print(
        f"config: {args.config}: {base.model}, {base.method} r={base.rank} on "
        f"{base.target_modules}, batch {base.batch_size} x {base.block_size} tokens; "
        f"{k} timed steps, {args.repeats} repeats"
    )
    train({**base.to_dict(), **overrides, "max_steps": 1, "eval_steps": [0]}, log=lambda m: None)

    plain_s, ours_s, eval_s = [], [], []
    for r in range(args.repeats):
        plain_s.append(plain_peft_loop(base, batches))
        cfg = {**base.to_dict(), **overrides, "store": str(tmp / f"bench-{r}.db")}
        result = train(cfg, log=lambda m: None)
        ours_s.append(result.step_s)
        eval_s.append(result.eval_s / 2)  # two evaluations: step 0 and step k
        print(
            f"  repeat {r + 1}: plain {k / plain_s[-1]:.4f} steps/s, "
            f"ours {k / ours_s[-1]:.4f} steps/s, one evaluation {eval_s[-1]:.2f}s"
        )
    plain = k / statistics.median(plain_s)
    ours = k / statistics.median(ours_s)
    print()
    print("1. step loop (median over repeats)")
    print(f"   plain PEFT loop : {plain:.4f} steps/s")
    print(f"   forgetscale     : {ours:.4f} steps/s")
    print(f"   ratio           : {ours / plain:.3f}  (target >= 0.95)")

    t_step = statistics.median(ours_s) / k
    t_eval = statistics.median(eval_s)
    n_eval = len(full_schedule)
    n_ck = len([s for s in full_schedule if 0 < s < base.max_steps])
    share = n_eval * t_eval / (n_eval * t_eval + base.max_steps * t_step)
    print()
    print("2. evaluation share under the config's schedule")
    print(
        f"   one evaluation: {t_eval:.2f}s (L_ft on {base.heldout_max_tokens} held-out tokens, "
        f"L_f on {base.forgetting_max_tokens} forgetting tokens); one step: {t_step:.2f}s"
    )
    print(
        f"   schedule: {n_eval} evaluations at steps {full_schedule} over {base.max_steps} "
        f"steps ({n_ck} checkpoints, not counted)"
    )
    print(f"   evaluation share of wall time: {100 * share:.1f}%  (target <= 20%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
