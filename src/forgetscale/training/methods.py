"""Model surgery for the fine-tuning methods: which modules LoRA/IA3 adapt, which blocks are
unfrozen, and nothing else (P is counted by :func:`forgetscale.models.count_parameters`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from forgetscale.config import TARGET_PRESETS, TrainConfig
from forgetscale.errors import UserError

_ATTENTION_HINTS = ("attn", "attention")
_MLP_HINTS = ("mlp", "feed_forward", "ffn", "ffwd")


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (the longest ModuleList of sub-modules)."""
    best: nn.ModuleList | None = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise UserError("could not find the transformer blocks of this model")
    return best


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


@dataclass(frozen=True)
class LinearModule:
    name: str  # full module path
    leaf: str
    group: str  # attention | mlp | other
    layer: int | None


def linear_modules(model: nn.Module) -> list[LinearModule]:
    """Every linear layer except the output head, with its group and block index."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    blocks = transformer_blocks(model)
    layer_of: dict[int, int] = {}
    for index, block in enumerate(blocks):
        for sub in block.modules():
            layer_of[id(sub)] = index
    out = []
    for name, module in model.named_modules():
        if module is head or not _is_linear(module):
            continue
        parents = [p.lower() for p in name.split(".")[:-1]]
        if any(h in p for p in parents for h in _ATTENTION_HINTS):
            group = "attention"
        elif any(h in p for p in parents for h in _MLP_HINTS):
            group = "mlp"
        else:
            group = "other"
        out.append(LinearModule(name, name.rsplit(".", 1)[-1], group, layer_of.get(id(module))))
    return out


def resolve_target_modules(
    model: nn.Module, config: TrainConfig
) -> tuple[list[str], list[LinearModule]]:
    """PEFT ``target_modules`` for the config's preset or names, restricted to ``layers``.

    Returns the names to give PEFT (leaf names when they are unambiguous, else full
    module paths) and the selected modules.
    """
    modules = linear_modules(model)
    leaves = sorted({m.leaf for m in modules})
    spec = config.target_modules
    if isinstance(spec, str) and spec in TARGET_PRESETS:
        groups = {"attention": {"attention"}, "mlp": {"mlp"}}.get(
            spec, {"attention", "mlp", "other"}
        )
        chosen = [m for m in modules if m.group in groups]
        if not chosen:
            raise UserError(
                f"target_modules={spec!r} matches no linear module of this model; "
                f"its linear modules are: {', '.join(leaves)}"
            )
    else:
        names = [spec] if isinstance(spec, str) else list(spec)
        unknown = [
            n
            for n in names
            if not any(m.leaf == n or m.name == n or m.name.endswith("." + n) for m in modules)
        ]
        if unknown:
            raise UserError(
                f"unknown target module(s) {', '.join(unknown)}; this model's linear modules "
                f"are: {', '.join(leaves)} (or use attention, mlp, all-linear)"
            )
        chosen = [
            m
            for m in modules
            if any(m.leaf == n or m.name == n or m.name.endswith("." + n) for n in names)
        ]
    if config.layers is not None:
        n_layers = len(transformer_blocks(model))
        bad = [i for i in config.layers if not 0 <= i < n_layers]
        if bad:
            raise UserError(f"layers {bad} out of range: this model has blocks 0..{n_layers - 1}")
        chosen = [m for m in chosen if m.layer in set(config.layers)]
    chosen_leaves = {m.leaf for m in chosen}
    others_with_same_leaf = [m for m in modules if m.leaf in chosen_leaves and m not in chosen]
    if others_with_same_leaf:
        return [m.name for m in chosen], chosen
    return sorted(chosen_leaves), chosen


def _check_rank(model: nn.Module, chosen: list[LinearModule], rank: int) -> None:
    """A LoRA rank above a target layer's width adds parameters that cannot raise its rank:
    refused, naming the narrowest layer."""
    widths = {}
    for m in chosen:
        layer = model.get_submodule(m.name)
        fan_in, fan_out = getattr(layer, "in_features", None), getattr(layer, "out_features", None)
        if fan_in is None or fan_out is None:  # a Conv1D (GPT-2): weight is [in, out]
            fan_in, fan_out = layer.weight.shape
        widths[m.name] = min(int(fan_in), int(fan_out))
    if widths and rank > min(widths.values()):
        name = min(widths, key=widths.get)
        raise UserError(
            f"rank {rank} is above the width of the target layer {name} ({widths[name]}): "
            f"a LoRA rank can be at most {min(widths.values())} on these target_modules"
        )


def apply_method(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Make the config's parameters trainable (PEFT for lora/ia3); returns the model to train."""
    method = config.method
    if method in ("lora", "ia3"):
        from peft import IA3Config, LoraConfig, get_peft_model

        targets, chosen = resolve_target_modules(model, config)
        if method == "lora":
            _check_rank(model, chosen, config.rank)
            peft_config = LoraConfig(
                r=config.rank,
                lora_alpha=config.alpha,
                lora_dropout=config.dropout,
                use_rslora=config.rslora,
                target_modules=targets,
                bias="none",
                task_type="CAUSAL_LM",
            )
        else:
            ff = [
                t
                for t in targets
                if any(m.group == "mlp" and t in (m.leaf, m.name) for m in chosen)
            ]
            peft_config = IA3Config(
                target_modules=targets, feedforward_modules=ff, task_type="CAUSAL_LM"
            )
        return get_peft_model(model, peft_config)
    for p in model.parameters():
        p.requires_grad_(False)
    blocks = transformer_blocks(model)
    if method == "top-layers":
        if config.top_k_layers > len(blocks):
            raise UserError(
                f"top_k_layers={config.top_k_layers} but the model has {len(blocks)} blocks"
            )
        for block in list(blocks)[-config.top_k_layers :]:
            for p in block.parameters():
                p.requires_grad_(True)
    elif method == "full":
        if config.layers is None:
            for p in model.parameters():
                p.requires_grad_(True)
        else:
            bad = [i for i in config.layers if not 0 <= i < len(blocks)]
            if bad:
                raise UserError(f"layers {bad} out of range: blocks are 0..{len(blocks) - 1}")
            for i in config.layers:
                for p in blocks[i].parameters():
                    p.requires_grad_(True)
    else:  # pragma: no cover - validated in the config
        raise UserError(f"unknown method {method!r}")
    return model
