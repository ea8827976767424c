"""The base model's predictions on the forgetting corpus, computed once and cached.

For every predicted position i (block b, position t = 0..T-2 predicting token
t+1) the cache keeps what the metrics of :mod:`forgetscale.metrics` need from the
base distribution p = p_M(.|ctx):

================  ==================  =============================================
tensor            shape / dtype       meaning
================  ==================  =============================================
input_ids         [B, T] int32        the packed token blocks (the model reruns them)
target_ids        [B, T-1] int32      y_i = argmax_v p(v), ties -> lowest id
target_logprob    [B, T-1] float32    log p(y_i)
topk_ids          [B, T-1, K] int32   the K most likely tokens under p
topk_logprobs     [B, T-1, K] float32 their log-probabilities
tail_mass         [B, T-1] float32    1 - sum of the top-K probabilities (exact, 0 if K=V)
entropy           [B, T-1] float32    entropy of p over the K tokens + the lumped tail
================  ==================  =============================================

The file is safetensors; its header metadata carries the fingerprint as JSON
(model, tokenizer hash, corpus hash, block size, K, dtype, library versions).
Nothing is pickled. The base pass streams over the corpus in batches, so peak
memory is set by the batch size (one batch of logits), not by the corpus size.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from forgetscale.environment import library_versions
from forgetscale.errors import UserError
from forgetscale.models import (
    dtype_name,
    evaluation_mode,
    max_context,
    output_vocab_size,
    tokenizer_fingerprint,
)
from forgetscale.outputs import atomic_output, check_output
from forgetscale.topk import base_statistics

if TYPE_CHECKING:
    from collections.abc import Callable

    from forgetscale.config import TrainConfig

FORMAT = "forgetscale.reference/1"
TENSOR_NAMES = (
    "input_ids",
    "target_ids",
    "target_logprob",
    "topk_ids",
    "topk_logprobs",
    "tail_mass",
    "entropy",
)
INT_TENSORS = ("input_ids", "target_ids", "topk_ids")
FLOAT_TENSORS = ("target_logprob", "topk_logprobs", "tail_mass", "entropy")
LOGPROB_SLACK = 1e-4
"""Log-probabilities, entropies and tail masses may stray this far past their bounds
(0, 0 and 1) by float32 rounding."""


@dataclass
class ReferenceCache:
    """Base-model predictions on a token corpus, plus the fingerprint that identifies them."""

    input_ids: torch.Tensor
    target_ids: torch.Tensor
    target_logprob: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    tail_mass: torch.Tensor
    entropy: torch.Tensor
    fingerprint: dict[str, Any] = field(default_factory=dict)

    # -- shape facts ---------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def block_size(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.topk_ids.shape[-1])

    @property
    def positions(self) -> int:
        """Number of predicted positions (tokens the metrics average over)."""
        return self.n_blocks * (self.block_size - 1)

    # -- the base model's own numbers (the "step 0" column) -------------------
    @property
    def base_forgetting_loss(self) -> float:
        """Hard L_f of the base model itself: mean -log p(y_i). Not 0."""
        return float(-self.target_logprob.double().mean())

    @property
    def base_entropy(self) -> float:
        return float(self.entropy.double().mean())

    # -- compatibility ----------------------------------------------------------
    def check_compatible(self, tokenizer: Any, model: nn.Module | None = None) -> None:
        """Refuse a model whose token ids do not mean what the reference's ids mean."""
        tok = self.fingerprint.get("tokenizer", {})
        if tok.get("sha256") and tok["sha256"] != tokenizer_fingerprint(tokenizer):
            raise UserError(
                f"reference was built with another tokenizer ({tok.get('class')}, "
                f"{tok.get('vocab_size')} tokens, from model {self.fingerprint.get('model')}); "
                "its token ids mean nothing to this model: build a reference with this model's base"
            )
        if model is not None:
            want = self.fingerprint.get("vocab_size")
            have = output_vocab_size(model)
            if want is not None and want != have:
                raise UserError(
                    f"reference was built for a model with {want} output tokens, this model has {have}"
                )
            context = max_context(model)
            if context is not None and self.block_size > context:
                raise UserError(
                    f"reference block size {self.block_size} exceeds this model's context of {context}"
                )

    def subset(self, n_blocks: int) -> ReferenceCache:
        """The first ``n_blocks`` blocks (a cheaper estimate over a prefix of the corpus)."""
        parts = {name: getattr(self, name)[:n_blocks] for name in TENSOR_NAMES}
        fingerprint = dict(self.fingerprint, n_blocks=min(n_blocks, self.n_blocks))
        return ReferenceCache(**parts, fingerprint=fingerprint)

    # -- files ------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temporary file + rename) as safetensors with a JSON fingerprint.

        Temporary files left by an earlier writer of ``path`` that was killed are removed.
        """
        path = check_output(path, what="reference", kind="reference", create_parents=True)
        tensors = {name: getattr(self, name).contiguous() for name in TENSOR_NAMES}
        metadata = {"format": FORMAT, "fingerprint": json.dumps(self.fingerprint)}
        with atomic_output(path, what="reference") as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceCache:
        """Read a reference file, refusing one whose header or tensors are not what
        :func:`build_reference` writes (see :meth:`validate`)."""
        path = Path(path)
        if not path.is_file():
            if path.is_dir():
                raise UserError(f"reference {path} is a folder; give the .safetensors file")
            raise UserError(f"reference file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
                if metadata.get("format") != FORMAT:
                    raise UserError(f"{path} is not a forgetscale reference ({FORMAT})")
                fingerprint = _parse_fingerprint(path, metadata)
                missing = [name for name in TENSOR_NAMES if name not in set(fh.keys())]
                if missing:
                    raise UserError(f"reference {path} lacks the tensor(s) {', '.join(missing)}")
                tensors = {name: fh.get_tensor(name) for name in TENSOR_NAMES}
        except UserError:
            raise
        except Exception as exc:  # safetensors raises SafetensorError and others
            raise UserError(f"could not read reference {path}: {_first_line(exc)}") from exc
        cache = cls(**tensors, fingerprint=fingerprint)
        cache.validate(str(path))
        return cache

    def validate(self, name: str = "reference") -> None:
        """Refuse tensors a measurement cannot trust: wrong dtypes or shapes, token ids
        outside the vocabulary, non-finite or positive log-probabilities, tail masses
        outside [0, 1], a negative entropy, or a header that disagrees with the tensors.

        Integer tensors are stored as int32 and float tensors as float32 afterwards.
        """

        def bad(what: str) -> UserError:
            return UserError(f"reference {name} is damaged: {what}")

        for key in INT_TENSORS:
            tensor = getattr(self, key)
            if tensor.dtype not in (torch.int32, torch.int64):
                raise bad(f"{key} holds {_dtype(tensor)}, not integer token ids")
        for key in FLOAT_TENSORS:
            tensor = getattr(self, key)
            if tensor.dtype not in (torch.float32, torch.float64):
                raise bad(f"{key} holds {_dtype(tensor)}, not float32")
        ids = self.input_ids
        if ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < 2:
            raise bad(f"input_ids has shape {list(ids.shape)}, not [blocks >= 1, block size >= 2]")
        n_blocks, positions = ids.shape[0], ids.shape[1] - 1
        for key in ("target_ids", "target_logprob", "tail_mass", "entropy"):
            shape = list(getattr(self, key).shape)
            if shape != [n_blocks, positions]:
                raise bad(f"{key} has shape {shape}, expected {[n_blocks, positions]}")
        for key in ("topk_ids", "topk_logprobs"):
            shape = list(getattr(self, key).shape)
            if len(shape) != 3 or shape[:2] != [n_blocks, positions] or shape[2] < 1:
                raise bad(f"{key} has shape {shape}, expected {[n_blocks, positions, 'K >= 1']}")
        if self.topk_ids.shape != self.topk_logprobs.shape:
            raise bad(
                f"topk_ids {list(self.topk_ids.shape)} and topk_logprobs "
                f"{list(self.topk_logprobs.shape)} differ in shape"
            )
        fp = self.fingerprint
        vocab = fp.get("vocab_size")
        if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
            raise bad(f"its fingerprint has no valid vocab_size ({vocab!r})")
        for key, have in (("block_size", self.block_size), ("top_k", self.top_k)):
            if key in fp and fp[key] != have:
                raise bad(f"its fingerprint says {key} {fp[key]!r}, the tensors have {have}")
        if self.top_k > vocab:
            raise bad(f"top-{self.top_k} exceeds its vocabulary of {vocab} tokens")
        tokenizer_vocab = fp.get("tokenizer", {}).get("vocab_size")
        input_vocab = max(vocab, tokenizer_vocab if isinstance(tokenizer_vocab, int) else 0)
        for key, limit in (("input_ids", input_vocab), ("target_ids", vocab), ("topk_ids", vocab)):
            tensor = getattr(self, key)
            low, high = int(tensor.min()), int(tensor.max())
            if low < 0 or high >= limit:
                raise bad(f"{key} holds token id {low if low < 0 else high}, outside [0, {limit})")
        for key in FLOAT_TENSORS:
            if not bool(torch.isfinite(getattr(self, key)).all()):
                raise bad(f"{key} holds NaN or infinite values")
        for key in ("target_logprob", "topk_logprobs"):
            high = float(getattr(self, key).max())
            if high > LOGPROB_SLACK:
                raise bad(f"{key} holds a log-probability of {high:g} (> 0)")
        low, high = float(self.tail_mass.min()), float(self.tail_mass.max())
        if low < 0 or high > 1 + LOGPROB_SLACK:
            raise bad(f"tail_mass holds {low if low < 0 else high:g}, outside [0, 1]")
        if float(self.entropy.min()) < -LOGPROB_SLACK:
            raise bad(f"entropy holds {float(self.entropy.min()):g} (< 0)")
        for key in INT_TENSORS:  # in range, so int32 holds them exactly
            setattr(self, key, getattr(self, key).to(torch.int32))
        for key in FLOAT_TENSORS:
            setattr(self, key, getattr(self, key).to(torch.float32))

    @classmethod
    def find_or_build(
        cls,
        model: nn.Module,
        tokenizer: Any,
        *,
        model_name: str,
        corpus: str,
        text_field: str = "text",
        split: str = "train",
        block_size: int,
        max_tokens: int | None,
        top_k: int,
        batch_size: int,
        path: str | os.PathLike[str] | None = None,
        folder: str | os.PathLike[str] | None = None,
        progress: bool = True,
        log: Any = print,
    ) -> tuple[ReferenceCache, Path]:
        """The reference of ``model`` on ``corpus``: loaded when one matches, else built and saved.

        The corpus is packed into blocks of ``block_size``; with ``max_tokens`` at most that
        many tokens are kept, as evenly spaced blocks (the whole corpus, sampled). Without an
        explicit ``path`` the file is ``folder/ref-<fingerprint hash>.safetensors``, so runs
        of one base on one corpus share it. An explicit ``path`` built for another setting is
        used as given (L_f is then measured on its blocks) and the difference is logged.
        """
        from forgetscale.corpus import (
            corpus_hash,
            evaluation_block_index,
            load_documents,
            pack_documents,
        )

        docs = load_documents(corpus, text_field=text_field, split=split)
        corpus_sha = corpus_hash(docs)
        blocks = pack_documents(docs, tokenizer, block_size)
        n_all = blocks.shape[0]
        blocks = blocks[evaluation_block_index(n_all, block_size, max_tokens)]
        return cls.find_or_build_blocks(
            model,
            tokenizer,
            blocks,
            model_name=model_name,
            corpus=corpus,
            corpus_sha=corpus_sha,
            top_k=top_k,
            batch_size=batch_size,
            path=path,
            folder=folder,
            progress=progress,
            log=log,
            what=f"{corpus} ({blocks.shape[0]} of {n_all} blocks x {block_size} tokens",
        )

    @classmethod
    def find_or_build_blocks(
        cls,
        model: nn.Module,
        tokenizer: Any,
        blocks: torch.Tensor,
        *,
        model_name: str,
        corpus: str,
        corpus_sha: str,
        top_k: int,
        batch_size: int,
        path: str | os.PathLike[str] | None = None,
        folder: str | os.PathLike[str] | None = None,
        progress: bool = True,
        log: Any = print,
        what: str | None = None,
    ) -> tuple[ReferenceCache, Path]:
        """The reference of ``model`` on the token ``blocks`` ([n, T]) of ``corpus`` (hashed
        as ``corpus_sha``): loaded when a file matches, else built and saved (see
        :meth:`find_or_build`, which calls this on a corpus's evaluation blocks)."""
        import hashlib

        block_size = int(blocks.shape[1])
        what = what or f"{corpus} ({blocks.shape[0]} blocks x {block_size} tokens"
        want = {
            "model": model_name,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "corpus": corpus_sha,
            "block_size": block_size,
            "top_k": top_k,
            "n_blocks": int(blocks.shape[0]),
            "dtype": dtype_name(model),
        }
        explicit = path is not None
        if path is None:
            key = hashlib.sha256(
                json.dumps(want, sort_keys=True, separators=(",", ":")).encode()
            ).hexdigest()[:16]
            path = Path(folder if folder is not None else ".") / f"ref-{key}.safetensors"
        path = Path(path)
        if path.is_file():
            ref = cls.load(path)
            ref.check_compatible(tokenizer, model)
            fp = ref.fingerprint
            have = {
                "model": fp.get("model"),
                "tokenizer": fp.get("tokenizer", {}).get("sha256"),
                "corpus": fp.get("corpus", {}).get("sha256"),
                "block_size": fp.get("block_size"),
                "top_k": fp.get("top_k"),
                "n_blocks": fp.get("n_blocks"),
                "dtype": fp.get("dtype"),
            }
            if have == want:
                log(f"reference: reusing {path} ({ref.n_blocks} blocks x {ref.block_size})")
                return ref, path
            if explicit:
                differ = ", ".join(k for k in want if have[k] != want[k])
                log(
                    f"reference: {path} was built for another setting ({differ}); "
                    "using it as given: L_f is measured on its blocks"
                )
                return ref, path
            log(f"reference: {path} is stale; rebuilding")
        # before the base pass: the folder can be made and written, the file is ours
        check_output(path, what="the reference", kind="reference", create_parents=True)
        log(f"reference: building on {what}, top-{top_k}) -> {path}")
        ref = build_reference(
            model,
            tokenizer,
            blocks,
            top_k=top_k,
            batch_size=batch_size,
            model_name=model_name,
            corpus_source=corpus,
            corpus_sha256=corpus_sha,
            progress=progress,
            top_k_name="reference_top_k",  # how a train config or sweep names it
        )
        ref.save(path)
        return ref, path

    @staticmethod
    def file_size(n_blocks: int, block_size: int, top_k: int) -> int:
        """Bytes of the tensors of a reference of this shape (the file adds a small header)."""
        positions = n_blocks * (block_size - 1)
        return 4 * n_blocks * block_size + positions * (4 * 4 + 8 * top_k)

    def describe(self) -> str:
        fp = self.fingerprint
        return (
            f"reference of {fp.get('model')} on {fp.get('corpus', {}).get('source')}: "
            f"{self.n_blocks} blocks x {self.block_size} tokens = {self.positions:,} predicted "
            f"positions, top-{self.top_k}, {fp.get('dtype')}"
        )


def _parse_fingerprint(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    text = metadata.get("fingerprint")
    if text is None:
        raise UserError(f"reference {path} has no fingerprint in its header")
    try:
        fingerprint = json.loads(text)
    except ValueError as exc:
        raise UserError(f"reference {path} has a fingerprint that is not JSON ({exc})") from None
    if not isinstance(fingerprint, dict):
        raise UserError(f"reference {path} has a fingerprint that is not a JSON object")
    return fingerprint


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _model_config_sha(model: nn.Module) -> str:
    import hashlib

    config = getattr(model, "config", None)
    text = config.to_json_string(use_diff=False) if config is not None else repr(model)
    return hashlib.sha256(text.encode()).hexdigest()


@torch.inference_mode()
def build_reference(
    model: nn.Module,
    tokenizer: Any,
    blocks: torch.Tensor,
    *,
    top_k: int = 64,
    batch_size: int = 4,
    model_name: str | None = None,
    corpus_source: str | None = None,
    corpus_sha256: str | None = None,
    progress: bool = True,
    top_k_name: str = "top_k",
) -> ReferenceCache:
    """Run the base model once over ``blocks`` ([n_blocks, T] token ids) and cache its predictions.

    Args:
        model: the base model M (any transformers causal LM).
        tokenizer: its tokenizer (hashed into the fingerprint).
        blocks: packed token blocks from :func:`forgetscale.corpus.pack_documents`.
        top_k: number of most likely tokens kept per position for the soft metrics.
        batch_size: blocks per forward pass; sets peak memory (one batch of logits).
        model_name, corpus_source, corpus_sha256: recorded in the fingerprint.
    """
    if blocks.dim() != 2 or blocks.shape[0] == 0:
        raise UserError("no token blocks to build a reference on")
    if not isinstance(batch_size, int) or batch_size < 1:  # a batch of 0 or less would
        # leave the output tensors as they were allocated: uninitialised memory
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    if blocks.shape[1] < 2:
        raise UserError(f"block size must be at least 2 tokens, got {blocks.shape[1]}")
    n_blocks, block_size = blocks.shape
    vocab = output_vocab_size(model)
    if not 1 <= top_k <= vocab:
        raise UserError(
            f"{top_k_name} must be between 1 and the vocabulary size {vocab}, got {top_k}"
        )
    context = max_context(model)
    if context is not None and block_size > context:
        raise UserError(f"block size {block_size} exceeds the model's context of {context} tokens")
    positions = block_size - 1
    out = {
        "target_ids": torch.empty(n_blocks, positions, dtype=torch.int32),
        "target_logprob": torch.empty(n_blocks, positions, dtype=torch.float32),
        "topk_ids": torch.empty(n_blocks, positions, top_k, dtype=torch.int32),
        "topk_logprobs": torch.empty(n_blocks, positions, top_k, dtype=torch.float32),
        "tail_mass": torch.empty(n_blocks, positions, dtype=torch.float32),
        "entropy": torch.empty(n_blocks, positions, dtype=torch.float32),
    }
    device = next(model.parameters()).device
    bar = tqdm(total=n_blocks * positions, unit="tok", desc="reference", disable=not progress)
    with evaluation_mode(model), bar:
        for start in range(0, n_blocks, batch_size):
            batch = blocks[start : start + batch_size].to(device)
            logits = model(input_ids=batch).logits[:, :-1, :vocab].float()
            stats = base_statistics(logits, top_k)
            for name, value in stats.items():
                out[name][start : start + batch.shape[0]] = value.cpu()
            bar.update(batch.shape[0] * positions)
    # a position is broken when either of its statistics is (each position counted once)
    broken = int((~(torch.isfinite(out["target_logprob"]) & torch.isfinite(out["entropy"]))).sum())
    if broken:
        raise UserError(
            f"the base model's outputs are not finite on {broken} of {n_blocks * positions} "
            "positions: its weights may be broken, or bfloat16 may overflow (try --dtype float32)"
        )
    dtype = dtype_name(model)
    fingerprint = {
        "model": model_name or getattr(getattr(model, "config", None), "_name_or_path", None),
        "model_class": type(model).__name__,
        "model_config_sha256": _model_config_sha(model),
        "vocab_size": vocab,
        "tokenizer": {
            "sha256": tokenizer_fingerprint(tokenizer),
            "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
        },
        "corpus": {"source": corpus_source, "sha256": corpus_sha256},
        "block_size": int(block_size),
        "top_k": int(top_k),
        "n_blocks": int(n_blocks),
        "dtype": dtype,
        "versions": library_versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return ReferenceCache(input_ids=blocks.to(torch.int32).cpu(), **out, fingerprint=fingerprint)


def reference_folder(config: TrainConfig) -> Path:
    """Where references named by their fingerprint go: ``reference_dir``, else beside the store."""
    if config.reference_dir:
        return Path(config.reference_dir)
    return Path(config.store).parent / "references"


def reference_for_config(
    config: TrainConfig, model: Any, tokenizer: Any, model_name: str, log: Callable[[str], None]
) -> tuple[ReferenceCache, Path]:
    """The run's reference cache (see :meth:`ReferenceCache.find_or_build`): the file named
    by ``reference``, else one named by its fingerprint in ``reference_dir`` (default: a
    ``references`` folder beside the store). ``forgetscale train`` calls it as a run loads;
    a sweep (:mod:`forgetscale.sweep.references`) calls it once per reference before its runs."""
    return ReferenceCache.find_or_build(
        model,
        tokenizer,
        model_name=model_name,
        corpus=config.forgetting_data,
        text_field=config.text_field,
        split=config.forgetting_split,
        block_size=config.forgetting_block_size or config.block_size,
        max_tokens=config.forgetting_max_tokens,
        top_k=config.reference_top_k,
        batch_size=config.eval_batch_size,
        path=config.reference,
        folder=reference_folder(config),
        progress=config.progress,
        log=log,
    )
