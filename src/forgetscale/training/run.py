"""One fine-tuning run that measures L_ft and L_f at scheduled steps (``forgetscale train``).

The run, in order (read this file top to bottom; the pieces live beside it in
:mod:`forgetscale.training` and the metrics in :mod:`forgetscale.metrics`):

1. check the outputs, open the results store and take the run's lock; a finished run
   is not run again;
2. load the base model M and its tokenizer; read the task data (text blocks or chat
   examples) and split off the held-out part for L_ft;
3. find or build the reference cache of M on the forgetting corpus (before any
   adapter exists, so the base pass is M itself; one model in memory);
4. put the method on M (LoRA / IA3 through PEFT, or unfreeze the top blocks or
   everything), count P, record the run in the results store;
5. step loop: each update trains on the blocks its plan names (task blocks, and with
   ``replay_fraction`` replay blocks; :mod:`forgetscale.training.mixing`), its loss plus
   ``kl_weight`` x KL(base || model) when the KL penalty is on; at step 0 (M itself) and
   after each scheduled update, measure L_ft on held-out task data and L_f, soft L_f, KL
   and agreement against the cache; write the measurement, then a checkpoint.

Resume: the run id is the hash of the resolved config. Started again after a crash
or a SIGKILL, the run loads its latest complete checkpoint (trainable weights,
optimizer and scheduler state, RNG states, the step, which fixes the data
position) and continues; the measurements equal an uninterrupted run's.

Divergence: a NaN or infinite loss stops the run and marks it ``diverged`` at that
step; measurements taken before stay in the store.

What the run deletes: only what it wrote (its checkpoints, its lock file); a user's files
in ``checkpoint_dir`` or ``output_dir`` are never removed or overwritten.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from forgetscale.config import TrainConfig, build_config, load_config, parse_overrides
from forgetscale.errors import DivergedError, UserError
from forgetscale.finetune_data import RecordFields, load_task_data
from forgetscale.kernels import compile_blocks, eager_evaluation, use_float32_gemm
from forgetscale.metrics import evaluate_forgetting, finetune_loss
from forgetscale.models import count_parameters, load_model, resolve_device
from forgetscale.reference import reference_folder, reference_for_config
from forgetscale.store import ResultsStore, open_store
from forgetscale.training.checkpoint import (
    Progress,
    latest_checkpoint,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
    seed_everything,
)
from forgetscale.training.lock import RunLock
from forgetscale.training.methods import apply_method, resolve_target_modules
from forgetscale.training.mitigations import check_task_leak, kl_penalty_for_config, load_replay
from forgetscale.training.mixing import MixedBatches, ReplayMixer
from forgetscale.training.optim import make_optimizer, make_scheduler
from forgetscale.training.outputs import RUN_MARKER, check_outputs, checkpoint_dir, lock_path
from forgetscale.training.result import TrainResult

# ------------------------------------------------------------------------------------------
# the entry point


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
        restart: discard this config's earlier measurements and checkpoint (once the new
            run has loaded everything it needs, so a run that cannot start loses nothing).
        log: where the few status lines go (default: stderr; ``config.progress`` only
            switches the progress bars).

    Returns:
        a :class:`TrainResult`; the measurements are in ``config.store``.

    Example:
        >>> from forgetscale.training import train
        >>> result = train("configs/smollm2-lora.yaml", overrides={"rank": 16})
        >>> result.status, result.measurements[-1]["forgetting_loss"]
    """
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    if isinstance(config, dict):
        config = build_config(config, overrides=overrides)
    elif not isinstance(config, TrainConfig):
        config = load_config(config, overrides or {})
    elif overrides:
        config = build_config(config.to_dict(), overrides=overrides)
    log = log or _stderr
    t_begin = time.perf_counter()
    config.check_splits()
    check_outputs(config)
    run_id, ck_dir = config.run_id, checkpoint_dir(config)
    new_store = _new_store_paths(config.store)
    try:
        store_cm = open_store(config.store)
    except BaseException:
        _remove_if_empty(config.store, new_store)
        raise
    with _removed_if_unused(store_cm, config.store, new_store) as store:
        lock = RunLock(lock_path(config), run_id)
        try:
            existing = store.get_run(run_id)
            if not restart and existing is not None and existing.status in ("finished", "diverged"):
                log(
                    f"run {run_id} is already {existing.status} in {config.store} "
                    "(same resolved config); nothing to do (use --restart to run it again)"
                )
                return TrainResult(
                    run_id,
                    existing.status,
                    config.store,
                    existing.last_step or 0,
                    existing.params_trained,
                    diverged_step=existing.diverged_step,
                    message=existing.message,
                )
            run = _Run(config, log)
            if restart:
                store.delete_run(run_id)
                remove_checkpoints(ck_dir, run_id)
            result = run.execute(store, ck_dir)
        finally:
            lock.release()
    if result.status != "running" and not config.keep_checkpoint:
        remove_checkpoints(ck_dir, run_id)
        try:  # the default parent <store>.checkpoints/ goes too once it is empty
            if not config.checkpoint_dir:
                ck_dir.parent.rmdir()
        except OSError:
            pass
    result.wall_s = time.perf_counter() - t_begin
    return result


