"""What a training run reports back: :class:`TrainResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    """Of which evaluation (L_ft + L_f, and writing the measurement) took this much."""
    eval_finetune_s: float = 0.0
    """Of which the L_ft evaluations took this much."""
    eval_forgetting_s: float = 0.0
    """Of which the L_f evaluations took this much."""
    checkpoint_s: float = 0.0
    """Of which writing checkpoints took this much."""
    downstream_s: float = 0.0
    """Of which the downstream suites took this much."""
    step_s: float = 0.0
    """Of which the step loop took this much, evaluation, downstream suites and checkpoints
    excluded (forward, backward, optimizer, data selection, divergence checks, progress bar)."""
    mitigation_setup_s: float = 0.0
    """Of the setup, reading the replay corpus, the leak check and finding or building the
    KL penalty's reference took this much."""
    kl_term_s: float = 0.0
    """Of the step loop, the KL penalty's forward computation took this much (host time; its
    backward is inside the update's backward pass)."""
    updates: int = 0
    """Updates this call made."""
    task_tokens: int = 0
    """Task tokens this call trained on."""
    replay_tokens: int = 0
    """Replay tokens this call trained on (they take the place of task tokens in a batch)."""
    kl_positions: int = 0
    """Positions the KL penalty was taken on in this call."""
    mitigations: tuple[str, ...] = ()
    """The mitigations the run trains with: ``replay``, ``kl`` (none: a plain run)."""

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
        if self.mitigations and self.updates:
            text += "; " + self.costs_text()
        return text + f"; results in {self.store}"

    def costs_text(self) -> str:
        """What the mitigations cost per update in this call, in words: ``per update: 96 task
        + 32 replay tokens, KL on 31 positions 0.7 ms, step 11.8 ms; mitigation setup 0.05s``."""
        c = self.mitigation_costs()
        text = f"per update: {c['task_tokens_per_update']:g} task"
        if "replay" in self.mitigations:
            text += f" + {c['replay_tokens_per_update']:g} replay"
        text += " tokens"
        if "kl" in self.mitigations:
            text += (
                f", KL on {c['kl_positions_per_update']:g} positions "
                f"{1000 * c['kl_term_s_per_update']:.1f} ms"
            )
        text += f", step {1000 * c['step_s_per_update']:.1f} ms"
        return text + f"; mitigation setup {c['mitigation_setup_s']:.2f}s"

    def timings(self) -> dict[str, Any]:
        """Where this call's wall time went, in seconds (``setup`` is loading the model, the
        data and the reference, before the first step), and under ``per_update`` what an
        update cost (:meth:`mitigation_costs`: the baseline of a plain run, the cost of a
        mitigated one). The run folder's ``status.json`` records them (``timings``)."""
        parts = {
            "steps": self.step_s,
            "eval_finetune": self.eval_finetune_s,
            "eval_forgetting": self.eval_forgetting_s,
            "eval_other": self.eval_s - self.eval_finetune_s - self.eval_forgetting_s,
            "checkpoints": self.checkpoint_s,
            "downstream": self.downstream_s,
            "mitigation_setup": self.mitigation_setup_s,
        }
        setup = self.wall_s - sum(parts.values())
        return {"wall": self.wall_s, "setup": setup, **parts, "per_update": self.mitigation_costs()}

    def mitigation_costs(self) -> dict[str, float]:
        """What replay and the KL penalty cost per update in this call: task and replay tokens
        (replay takes the place of task tokens), KL positions, the KL term's forward seconds,
        step seconds, and the setup the mitigations added (seconds, once per call)."""
        n = max(self.updates, 1)
        return {
            "updates": self.updates,
            "task_tokens_per_update": self.task_tokens / n,
            "replay_tokens_per_update": self.replay_tokens / n,
            "kl_positions_per_update": self.kl_positions / n,
            "kl_term_s_per_update": self.kl_term_s / n,
            "step_s_per_update": self.step_s / n,
            "mitigation_setup_s": self.mitigation_setup_s,
        }
