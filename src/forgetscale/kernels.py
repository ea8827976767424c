"""bfloat16 linear layers on CPUs without a native bfloat16 matrix multiply.

On x86 CPUs without AVX-512 BF16 / AMX / AVX2-VNNI-2 (an AMD EPYC of the Zen 3 generation,
older Xeons), torch's bfloat16 ``mm`` falls back to a reference loop: measured 1.2-1.7
GFLOP/s on 2 Zen 3 cores against 90-135 GFLOP/s for float32 (benchmarks/bench_train.py
prints both). There :func:`use_float32_gemm` makes every bfloat16 ``nn.Linear`` of a model
multiply in float32 and round the result to bfloat16: the weights, activations, gradients
and optimizer state stay bfloat16, and both paths accumulate in float32 and round once, so
the numbers differ from the reference loop's only by the float32 summation order (the
order in which any two bfloat16 kernels already differ between CPUs).

Where the CPU multiplies bfloat16 natively, and on accelerators, nothing changes.
"""

from __future__ import annotations

import types
from functools import cache

import torch
from torch import nn
from torch.nn import functional as F


@cache
def native_bfloat16_gemm() -> bool:
    """Whether this CPU's torch multiplies bfloat16 matrices natively (oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # cannot tell: leave torch's own choice alone


def _float32_linear(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w = self.weight
    if x.dtype is torch.bfloat16 and w.dtype is torch.bfloat16 and x.device.type == "cpu":
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), _float32_weight(self), bias).to(torch.bfloat16)
    return F.linear(x, w, self.bias)


def _float32_weight(layer: nn.Linear) -> torch.Tensor:
    """The weight in float32: a frozen weight's copy is kept while it is unchanged (the same
    values as a fresh cast, one cast per run instead of one per call); a trained one is cast
    on every call, inside autograd."""
    w = layer.weight
    if w.requires_grad and torch.is_grad_enabled():
        return w.float()
    key = (w.data_ptr(), w._version)
    cached = getattr(layer, "_float32_weight", None)
    if cached is None or cached[0] != key:
        cached = (key, w.detach().float())
        layer._float32_weight = cached
    return cached[1]


def use_float32_gemm(model: nn.Module, *, even_with_native: bool = False) -> int:
    """Route ``model``'s bfloat16 ``nn.Linear`` layers on the CPU through a float32 GEMM when
    the CPU has no native bfloat16 one (or always, with ``even_with_native``); returns how
    many layers now do (0: nothing changed). Idempotent; call it again after adding layers
    (a PEFT method or adapter)."""
    if native_bfloat16_gemm() and not even_with_native:
        return 0
    count = 0
    for module in model.modules():
        if type(module) is not nn.Linear or module.weight.dtype is not torch.bfloat16:
            continue
        if module.weight.device.type != "cpu":
            continue
        if getattr(module.forward, "__func__", None) is not _float32_linear:
            module.forward = types.MethodType(_float32_linear, module)
        count += 1
    return count
