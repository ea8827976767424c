"""One fine-tuning run that measures L_ft and L_f at scheduled steps (``forgetscale train``).

The run, in order:

1. load the base model M and its tokenizer; read the task data (text blocks or chat
   examples) and split off the held-out part for L_ft;
2. find or build the reference cache of M on the forgetting corpus (before any
   adapter exists, so the base pass is M itself; one model in memory);
3. put the method on M (LoRA / IA3 through PEFT, or unfreeze the top blocks or
   everything), count P, record the run in the results store;
4. step loop: at step 0 (M itself) and after each scheduled update, measure L_ft on
   held-out task data and L_f, soft L_f, KL and agreement against the cache; write
   the measurement, then a checkpoint.

Resume: the run id is the hash of the resolved config. Started again after a crash
or a SIGKILL, the run loads its latest complete checkpoint (trainable weights,
optimizer and scheduler state, RNG states, the step, which fixes the data
position) and continues; the measurements equal an uninterrupted run's. A
finished run is not run again. Checkpoints are safetensors + JSON only: nothing
is pickled.

Divergence: a NaN or infinite loss stops the run and marks it ``diverged`` at that
step; measurements taken before stay in the store.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forgetscale.config import TrainConfig, load_config, stable_json
from forgetscale.errors import DivergedError, UserError
from forgetscale.finetune_data import Examples, load_task_data
from forgetscale.metrics import finetune_loss
from forgetscale.models import resolve_device
from forgetscale.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)
from forgetscale.training.lock import RunLock
from forgetscale.training.methods import apply_method, resolve_targets
from forgetscale.training.optim import batch_indices, make_optimizer, make_scheduler

# ------------------------------------------------------------------------------------------
# results


@dataclass
class TrainResult:
    """What :func:`train` did."""

    run_id: str
    status: str  # finished | diverged | failed | running (never returned)
    store: str
    steps: int
    """Updates done when the run stopped."""
    params_trained: int | None
    measurements: list[dict[str, Any]] = field(default_factory=list)
    """The measurements this call took (a finished run called again takes none)."""
    diverged_step: int | None = None
    message: str | None = None
    reference: str | None = None
    resumed_from: int | None = None
    wall_s: float = 0.0
    """Wall time of this call."""
    eval_s: float = 0.0
    """Of which evaluation (L_ft + L_f) took this much."""
    checkpoint_s: float = 0.0
    """Of which writing checkpoints took this much."""
    step_s: float = 0.0
    """Of which the step loop took this much, evaluation and checkpoints excluded (forward,
    backward, optimizer, data selection, divergence checks, progress bar)."""

    def summary(self) -> str:
        if self.status == "finished" and not self.measurements:
            return f"run {self.run_id}: already finished in {self.store}; nothing to do"
        text = f"run {self.run_id}: {self.status} after {self.steps} steps"
        if self.diverged_step is not None:
            text += f" (diverged at step {self.diverged_step}: {self.message})"
        if self.measurements:
            first, last = self.measurements[0], self.measurements[-1]
            text += (
                f"; step {last['step']}: L_ft {last['finetune_loss']:.4f}, "
                f"L_f {last['forgetting_loss']:.4f} (step {first['step']}: "
                f"L_ft {first['finetune_loss']:.4f}, L_f {first['forgetting_loss']:.4f})"
            )
        if self.wall_s:
            text += f"; {self.wall_s:.1f}s, evaluation {100 * self.eval_s / self.wall_s:.0f}%"
        return text + f"; results in {self.store}"


# ------------------------------------------------------------------------------------------
# the reference cache for a run


def _reference_for_run(
    config: TrainConfig,
    model: nn.Module,
    tokenizer: Any,
    model_name: str,
    log: Callable[[str], None],
):
    """Load the run's reference cache if its fingerprint matches, else build and save it."""
    import hashlib

    from forgetscale.corpus import corpus_hash, load_documents, pack_documents
    from forgetscale.models import tokenizer_fingerprint
    from forgetscale.reference import ReferenceCache, build_reference

    block = config.forgetting_block_size or config.block_size
    docs = load_documents(config.forgetting_data, text_field=config.text_field)
    corpus_sha = corpus_hash(docs)
    blocks = pack_documents(docs, tokenizer, block)
    n_all = blocks.shape[0]
    if config.forgetting_max_tokens is not None:
        n = max(1, min(n_all, config.forgetting_max_tokens // block))
        if n < n_all:  # evenly spaced blocks: the whole corpus, sampled
            index = torch.linspace(0, n_all - 1, n).round().long().unique()
            blocks = blocks[index]
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    want = {
        "model": model_name,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "corpus": corpus_sha,
        "block_size": block,
        "top_k": config.reference_top_k,
        "n_blocks": int(blocks.shape[0]),
        "dtype": dtype,
    }
    if config.reference:
        path = Path(config.reference)
    else:
        key = hashlib.sha256(stable_json(want).encode()).hexdigest()[:16]
        folder = (
            Path(config.reference_dir)
            if config.reference_dir
            else Path(config.store).parent / "references"
        )
        path = folder / f"ref-{key}.safetensors"
    if path.is_file():
        ref = ReferenceCache.load(path)
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
        if config.reference:
            differ = ", ".join(k for k in want if have[k] != want[k])
            log(
                f"reference: {path} was built for another setting ({differ}); "
                "using it as given: L_f is measured on its blocks"
            )
            return ref, path
        log(f"reference: {path} is stale; rebuilding")
    log(
        f"reference: building on {config.forgetting_data} ({blocks.shape[0]} of {n_all} blocks "
        f"x {block} tokens, top-{config.reference_top_k}) -> {path}"
    )
    ref = build_reference(
        model,
        tokenizer,
        blocks,
        top_k=config.reference_top_k,
        batch_size=config.eval_batch_size,
        model_name=model_name,
        corpus_source=config.forgetting_data,
        corpus_sha256=corpus_sha,
        progress=config.progress,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ref.save(path)
    return ref, path


# ------------------------------------------------------------------------------------------
# the run


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def checkpoint_dir(config: TrainConfig) -> Path:
    if config.checkpoint_dir:
        return Path(config.checkpoint_dir)
    return Path(config.store + ".checkpoints") / config.run_id


def train(
    config: TrainConfig | str | os.PathLike[str] | dict[str, Any],
    *,
    overrides: dict[str, Any] | list[str] | None = None,
    restart: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run (or resume) one fine-tuning run and record its measurements in the store.

    Args:
        config: a :class:`TrainConfig`, a YAML file path, or a dict of config keys.
        overrides: ``--key=value`` strings or a dict applied on top.
        restart: forget this config's earlier measurements and checkpoint first.
        log: where the few status lines go (default: stderr; ``config.progress`` only
            switches the progress bars).

    Returns:
        a :class:`TrainResult`; the measurements are in ``config.store``.

    Example:
        >>> from forgetscale.training import train
        >>> result = train("configs/smollm2-lora.yaml", overrides={"rank": 16})
        >>> result.status, result.measurements[-1]["forgetting_loss"]
    """
    from forgetscale.config import build_config

    if isinstance(config, dict):
        config = build_config(config, overrides=_as_dict(overrides))
    elif not isinstance(config, TrainConfig):
        config = load_config(config, overrides or [])
    elif overrides:
        config = build_config(config.to_dict(), overrides=_as_dict(overrides))
    if log is None:
        log = _stderr
    return _Run(config, log).execute(restart=restart)


def _as_dict(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    from forgetscale.config import parse_overrides

    if overrides is None:
        return {}
    return dict(overrides) if isinstance(overrides, dict) else parse_overrides(overrides)


class _Run:
    def __init__(self, config: TrainConfig, log: Callable[[str], None]):
        self.config = config
        self.log = log
        self.run_id = config.run_id

    # -- setup ------------------------------------------------------------------------------
    def execute(self, *, restart: bool) -> TrainResult:
        from forgetscale.store import open_store

        cfg = self.config
        t_begin = time.perf_counter()
        self.ck_dir = checkpoint_dir(cfg)
        with open_store(cfg.store) as store:
            lock = RunLock(Path(str(self.ck_dir) + ".lock"), self.run_id)
            try:
                result = self._execute_locked(store, restart)
            finally:
                lock.release()
            if result.status != "running" and not cfg.keep_checkpoint:
                _remove_checkpoints(self.ck_dir)
        result.wall_s = time.perf_counter() - t_begin
        return result

    def _execute_locked(self, store: Any, restart: bool) -> TrainResult:
        cfg = self.config
        existing = store.get_run(self.run_id)
        if restart and existing is not None:
            store.delete_run(self.run_id)
            shutil.rmtree(self.ck_dir, ignore_errors=True)
            existing = None
        if existing is not None and existing.status in ("finished", "diverged"):
            self.log(
                f"run {self.run_id} is already {existing.status} in {cfg.store} "
                "(same resolved config); nothing to do (use --restart to run it again)"
            )
            return TrainResult(
                self.run_id,
                existing.status,
                cfg.store,
                existing.last_step or 0,
                existing.params_trained,
                diverged_step=existing.diverged_step,
                message=existing.message,
            )
        self._setup()
        store.start_run(
            self.run_id,
            cfg.to_dict(),
            method=cfg.method,
            rank=cfg.rank if cfg.method == "lora" else None,
            params_trained=self.counts.trainable_non_embedding,
            params_embedding=self.counts.trainable_embedding + self.counts.trainable_head,
            params_total=self.counts.total,
            name=cfg.name,
        )
        self.store = store
        try:
            return self._loop()
        except KeyboardInterrupt:
            store.set_status(self.run_id, "failed", message="interrupted; run again to resume")
            raise
        except Exception as exc:
            store.set_status(self.run_id, "failed", message=f"{type(exc).__name__}: {exc}")
            raise

    def _setup(self) -> None:
        from forgetscale.models import count_parameters, load_model

        cfg = self.config
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        loaded = load_model(
            cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, device=self.device
        )
        model, tokenizer = loaded.model, loaded.tokenizer
        model_name = cfg.model
        if cfg.adapter:
            from forgetscale.models import apply_adapter

            model = apply_adapter(model, cfg.adapter).merge_and_unload()
            model_name = f"{cfg.model}+{cfg.adapter}"
        self.tokenizer = tokenizer
        self.data = load_task_data(
            cfg.task_data,
            tokenizer,
            block_size=cfg.block_size,
            fmt=cfg.task_format,
            text_field=cfg.text_field,
            response_only=cfg.response_only_loss,
            heldout_source=cfg.heldout_data,
            heldout_fraction=cfg.heldout_fraction,
        )
        self.heldout = self.data.heldout.limit_tokens(cfg.heldout_max_tokens)
        if cfg.method in ("lora", "ia3"):
            resolve_targets(model, cfg)  # bad module names fail before any compute
        self.reference, self.reference_path = _reference_for_run(
            cfg, model, tokenizer, model_name, self.log
        )
        seed_everything(cfg.seed)  # adapter init does not depend on what ran before
        if cfg.gradient_checkpointing:
            model.config.use_cache = False
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            model = apply_method(model, cfg)
        model.to(self.device)
        self.model = model
        self.counts = count_parameters(model)
        if self.counts.trainable == 0:
            raise UserError("the method left no parameter to train")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        what = cfg.method
        if cfg.method == "lora":
            what += f" r={cfg.rank} alpha={cfg.alpha:g}{' rslora' if cfg.rslora else ''}"
        if cfg.method in ("lora", "ia3"):
            what += f" on {cfg.target_modules}"
        self.log(
            f"run {self.run_id}: {what}; {self.counts.describe()}; "
            f"{len(self.data.train)} training and {len(self.heldout)} held-out "
            f"{'blocks' if self.data.format == 'text' else 'examples'} of {cfg.block_size} tokens; "
            f"L_f on {self.reference.positions:,} positions; "
            f"measuring at steps {cfg.evaluation_steps()}"
        )

    # -- measurement --------------------------------------------------------------------------
    def _measure(self, step: int, progress: dict[str, Any]) -> dict[str, Any]:
        from forgetscale.metrics import evaluate_forgetting

        cfg = self.config
        l_ft = finetune_loss(self.model, self.heldout, batch_size=cfg.eval_batch_size)
        if not math.isfinite(l_ft):
            raise DivergedError(f"held-out loss is {l_ft}")
        try:
            forgetting = evaluate_forgetting(
                self.model, self.reference, batch_size=cfg.eval_batch_size, report_blocks=0
            )
        except FloatingPointError as exc:
            raise DivergedError(str(exc)) from None
        n = progress["train_loss_count"]
        return {
            "step": step,
            "finetune_loss": l_ft,
            "forgetting_loss": forgetting.forgetting_loss,
            "forgetting_loss_soft": forgetting.forgetting_loss_soft,
            "kl": forgetting.kl,
            "base_entropy": forgetting.base_entropy,
            "agreement": forgetting.agreement,
            "train_loss": progress["train_loss_sum"] / n if n else None,
            "tokens_seen": progress["tokens_seen"],
            "wall_s": progress["wall_s"],
        }

    # -- batches ---------------------------------------------------------------------------------
    def _stage(self, train: Examples) -> None:
        """Put the training examples on the device once when they fit (< 1 GiB)."""
        self.row_tokens = None if train.attention_mask is None else train.attention_mask.sum(1)
        tensors = [train.input_ids, train.labels] + (
            [] if train.attention_mask is None else [train.attention_mask]
        )
        size = sum(t.numel() * t.element_size() for t in tensors)
        self.staged = None
        if self.device.type != "cpu" and size < 2**30:
            self.staged = Examples(
                train.input_ids.to(self.device),
                train.labels.to(self.device),
                None if train.attention_mask is None else train.attention_mask.to(self.device),
            )
        self.train_examples = train

    def _batch(self, index: torch.Tensor):
        if self.staged is not None:
            part = self.staged.select(index.to(self.device))
            return part.input_ids, part.labels, part.attention_mask
        part = self.train_examples.select(index)
        mask = part.attention_mask
        return (
            part.input_ids.to(self.device),
            part.labels.to(self.device),
            None if mask is None else mask.to(self.device),
        )

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg = self.config
        store = self.store
        eval_steps = set(cfg.evaluation_steps())
        ck_steps = (
            set(range(cfg.checkpoint_every, cfg.max_steps, cfg.checkpoint_every))
            if cfg.checkpoint_every
            else {s for s in eval_steps if 0 < s < cfg.max_steps}
        )
        measured = store.measured_steps(self.run_id)
        progress = {"train_loss_sum": 0.0, "train_loss_count": 0, "tokens_seen": 0, "wall_s": 0.0}
        start = 0
        resumed_from = None
        ck = latest_checkpoint(self.ck_dir)
        if ck is not None:
            state = load_checkpoint(ck, self.model, self.optimizer, self.scheduler)
            start = int(state["step"])
            progress = state["progress"]
            resumed_from = start
            self.log(f"run {self.run_id}: resuming from the checkpoint at step {start}")
        elif measured:
            self.log(
                f"run {self.run_id}: earlier measurements but no checkpoint; "
                "starting from step 0 (measured steps are not written twice)"
            )
        result = TrainResult(
            self.run_id,
            "running",
            cfg.store,
            start,
            self.counts.trainable_non_embedding,
            reference=str(self.reference_path),
            resumed_from=resumed_from,
        )
        micro = cfg.batch_size // cfg.grad_accumulation
        train = self.data.train
        self._stage(train)
        model, optimizer, scheduler = self.model, self.optimizer, self.scheduler
        wall_base = progress["wall_s"] - time.perf_counter()
        latest_lf = None

        def measure(step: int) -> None:
            nonlocal latest_lf
            t0 = time.perf_counter()
            progress["wall_s"] = wall_base + t0
            row = self._measure(step, progress)
            store.add_measurement(self.run_id, step, {k: v for k, v in row.items() if k != "step"})
            result.measurements.append(row)
            latest_lf = row["forgetting_loss"]
            progress["train_loss_sum"], progress["train_loss_count"] = 0.0, 0
            result.eval_s += time.perf_counter() - t0

        bar = tqdm(
            total=cfg.max_steps,
            initial=start,
            desc=f"train {self.run_id[:8]}",
            unit="step",
            disable=not cfg.progress,
            dynamic_ncols=True,
        )
        at = start
        try:
            if start == 0 and 0 in eval_steps and 0 not in measured:
                measure(0)
                bar.set_postfix(
                    L_ft=f"{result.measurements[-1]['finetune_loss']:.3f}", L_f=f"{latest_lf:.3f}"
                )
            model.train()
            t_loop, eval_before, ck_before = time.perf_counter(), result.eval_s, result.checkpoint_s
            for step in range(start, cfg.max_steps):
                at = step + 1  # the update being made (for a divergence report)
                index = batch_indices(step, len(train), cfg.batch_size, cfg.seed)
                losses = []
                for m in range(cfg.grad_accumulation):
                    sub = index[m * micro : (m + 1) * micro]
                    ids, labels, mask = self._batch(sub)
                    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                    (loss / cfg.grad_accumulation).backward()
                    losses.append(loss.detach().float())
                    progress["tokens_seen"] += (
                        len(sub) * cfg.block_size
                        if self.row_tokens is None
                        else int(self.row_tokens[sub].sum())
                    )
                if cfg.max_grad_norm is not None:
                    norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    losses.append(norm.float())
                # one host sync per update (as a plain loop's loss.item()): losses + grad norm
                values = torch.stack(losses).tolist()
                if not all(math.isfinite(v) for v in values):
                    what = (
                        "training loss"
                        if not all(math.isfinite(v) for v in values[: cfg.grad_accumulation])
                        else "gradient norm"
                    )
                    bad = next(v for v in values if not math.isfinite(v))
                    raise DivergedError(f"{what} is {bad}")
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss_sum = sum(values[: cfg.grad_accumulation])
                train_loss = loss_sum / cfg.grad_accumulation
                progress["train_loss_sum"] += train_loss
                progress["train_loss_count"] += 1
                done = step + 1
                result.steps = done
                if done in eval_steps:
                    if done in measured:  # measured before a crash: not written twice
                        progress["train_loss_sum"], progress["train_loss_count"] = 0.0, 0
                    else:
                        at = done
                        measure(done)
                if done in ck_steps:
                    t0 = time.perf_counter()
                    progress["wall_s"] = wall_base + t0
                    save_checkpoint(self.ck_dir, done, model, optimizer, scheduler, progress)
                    result.checkpoint_s += time.perf_counter() - t0
                bar.update(1)
                postfix = {"loss": f"{train_loss:.3f}"}
                if latest_lf is not None:
                    postfix["L_f"] = f"{latest_lf:.3f}"
                bar.set_postfix(postfix, refresh=False)
            result.step_s = (
                time.perf_counter()
                - t_loop
                - (result.eval_s - eval_before)
                - (result.checkpoint_s - ck_before)
            )
        except DivergedError as exc:
            step_at = at
            bar.close()
            store.set_status(self.run_id, "diverged", message=str(exc), diverged_step=step_at)
            self.log(
                f"run {self.run_id}: DIVERGED at step {step_at} ({exc}); "
                f"{len(store.measured_steps(self.run_id))} earlier measurements kept"
            )
            result.status, result.diverged_step, result.message = "diverged", step_at, str(exc)
            return result
        finally:
            bar.close()
        store.set_status(self.run_id, "finished", last_step=cfg.max_steps)
        result.status = "finished"
        if cfg.output_dir:
            out = Path(cfg.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
            self.log(
                f"run {self.run_id}: saved the trained {'adapter' if cfg.method in ('lora', 'ia3') else 'model'} to {out}"
            )
        return result


def _remove_checkpoints(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    try:  # the default parent <store>.checkpoints/ goes too once it is empty
        directory.parent.rmdir()
    except OSError:
        pass
