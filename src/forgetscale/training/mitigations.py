"""A run's mitigations from its config: the replay blocks, the leak check, the KL penalty.

Called by :class:`forgetscale.training.run._Run` while it loads: :func:`load_replay` and
:func:`check_task_leak` before any reference is built (a leak is refused before any work),
:func:`kl_penalty_for_config` after the forgetting reference and before the method is put on
the model, so the KL reference is the base model M's (one model in memory).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from forgetscale.config import TrainConfig
from forgetscale.finetune_data import Examples
from forgetscale.mitigation import check_no_leak, evaluation_documents, replay_documents
from forgetscale.reference import ReferenceCache
from forgetscale.training.mixing import KLPenalty, ReplayMixer, kl_targets, replay_examples


def _evaluated(cfg: TrainConfig, tokenizer: Any) -> list[str]:
    return evaluation_documents(
        cfg.forgetting_data,
        tokenizer,
        block_size=cfg.forgetting_block_size or cfg.block_size,
        max_tokens=cfg.forgetting_max_tokens,
        text_field=cfg.text_field,
        split=cfg.forgetting_split,
    )


def load_replay(cfg: TrainConfig, tokenizer: Any) -> Examples | None:
    """The replay corpus packed into blocks of ``block_size`` (None without replay); refused
    when it shares a document with the forgetting evaluation's blocks."""
    if cfg.replay_fraction == 0:
        return None
    from forgetscale.corpus import pack_documents

    docs = replay_documents(
        cfg.replay_data,
        tokenizer,
        forgetting_block_size=cfg.forgetting_block_size or cfg.block_size,
        forgetting_max_tokens=cfg.forgetting_max_tokens,
        text_field=cfg.text_field,
    )
    check_no_leak("replay_data", cfg.replay_data, docs, _evaluated(cfg, tokenizer))
    return replay_examples(pack_documents(docs, tokenizer, cfg.block_size))


def check_task_leak(cfg: TrainConfig, tokenizer: Any, data_format: str) -> None:
    """With the KL penalty on task data: refuse task data that holds an evaluation document."""
    if cfg.kl_weight == 0 or cfg.kl_data != "task":
        return
    from forgetscale.corpus import load_documents, read_source_records

    if data_format == "text":
        docs = load_documents(cfg.task_data, text_field=cfg.text_field, split=cfg.task_split)
    else:
        docs = [
            text
            for record in read_source_records(cfg.task_data, split=cfg.task_split)
            for text in _strings(record)
        ]
    check_no_leak("task_data (kl_data: task)", cfg.task_data, docs, _evaluated(cfg, tokenizer))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def kl_penalty_for_config(
    cfg: TrainConfig,
    model: Any,
    tokenizer: Any,
    model_name: str,
    task: Examples,
    replay: Examples | None,
    mixer: ReplayMixer,
    folder: Path,
    device: torch.device,
    log: Callable[[str], None],
) -> KLPenalty | None:
    """The KL penalty (None when ``kl_weight`` is 0), with the base's top-K on every block of
    ``kl_data`` the run's ``max_steps`` updates use: found by fingerprint in ``folder`` or
    built once with ``model`` (still the base)."""
    if cfg.kl_weight == 0:
        return None
    used = mixer.used(cfg.max_steps)
    source, rows = (task, used.task) if cfg.kl_data == "task" else (replay, used.replay)
    assert source is not None  # the config refuses kl_data=replay without replay
    blocks = source.input_ids[rows]
    name = cfg.task_data if cfg.kl_data == "task" else cfg.replay_data
    reference, path = ReferenceCache.find_or_build_blocks(
        model,
        tokenizer,
        blocks,
        model_name=model_name,
        corpus=f"{name} ({cfg.kl_data} blocks of the KL penalty)",
        corpus_sha=hashlib.sha256(blocks.to(torch.int64).numpy().tobytes()).hexdigest(),
        top_k=cfg.reference_top_k,
        batch_size=cfg.eval_batch_size,
        folder=folder,
        progress=cfg.progress,
        log=log,
    )
    return KLPenalty(
        cfg.kl_weight, cfg.kl_data, reference, rows, len(source), kl_targets(source), device
    )
