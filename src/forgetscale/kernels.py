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

With ``torch_compile: true`` a run compiles its transformer blocks (:func:`compile_blocks`):
the blocks share one class, so torch.compile traces and generates code for one block and
every other block reuses it (regional compilation: seconds to a minute instead of a whole
model's minutes). The compiled block fuses the elementwise work (norms, activations, rotary
embedding, residual adds, PEFT's dtype casts) that an eager step spends most of its
non-matmul time on; the matmuls stay torch's own. On the CPU the compiled blocks attend with
transformers' plain matmul-softmax-matmul attention instead of the fused scaled-dot-product
kernel: at the study's short sequences (64 tokens) the fused kernel's backward spends 6.5 ms
a block where the compiled plain attention (two batched matmuls, the softmax fused) spends
about 2 (benchmarks/profile_train.py), and both compute softmax(QK^T/sqrt(d))V with a float32
softmax. Forward and backward of one block's attention alone, fused against compiled plain
(2 threads, AMD EPYC with AVX-512 BF16, 8 x 9 heads of 64): 2.5x faster plain at 64 and 128
tokens, 1.3-1.5x at 256 and 512, but 0.54x at 1,024 (its T x T scores outgrow the caches), so
the switch is made only for sequences of at most :data:`PLAIN_ATTENTION_MAX_TOKENS`.
Evaluation runs eagerly with the model's own attention (:func:`eager_evaluation`), so a
measurement is computed exactly as the reference was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import types
from collections.abc import Iterator
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


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run on ``device`` here, or None when it can."""
    if not hasattr(torch, "compile") or not hasattr(torch.compiler, "set_stance"):
        return f"torch {torch.__version__} has no torch.compile with stances"
    if device.type == "cpu":
        compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
        if not any(c and shutil.which(c) for c in compilers):
            return "no C++ compiler (g++, c++, clang++ or $CXX) for torch.compile on the CPU"
        return None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "no Triton for torch.compile on the GPU"
    return f"torch.compile is not used on {device.type}"


def transformer_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The model's stack of transformer blocks: the module list of two or more modules of
    one class holding the most parameters (``model.layers`` of a Llama, ``h`` of a GPT-2)."""
    best, best_size = None, 0
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = module, size
    return best


def _attention_owner(model: nn.Module) -> nn.Module | None:
    """The transformers model inside ``model`` (a PEFT wrapper, or itself) whose attention
    implementation can be switched, or None."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and hasattr(module, "set_attn_implementation"):
            return module
    return None


# the attention the compiled blocks train with on the CPU, and the model's own (for evaluation)
_COMPILED_CPU_ATTENTION = "eager"  # transformers' name for its plain matmul-softmax attention
_OWN_ATTENTION = "_forgetscale_own_attention"
#: The longest training sequence for which compiled blocks on the CPU attend plainly.
PLAIN_ATTENTION_MAX_TOKENS = 512


def compile_blocks(
    model: nn.Module, device: torch.device, *, sequence_length: int | None = None
) -> tuple[int, str | None]:
    """Compile each transformer block of ``model`` in place (``nn.Module.compile``: parameter
    names, state dicts and checkpoints stay as they are). Returns (blocks compiled, why none
    were). A block whose compilation fails later runs eagerly (dynamo's suppress_errors).
    On the CPU, for training sequences of ``sequence_length`` <= PLAIN_ATTENTION_MAX_TOKENS,
    a model attending with scaled-dot-product attention trains with the plain attention (the
    module docstring says why); :func:`eager_evaluation` switches it back."""
    why = compile_unavailable(device)
    if why is not None:
        return 0, why
    blocks = transformer_blocks(model)
    if blocks is None:
        return 0, "no stack of transformer blocks found to compile"
    short = sequence_length is not None and sequence_length <= PLAIN_ATTENTION_MAX_TOKENS
    owner = _attention_owner(model) if device.type == "cpu" and short else None
    if owner is not None:
        own = getattr(owner.config, "_attn_implementation", None)
        if own == "sdpa":
            owner.set_attn_implementation(_COMPILED_CPU_ATTENTION)
            setattr(model, _OWN_ATTENTION, own)
    import torch._dynamo

    # A run compiles afresh (its kernels come from the on-disk caches where an earlier run
    # made them): what ran before in this process (another rank in a sweep's worker) must
    # neither change this run's kernels (shapes made dynamic) nor use up dynamo's recompile
    # limit, past which the blocks would silently run eagerly.
    torch._dynamo.reset()
    # every block shares one compiled code: its index (an int attribute) must not be a guard
    torch._dynamo.config.allow_unspec_int_on_nn_module = True
    torch._dynamo.config.suppress_errors = True
    for block in blocks:
        block.compile()
    return len(blocks), None


@contextlib.contextmanager
def eager_evaluation(model: nn.Module | None = None) -> Iterator[None]:
    """Run compiled modules eagerly inside the block, and ``model`` with its own attention
    where :func:`compile_blocks` switched it for training (evaluation: computed as the
    reference was, and no second compilation for inference)."""
    own = None if model is None else getattr(model, _OWN_ATTENTION, None)
    owner = None if own is None else _attention_owner(model)
    with contextlib.ExitStack() as stack:
        if hasattr(torch.compiler, "set_stance"):
            stack.enter_context(torch.compiler.set_stance("force_eager"))
        if owner is not None:
            training = owner.config._attn_implementation
            owner.set_attn_implementation(own)
            stack.callback(owner.set_attn_implementation, training)
        yield
