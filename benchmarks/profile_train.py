"""Where one training step of the default study's shapes spends its time, by category.

The step is the study's: the embedded default in bfloat16, rsLoRA r=8 on all linear modules,
8 x 64 tokens, AdamW, gradient clipping (the same code as ``forgetscale train``'s update).
One step is profiled with torch.profiler after two warm-up steps, once as a plain PEFT
model ("plain") and once as ``forgetscale train`` sets the model up ("ours": with
``--torch-compile`` its transformer blocks are compiled; on a CPU without a native bfloat16
GEMM the linear layers go through a float32 GEMM, :mod:`forgetscale.kernels`). Every aten op's own time goes to one category:

- base matmuls (the frozen weights), LoRA matmuls (an operand of width r), the output head
  (an operand of the vocabulary's width), attention (scaled dot-product, both directions;
  in compiled blocks on the CPU, the plain attention's batched matmuls),
  loss (cross-entropy), optimizer (AdamW, gradient clipping, zeroing), elementwise (all
  other ops: norms, activations, residual adds, dtype casts, copies), fused (compiled): the
  kernels torch.compile generated for the blocks where the config sets ``torch_compile``
  (they replace most of the elementwise ops);
- dispatch/Python: the step's wall time not inside any aten op (Python, module calls,
  PEFT's wrappers, autograd bookkeeping, op dispatch).

    python benchmarks/profile_train.py              # ours and plain
    python benchmarks/profile_train.py --only ours  # skip the (slow) plain one
    python benchmarks/profile_train.py --torch-compile  # ours with compiled blocks
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

CATEGORIES = (
    "base matmuls",
    "LoRA matmuls",
    "output head",
    "attention",
    "loss",
    "optimizer",
    "elementwise",
    "fused (compiled)",
    "dispatch/Python",
)
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def study_config(**overrides):
    """The default study's run config at rank 8 (with ``overrides``)."""
    from forgetscale.config import build_config
    from forgetscale.study.runner import EXTRA_KEYS, study_file
    from forgetscale.sweep.spec import load_sweep

    sweep = load_sweep(study_file("default"), {}, extra_keys=EXTRA_KEYS)
    base = sweep.runs[0].config.to_dict()
    return build_config({**base, "rank": 8, "seed": 0, **overrides})


def build(config, ours: bool):
    """The model with its LoRA, the optimizer and scheduler, set up as a run does."""
    from forgetscale.kernels import use_float32_gemm
    from forgetscale.models import load_model
    from forgetscale.training.checkpoint import seed_everything
    from forgetscale.training.methods import apply_method
    from forgetscale.training.optim import make_optimizer, make_scheduler

    model = load_model(config.model, dtype=config.dtype, device="cpu").model
    seed_everything(config.seed)
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        model = apply_method(model, config)
    if ours:
        use_float32_gemm(model)
        if config.torch_compile:
            import torch._inductor.config

            from forgetscale.kernels import compile_blocks

            torch._inductor.config.cpp.enable_kernel_profile = True  # its kernels by name
            compile_blocks(model, torch.device("cpu"), sequence_length=config.block_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    return model, params, optimizer, make_scheduler(optimizer, config)


def step(model, params, optimizer, scheduler, batch, max_grad_norm) -> list[float]:
    """One update as ``forgetscale train`` makes it (one host sync: loss and norm)."""
    loss = model(input_ids=batch, labels=batch, use_cache=False).loss
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    values = torch.stack([loss.detach().float(), norm.float()]).tolist()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return values


def _category(event, rank: int, vocab: int) -> str:
    name = event.name
    chain = []
    parent = event
    while parent is not None:
        chain.append(parent.name)
        parent = parent.cpu_parent
    if any(n.startswith("Optimizer.") for n in chain) or name.startswith("aten::_foreach"):
        return "optimizer"
    if name in ("aten::bmm", "aten::baddbmm"):  # batched: only attention's QK^T and PV
        return "attention"
    if name in MATMULS:
        dims = {d for shape in event.input_shapes for d in shape}
        if vocab in dims:
            return "output head"
        return "LoRA matmuls" if rank in dims else "base matmuls"
    if any("attention" in n for n in chain):
        return "attention"
    if any(k in n for n in chain for k in ("cross_entropy", "log_softmax", "nll_loss")):
        return "loss"
    return "elementwise"


def profile_step(config, ours: bool, batches) -> tuple[float, dict[str, float], list[float]]:
    model, params, optimizer, scheduler = build(config, ours)
    model.train()
    values = []
    for batch in batches[:2]:  # warm-up (and compilation, where the config compiles)
        values.append(step(model, params, optimizer, scheduler, batch, config.max_grad_norm))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        values.append(step(model, params, optimizer, scheduler, batches[2], config.max_grad_norm))
        wall = time.perf_counter() - t0
    vocab = model.get_output_embeddings().weight.shape[0]
    parts = dict.fromkeys(CATEGORIES, 0.0)
    for event in prof.events():
        if event.name.startswith("aten::"):
            parts[_category(event, config.rank, vocab)] += event.self_cpu_time_total / 1e6
        elif "cpp_fused" in event.name:  # graph_<n>_cpp_fused_... (with kernel profiling)
            parts["fused (compiled)"] += event.self_cpu_time_total / 1e6
    # profiler overhead inflates the op times a little; the rest of the wall time is Python
    scale = min(1.0, wall / max(sum(parts.values()), 1e-9))
    parts = {k: v * scale for k, v in parts.items()}
    parts["dispatch/Python"] = max(0.0, wall - sum(parts.values()))
    return wall, parts, values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("ours", "plain"), help="profile one setup only")
    parser.add_argument("--torch-compile", action="store_true", help="ours with compiled blocks")
    args = parser.parse_args()

    from forgetscale.environment import cpu_name
    from forgetscale.kernels import native_bfloat16_gemm

    config = study_config(torch_compile=args.torch_compile)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 49152, (config.batch_size, config.block_size), generator=g)]
    batches *= 3
    print(
        f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"native bfloat16 GEMM: {native_bfloat16_gemm()}"
    )
    print(
        f"step: {config.model} {config.dtype}, LoRA r={config.rank} rslora on "
        f"{config.target_modules}, {config.batch_size} x {config.block_size} tokens, AdamW"
    )
    setups = [s for s in ("plain", "ours") if args.only in (None, s)]
    results = {s: profile_step(config, s == "ours", batches) for s in setups}
    print()
    header = f"{'category':<18}" + "".join(f"{s + ' s':>10}{s + ' %':>8}" for s in setups)
    print(header)
    for cat in CATEGORIES:
        row = f"{cat:<18}"
        for s in setups:
            wall, parts, _ = results[s]
            row += f"{parts[cat]:>10.3f}{100 * parts[cat] / wall:>7.1f}%"
        print(row)
    print(f"{'step (wall)':<18}" + "".join(f"{results[s][0]:>10.3f}{'':>8}" for s in setups))
    for s in setups:
        print(f"{s}: losses / gradient norms of the 3 steps: {results[s][2]}")
    if len(setups) == 2:
        print(f"ours vs plain, profiled step: {results['plain'][0] / results['ours'][0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
