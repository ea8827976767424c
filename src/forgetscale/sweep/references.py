"""The reference caches of a sweep: found or built once, before any run is dispatched.

Every run of a sweep compares its model with the base model's own predictions on the
forgetting corpus (docs/design.md, "Exact definitions"). The runs that share a base model
and a forgetting setting share one reference file; :func:`build_references` finds or builds
each of them with the run's own lookup (:func:`forgetscale.reference.reference_for_config`),
so that every run finds its reference ready. The executor decides where this happens
(:meth:`forgetscale.sweep.executors.base.Executor.build_references`): where the runs run
(the local executor's first worker, a Ray task, a Slurm job), which calls
:func:`build_here` with the configs as plain data and sends back its answer.
"""

from __future__ import annotations

import gc
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgetscale.config import TrainConfig, stable_json


def reference_key(config: TrainConfig) -> str:
    """What decides a run's reference file: runs with the same key share one."""
    return stable_json(
        {
            k: getattr(config, k)
            for k in (
                "model",
                "adapter",
                "dtype",
                "trust_remote_code",
                "device",
                "forgetting_data",
                "text_field",
                "forgetting_block_size",
                "block_size",
                "forgetting_max_tokens",
                "reference_top_k",
                "reference",
                "reference_dir",
            )
        }
        | {"block": config.forgetting_block_size or config.block_size}
    )


def build_references(configs: list[TrainConfig], log: Callable[[str], None]) -> list[Path]:
    """Find or build the reference cache of each distinct base model x forgetting setting among
    ``configs``, exactly as each run would (the same lookup, the same path), so that every run
    finds it ready. The base model is loaded once per (model, adapter, dtype)."""
    import torch

    from forgetscale.models import apply_adapter, load_model, resolve_device

    # the run's own lookup: one place, shared with forgetscale train
    from forgetscale.reference import reference_for_config as reference_for_run

    groups: dict[str, TrainConfig] = {}
    for config in configs:
        groups.setdefault(reference_key(config), config)
    by_model: dict[tuple, list[TrainConfig]] = {}
    for config in groups.values():
        key = (config.model, config.adapter, config.dtype, config.trust_remote_code, config.device)
        by_model.setdefault(key, []).append(config)
    paths = []
    for (model_spec, adapter, dtype, trust, device), group in by_model.items():
        loaded = load_model(
            model_spec, dtype=dtype, trust_remote_code=trust, device=resolve_device(device)
        )
        model, name = loaded.model, model_spec
        if adapter:
            model = apply_adapter(model, adapter).merge_and_unload()
            name = f"{model_spec}+{adapter}"
        for config in group:
            _, path = reference_for_run(config, model, loaded.tokenizer, name, log)
            paths.append(Path(path))
        del model, loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return paths


def build_here(
    configs: list[dict[str, Any]],
    *,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build the references of ``configs`` (``TrainConfig.to_dict()`` each) in this process, for
    a driver elsewhere: never raises; the answer says ``references`` ``ready`` or ``failed`` (with
    ``message``, and ``user_error`` for bad input the driver shows as one line) and carries the
    log ``lines``, each also passed to ``log`` as it comes."""
    from forgetscale.config import build_config
    from forgetscale.errors import UserError

    lines: list[str] = []

    def emit(message: str) -> None:
        lines.append(message)
        if log is not None:
            log(message)
        else:
            print(message, flush=True)

    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        build_references([build_config(c) for c in configs], emit)
    except UserError as exc:
        return {"references": "failed", "message": str(exc), "user_error": True, "lines": lines}
    except Exception as exc:  # noqa: BLE001 - answered; the driver stops the sweep
        print(traceback.format_exc(), flush=True)
        message = f"{type(exc).__name__}: {exc}"
        return {"references": "failed", "message": message, "lines": lines}
    return {"references": "ready", "lines": lines}


def check_answer(answer: dict[str, Any], where: str) -> None:
    """Raise what a remote :func:`build_here` answered, if it failed: bad input as the one-line
    :class:`~forgetscale.errors.UserError` it was, anything else with ``where`` to look."""
    from forgetscale.errors import UserError

    if answer.get("references") == "ready":
        return
    if answer.get("user_error"):
        raise UserError(answer["message"])
    raise RuntimeError(f"building the reference failed: {answer.get('message')} ({where})")