def _new_store_paths(store: str | os.PathLike[str]) -> list[Path] | None:
    """The store file and the folders above it that do not exist yet (None: the store does)."""
    path = Path(store)
    if path.exists():
        return None
    missing = [path]
    parent = path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    return missing


def _remove_if_empty(store: str | os.PathLike[str], created: list[Path] | None) -> None:
    """Remove a store this call created if no run ever entered it (a run refused before
    its start leaves nothing behind), and the folders made for it."""
    if created is None or not Path(store).is_file():
        return
    try:
        with open_store(store, create=False) as st:
            if st.list_runs():
                return
    except UserError:
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    for folder in created[1:]:
        try:
            folder.rmdir()
        except OSError:
            break


@contextmanager
def _removed_if_unused(store_cm, store, created):
    try:
        with store_cm as st:
            yield st
    except BaseException:
        _remove_if_empty(store, created)
        raise


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# the run


class _Run:
    """A run with everything loaded: model + method, data, reference, optimizer."""

    def __init__(self, config: TrainConfig, log: Callable[[str], None]):
        cfg = self.config = config
        self.log = log
        self.run_id = config.run_id
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        loaded = load_model(
            cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, device=self.device
        )
        model, self.tokenizer = loaded.model, loaded.tokenizer
        use_float32_gemm(model)  # bfloat16 on a CPU without a bfloat16 GEMM (forgetscale.kernels)
        model_name = cfg.model
        if cfg.adapter:
            from forgetscale.models import apply_adapter

            model = apply_adapter(model, cfg.adapter).merge_and_unload()
            model_name = f"{cfg.model}+{cfg.adapter}"
        data = load_task_data(
            cfg.task_data,
            self.tokenizer,
            block_size=cfg.block_size,
            fmt=cfg.task_format,
            fields=RecordFields(cfg.text_field, cfg.prompt_field, cfg.response_field),
            split=cfg.task_split,
            response_only=cfg.response_only_loss,
            heldout_source=cfg.heldout_data,
            heldout_fraction=cfg.heldout_fraction,
        )
        self.data_format = data.format
        self.heldout = data.heldout.limit_tokens(cfg.heldout_max_tokens)
        t_mitigation = time.perf_counter()
        replay = load_replay(cfg, self.tokenizer)  # refuses a leak into the evaluation
        check_task_leak(cfg, self.tokenizer, data.format)
        n_replay = 0 if replay is None else len(replay)
        self.mixer = ReplayMixer(
            len(data.train), n_replay, cfg.batch_size, cfg.replay_fraction, cfg.seed
        )
        self.mitigation_setup_s = time.perf_counter() - t_mitigation
        if cfg.method in ("lora", "ia3"):
            resolve_target_modules(model, cfg)  # bad module names fail before any compute
        self.reference, self.reference_path = reference_for_config(
            cfg, model, self.tokenizer, model_name, log
        )
        t_mitigation = time.perf_counter()
        self.kl_penalty = kl_penalty_for_config(
            cfg,
            model,
            self.tokenizer,
            model_name,
            data.train,
            replay,
            self.mixer,
            reference_folder(cfg),
            self.device,
            log,
        )
        self.mitigation_setup_s += time.perf_counter() - t_mitigation
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
        self.model = model.to(self.device)
        use_float32_gemm(self.model)  # the method's new layers too
        self.compiled_blocks = 0
        if cfg.torch_compile:
            self.compiled_blocks, why = compile_blocks(
                self.model, self.device, sequence_length=cfg.block_size
            )
            if why is not None:
                log(f"run {self.run_id}: torch_compile: {why}; training eagerly")
        self.counts = count_parameters(self.model)
        if self.counts.trainable == 0:
            raise UserError("the method left no parameter to train")
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.batches = MixedBatches(data.train, replay, self.device)
        self.downstream = cfg.downstream_config()
        self.downstream_base_key = None
        if self.downstream is not None and cfg.method not in ("lora", "ia3"):
            from forgetscale.downstream.runner import base_fingerprint

            # the base side of full / top-layer fine-tuning is the weights before step 1
            self.downstream_base_key = base_fingerprint(self.model, self.tokenizer)
        what = cfg.method
        if cfg.method == "lora":
            what += f" r={cfg.rank} alpha={cfg.alpha:g}{' rslora' if cfg.rslora else ''}"
        if cfg.method in ("lora", "ia3"):
            what += f" on {cfg.target_modules}"
        if self.compiled_blocks:
            what += f", {self.compiled_blocks} blocks compiled (torch.compile)"
        log(
            f"run {self.run_id}: {what}; {self.counts.describe()}; "
            f"{len(data.train)} training and {len(self.heldout)} held-out "
            f"{'blocks' if data.format == 'text' else 'examples'} of {cfg.block_size} tokens; "
            f"L_f on {self.reference.positions:,} positions; "
            + (
                f"replay {cfg.replay_fraction:g} of each update's blocks from {cfg.replay_data} "
                f"({n_replay} blocks); "
                if replay is not None
                else ""
            )
            + (
                f"KL penalty {cfg.kl_weight:g} on the {cfg.kl_data} blocks; "
                if self.kl_penalty is not None
                else ""
            )
            + f"measuring at steps {cfg.evaluation_steps()}"
        )

    def execute(self, store: ResultsStore, ck_dir: Path) -> TrainResult:
        """Record the run in ``store`` and train it; a crash marks it failed there."""
        cfg = self.config
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
        try:
            return self._loop(store, ck_dir)
        except KeyboardInterrupt:
            store.set_status(self.run_id, "failed", message="interrupted; run again to resume")
            raise
        except Exception as exc:
            store.set_status(self.run_id, "failed", message=f"{type(exc).__name__}: {exc}")
            raise

    def _measure(self, step: int, progress: Progress, result: TrainResult) -> dict[str, Any]:
        """L_ft and the forgetting metrics now: one row of the measurement schema."""
        cfg = self.config
        t0 = time.perf_counter()
        l_ft = finetune_loss(self.model, self.heldout, batch_size=cfg.eval_batch_size)
        if not math.isfinite(l_ft):
            raise DivergedError(f"held-out loss is {l_ft}")
        t1 = time.perf_counter()
        try:
            forgetting = evaluate_forgetting(
                self.model, self.reference, batch_size=cfg.eval_batch_size, report_blocks=0
            )
        except FloatingPointError as exc:
            raise DivergedError(str(exc)) from None
        result.eval_finetune_s += t1 - t0
        result.eval_forgetting_s += time.perf_counter() - t1
        return {
            "step": step,
            "finetune_loss": l_ft,
            **forgetting.metrics(),
            "train_loss": progress.mean_train_loss(),
            "tokens_seen": progress.tokens_seen,
            "task_tokens_seen": progress.tokens_seen - progress.replay_tokens_seen,
            "replay_tokens_seen": progress.replay_tokens_seen,
            "train_kl": progress.mean_train_kl() if cfg.kl_weight > 0 else None,
            "wall_s": progress.wall_s,
        }

    def _run_downstream(self, store: ResultsStore, step: int) -> None:
        """The downstream suites on the model as it is after ``step`` updates, into the store."""
        from dataclasses import asdict

        from forgetscale.downstream.runner import run_suites

        ds = self.downstream
        rows = run_suites(
            self.model,
            self.tokenizer,
            ds.suites,
            base_cache_dir=Path(self.reference_path).parent / "downstream",
            device=self.device,
            batch_size=ds.batch_size,
            options=ds.options(),
            base_key=self.downstream_base_key,
        )
        store.add_downstream(self.run_id, step, [asdict(row) for row in rows])
        self.log(
            f"run {self.run_id}: downstream at step {step}: "
            + ", ".join(f"{r.suite} {r.metric} {r.value:.3f} (n={r.n})" for r in rows)
        )

    def _loop(self, store: ResultsStore, ck_dir: Path) -> TrainResult:
        from tqdm.auto import tqdm

        cfg, run_id = self.config, self.run_id
        eval_steps = set(cfg.evaluation_steps())
        ck_steps = (
            set(range(cfg.checkpoint_every, cfg.max_steps, cfg.checkpoint_every))
            if cfg.checkpoint_every
            else {s for s in eval_steps if 0 < s < cfg.max_steps}
        )
        measured = store.measured_steps(run_id)
        ds_steps = (
            set(self.downstream.resolve_steps(cfg.max_steps)) - store.downstream_steps(run_id)
            if self.downstream is not None and self.downstream.enabled
            else set()
        )
        progress, start, resumed_from = Progress(), 0, None
        ck = latest_checkpoint(ck_dir, run_id)
        if ck is not None:
            state = load_checkpoint(ck, self.model, self.optimizer, self.scheduler)
            start, progress, resumed_from = state.step, state.progress, state.step
            self.log(f"run {run_id}: resuming from the checkpoint at step {start}")
        elif measured:
            self.log(
                f"run {run_id}: earlier measurements but no checkpoint; "
                "starting from step 0 (measured steps are not written twice)"
            )
        result = TrainResult(
            run_id,
            "running",
            cfg.store,
            start,
            self.counts.trainable_non_embedding,
            reference=str(self.reference_path),
            resumed_from=resumed_from,
            mitigation_setup_s=self.mitigation_setup_s,
            mitigations=cfg.mitigations,
        )
        micro = cfg.batch_size // cfg.grad_accumulation
        model, optimizer, scheduler = self.model, self.optimizer, self.scheduler
        wall_base = progress.wall_s - time.perf_counter()
        latest_lf = None

        def measure(step: int) -> None:
            nonlocal latest_lf
            t0 = time.perf_counter()
            progress.wall_s = wall_base + t0
            with eager_evaluation(model):  # measured as the reference was (compiled runs too)
                row = self._measure(step, progress, result)
            store.add_measurement(run_id, step, {k: v for k, v in row.items() if k != "step"})
            result.measurements.append(row)
            latest_lf = row["forgetting_loss"]
            progress.reset_train_loss()
            result.eval_s += time.perf_counter() - t0

        def downstream(step: int) -> None:
            if step in ds_steps:
                t0 = time.perf_counter()
                with eager_evaluation(model):
                    self._run_downstream(store, step)
                result.downstream_s += time.perf_counter() - t0

        bar = tqdm(
            total=cfg.max_steps,
            initial=start,
            desc=f"train {run_id[:8]}",
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
            if start == 0:
                downstream(0)
            model.train()
            t_loop = time.perf_counter()
            others_before = result.eval_s + result.checkpoint_s + result.downstream_s
            for step in range(start, cfg.max_steps):
                at = step + 1  # the update being made (for a divergence report)
                plan = self.mixer.plan(step)  # this update's task and replay blocks
                penalty = self.kl_penalty
                kl_positions = penalty.positions(plan) if penalty is not None else 0
                losses, kl_sums = [], []
                for m in range(cfg.grad_accumulation):
                    sub = plan.micro(m, micro)
                    ids, labels, mask = self.batches.get(sub)
                    output = model(
                        input_ids=ids, attention_mask=mask, labels=labels, use_cache=False
                    )
                    loss = output.loss / cfg.grad_accumulation
                    if penalty is not None:  # + lambda * KL(base || model), token mean per update
                        t_kl = time.perf_counter()
                        kl_sum = penalty.kl_sum(output.logits, sub)
                        loss = loss + penalty.weight * kl_sum / max(kl_positions, 1)
                        kl_sums.append(kl_sum.detach())
                        result.kl_term_s += time.perf_counter() - t_kl
                    loss.backward()
                    losses.append(output.loss.detach().float())
                    task_tokens, replay_tokens = self.batches.tokens(sub, cfg.block_size)
                    progress.tokens_seen += task_tokens + replay_tokens
                    progress.replay_tokens_seen += replay_tokens
                    result.task_tokens += task_tokens
                    result.replay_tokens += replay_tokens
                if kl_sums:
                    losses.append(torch.stack(kl_sums).sum() / max(kl_positions, 1))
                if cfg.max_grad_norm is not None:
                    norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    losses.append(norm.float())
                # one host sync per update (as a plain loop's loss.item()): losses (+ KL) + norm
                values = torch.stack(losses).tolist()
                if not all(math.isfinite(v) for v in values):
                    what = (
                        "training loss"
                        if not all(math.isfinite(v) for v in values[: cfg.grad_accumulation])
                        else "KL penalty"
                        if kl_sums and not math.isfinite(values[cfg.grad_accumulation])
                        else "gradient norm"
                    )
                    bad = next(v for v in values if not math.isfinite(v))
                    raise DivergedError(f"{what} is {bad}")
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                train_loss = sum(values[: cfg.grad_accumulation]) / cfg.grad_accumulation
                progress.train_loss_sum += train_loss
                progress.train_loss_count += 1
                if kl_sums:
                    progress.train_kl_sum += values[cfg.grad_accumulation]
                    result.kl_positions += kl_positions
                result.updates += 1
                done = step + 1
                result.steps = done
                if done in eval_steps:
                    if done in measured:  # measured before a crash: not written twice
                        progress.reset_train_loss()
                    else:
                        at = done
                        measure(done)
                downstream(done)
                if done in ck_steps:
                    t0 = time.perf_counter()
                    progress.wall_s = wall_base + t0
                    save_checkpoint(ck_dir, run_id, done, model, optimizer, scheduler, progress)
                    result.checkpoint_s += time.perf_counter() - t0
                bar.update(1)
                postfix = {"loss": f"{train_loss:.3f}"}
                if latest_lf is not None:
                    postfix["L_f"] = f"{latest_lf:.3f}"
                bar.set_postfix(postfix, refresh=False)
            others = result.eval_s + result.checkpoint_s + result.downstream_s - others_before
            result.step_s = time.perf_counter() - t_loop - others
        except DivergedError as exc:
            bar.close()
            store.set_status(run_id, "diverged", message=str(exc), diverged_step=at)
            self.log(
                f"run {run_id}: DIVERGED at step {at} ({exc}); "
                f"{len(store.measured_steps(run_id))} earlier measurements kept"
            )
            result.status, result.diverged_step, result.message = "diverged", at, str(exc)
            return result
        finally:
            bar.close()
        store.set_status(run_id, "finished", last_step=cfg.max_steps)
        result.status = "finished"
        if cfg.output_dir:
            self._save_output(Path(cfg.output_dir))
        return result

    def _save_output(self, out: Path) -> None:
        cfg = self.config
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        (out / RUN_MARKER).write_text(json.dumps({"run_id": self.run_id, "store": cfg.store}))
        what = "adapter" if cfg.method in ("lora", "ia3") else "model"
        self.log(f"run {self.run_id}: saved the trained {what} to {out}")
