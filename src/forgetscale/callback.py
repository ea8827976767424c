"""``ForgettingCallback``: forgetting metrics in the logs of your own HF Trainer / TRL run.

Build the reference once from the base model (``forgetscale reference`` or
:func:`forgetscale.build_reference`), then add the callback to a ``Trainer`` or
``SFTTrainer`` that trains a PEFT model on top of that base::

    from forgetscale import ForgettingCallback

    trainer = SFTTrainer(
        model=peft_model,
        args=SFTConfig(output_dir="out", logging_steps=10, max_steps=200),
        train_dataset=dataset,
        callbacks=[ForgettingCallback(reference="pydoc.ref.safetensors", every=50)],
    )
    trainer.train()
    # trainer.state.log_history now has forgetting_loss, forgetting_kl, forgetting_agreement, ...

Every ``every`` optimizer steps (and at step 0, before any update, unless
``at_start=False``) the callback runs the model being trained over the
reference's token blocks (no gradients, one forward per block batch; the base
side comes from the cache, there is no second copy of the model) and adds to the
Trainer's logs:

- ``forgetting_loss``: hard L_f (the paper's), ``forgetting_loss_soft``,
- ``forgetting_kl``: KL(base || model), ``forgetting_agreement``: top-1 agreement
  with the base, ``forgetting_step0``: the base's own L_f (the value at step 0).

The metrics go into ``trainer.state.log_history`` and into the ``logs`` dict of
the same log event, so callbacks added after this one (and the history that
``Trainer`` saves in checkpoints) see them. Reporting integrations that the
Trainer installs itself (``report_to``) run before user callbacks, so they see
the metrics from the next log event on; :attr:`ForgettingCallback.history`
keeps every measurement as well.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback

from forgetscale.errors import UserError


class ForgettingCallback(TrainerCallback):
    """Measure forgetting every ``every`` steps of a ``transformers.Trainer`` run.

    Args:
        reference: a :class:`~forgetscale.reference.ReferenceCache` or the path of one.
        every: measure after every ``every`` optimizer steps.
        at_start: also measure before the first update (step 0 = the base model, when
            the trainee is a fresh adapter on the reference's base).
        batch_size: reference blocks per forward pass.
        max_blocks: use only the first ``max_blocks`` reference blocks (cheaper).
        prefix: prefix of the log keys (default ``forgetting_``; ``forgetting_loss`` is
            the hard L_f).
        check_tokenizer: refuse a trainee whose tokenizer differs from the reference's
            (checked on the first measurement when the Trainer passes its tokenizer).
    """

    def __init__(
        self,
        reference: Any,
        every: int = 50,
        *,
        at_start: bool = True,
        batch_size: int = 8,
        max_blocks: int | None = None,
        prefix: str = "forgetting_",
        check_tokenizer: bool = True,
    ):
        from forgetscale.reference import ReferenceCache

        if every < 1:
            raise UserError(f"every must be at least 1, got {every}")
        if not isinstance(reference, ReferenceCache):
            reference = ReferenceCache.load(reference)
        self.reference = reference
        self.every = int(every)
        self.at_start = at_start
        self.batch_size = batch_size
        self.max_blocks = max_blocks
        self.prefix = prefix
        self.check_tokenizer = check_tokenizer
        self.history: list[dict[str, float]] = []
        self._pending: dict[str, float] | None = None
        self._checked = False

    # -- measuring ------------------------------------------------------------------------
    def _keys(self, result: Any, step: int) -> dict[str, float]:
        """``forgetting_loss``, ``forgetting_loss_soft``, ``forgetting_kl``, ... (the schema's
        forgetting columns under ``prefix``), the base's own value and the step."""
        p = self.prefix
        entry = {f"{p}{k.removeprefix('forgetting_')}": v for k, v in result.metrics().items()}
        return {**entry, f"{p}step0": result.base_forgetting_loss, f"{p}step": float(step)}

    def measure(self, model: Any, step: int, tokenizer: Any = None) -> dict[str, float]:
        """Measure ``model`` now; returns (and remembers) the log entries."""
        from forgetscale.metrics import evaluate_forgetting

        if not self._checked:
            if self.check_tokenizer and tokenizer is not None and hasattr(tokenizer, "get_vocab"):
                self.reference.check_compatible(tokenizer, model)
            self._checked = True
        result = evaluate_forgetting(
            model,
            self.reference,
            batch_size=self.batch_size,
            max_blocks=self.max_blocks,
            report_blocks=0,
        )
        entry = self._keys(result, step)
        bad = [k for k, v in entry.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"forgetting metrics are not finite at step {step}: {bad}")
        self.history.append(entry)
        return entry

    # -- Trainer events ----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.at_start and state.global_step == 0 and model is not None:
            entry = self.measure(model, 0, processing_class)
            state.log_history.append({**entry, "step": 0})
        return control

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if model is not None and state.global_step > 0 and state.global_step % self.every == 0:
            entry = self.measure(model, state.global_step, processing_class)
            self._pending = entry
            control.should_log = True  # the Trainer logs at this step; on_log adds ours
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is None or logs is None:
            return control
        logs.update(self._pending)
        if state.log_history:
            state.log_history[-1].update(self._pending)
        self._pending = None
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._pending is not None:  # measured but no log event came after it
            state.log_history.append({**self._pending, "step": state.global_step})
            self._pending = None
        return control
