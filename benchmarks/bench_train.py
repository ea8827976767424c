"""Benchmark of ``forgetscale train``'s step loop against a plain PEFT loop and the machine.

1. Step loop vs a plain eager PEFT loop. Both train the same LoRA (same PEFT config, AdamW,
   gradient clipping, LambdaLR) on the same model and the same batches (the plain loop
   gets its batches pre-built, which only favours it). With ``--torch-compile`` (or a
   config that sets ``torch_compile``) ours trains through compiled blocks: each run
   compiles again (from the disk caches after the warm-up run), inside its timed loop. Ours is the real
   ``forgetscale.training.train`` with measurements only at step 0 and the last step; its
   loop time excludes those two evaluations (they are part 2). Runs alternate
   plain / ours ``--repeats`` times; the medians are compared.

2. Against the machine: the achieved FLOP/s of both loops (6 x (non-embedding parameters +
   output head) x training tokens, the usual dense-transformer estimate: LoRA still runs the
   full forward and the backward through the frozen weights) against the matmul peak
   measured here in the run's dtype on square matmuls with the same threads (and, for
   bfloat16, the float32 peak: what a CPU without a native bfloat16 GEMM multiplies with,
   see forgetscale.kernels).

3. Evaluation share. From the same runs: the time of one evaluation and of one update, and
   from these the share of wall time spent evaluating under the config's own evaluation
   schedule and max_steps.

Default config: the default study's run at rank 8 (embedded default, bfloat16, rsLoRA
all-linear, 8 x 64 tokens, its evaluation schedule).

    python benchmarks/bench_train.py                            # the default study's shapes
    python benchmarks/bench_train.py --no-torch-compile           # the same, eager
    python benchmarks/bench_train.py --config configs/smollm2-lora.yaml --steps 10
    python benchmarks/bench_train.py --torch-compile --steps 20    # compiled blocks

The last line is ``speedup over plain PEFT loop: X.XX``.
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


def matmul_peak(dtype: torch.dtype, n: int = 1024, seconds: float = 2.0) -> float:
    """Sustained FLOP/s of an n x n matmul in ``dtype`` with torch's threads."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b
    count, t0 = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0)


def study_config() -> dict:
    """The default study's run config at rank 8, seed 0 (without the sweep's folders: the
    benchmark's runs write into a temporary folder, never the study's)."""
    from forgetscale.study.runner import EXTRA_KEYS, study_file
    from forgetscale.sweep.spec import SWEEP_OWNED, load_sweep

    sweep = load_sweep(study_file("default"), {}, extra_keys=EXTRA_KEYS)
    config = {k: v for k, v in sweep.runs[0].config.to_dict().items() if k not in SWEEP_OWNED}
    return {**config, "rank": 8, "seed": 0}


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
    parser.add_argument("--config", help="a train config (default: the default study's rank 8)")
    parser.add_argument("--steps", type=int, default=3, help="update steps per timed run")
    parser.add_argument("--repeats", type=int, default=1, help="plain/ours alternations")
    parser.add_argument(
        "--torch-compile",
        action=argparse.BooleanOptionalAction,
        help="ours with torch_compile: true (--no-torch-compile: eager; default: the config's)",
    )
    args = parser.parse_args()

    from forgetscale.config import build_config, load_config
    from forgetscale.environment import cpu_name
    from forgetscale.finetune_data import RecordFields, load_task_data
    from forgetscale.kernels import native_bfloat16_gemm
    from forgetscale.models import count_parameters, load_model
    from forgetscale.training import train
    from forgetscale.training.optim import batch_indices

    base = load_config(args.config) if args.config else build_config(study_config())
    if args.torch_compile is not None:
        base = build_config({**base.to_dict(), "torch_compile": args.torch_compile})
    what = args.config or "the default study's run at rank 8"
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
        f"machine: {cpu_name() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"cuda={torch.cuda.get_device_name() if torch.cuda.is_available() else None}, "
        f"native bfloat16 GEMM: {native_bfloat16_gemm()}"
    )
    print(
        f"config: {what}: {base.model} {base.dtype}, {base.method} r={base.rank} on "
        f"{base.target_modules}{', compiled blocks' if base.torch_compile else ''}, "
        f"batch {base.batch_size} x {base.block_size} tokens; "
        f"{k} timed steps, {args.repeats} repeats"
    )
    # warm-up: the reference, and the compilation of the blocks where the config compiles
    warm = train(
        {**base.to_dict(), **overrides, "max_steps": 1, "eval_steps": [0]}, log=lambda m: None
    )
    if base.torch_compile:
        print(f"  first update, compilation included (once per process): {warm.step_s:.1f}s")

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
    print(f"   ratio           : {ours / plain:.2f}")

    dtype = getattr(torch, base.dtype)
    model = load_model(base.model, dtype=base.dtype, device="cpu").model
    n_params = count_parameters(model).trainable_non_embedding  # all train when freshly loaded
    n_params += model.get_output_embeddings().weight.numel()
    del model
    flop_per_step = 6 * n_params * base.batch_size * base.block_size
    peaks = {base.dtype: matmul_peak(dtype)}
    if dtype is torch.bfloat16:
        peaks["float32"] = matmul_peak(torch.float32)
    print()
    print(
        f"2. against the machine (6 x {n_params:,} params x {base.batch_size * base.block_size} tokens a step)"
    )
    for name, peak in peaks.items():
        print(f"   matmul peak {name:<9}: {peak / 1e9:8.1f} GFLOP/s")
    for name, rate in (("plain PEFT loop", plain), ("forgetscale", ours)):
        ratios = ", ".join(
            f"{rate * flop_per_step / p:.2f} of the {n} peak" for n, p in peaks.items()
        )
        print(f"   {name:<16}: {rate * flop_per_step / 1e9:8.1f} GFLOP/s = {ratios}")

    t_step = statistics.median(ours_s) / k
    t_eval = statistics.median(eval_s)
    n_eval = len(full_schedule)
    n_ck = len([s for s in full_schedule if 0 < s < base.max_steps])
    share = n_eval * t_eval / (n_eval * t_eval + base.max_steps * t_step)
    print()
    print("3. evaluation share under the config's schedule")
    print(
        f"   one evaluation: {t_eval:.2f}s (L_ft on {base.heldout_max_tokens} held-out tokens, "
        f"L_f on {base.forgetting_max_tokens} forgetting tokens); one step: {t_step:.2f}s"
    )
    print(
        f"   schedule: {n_eval} evaluations at steps {full_schedule} over {base.max_steps} "
        f"steps ({n_ck} checkpoints, not counted)"
    )
    print(f"   evaluation share of wall time: {100 * share:.1f}%  (target <= 15%)")
    print()
    print(f"speedup over plain PEFT loop: {ours / plain:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
