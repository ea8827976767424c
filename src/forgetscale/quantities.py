"""Every measured quantity, declared once: its name, symbols, axis label, unit, how it moves
with forgetting, and whether a law may predict it.

What derives from :data:`QUANTITIES` (a new quantity is one :class:`Quantity` here):

- the run columns read from each run's config (``config_default`` set: the replay fraction p
  and the KL weight), exported beside P with every measurement and read by the laws;
- the results store's measurement columns (:data:`forgetscale.store.MEASUREMENT_COLUMNS`:
  every quantity with an ``sql`` type, in this order), the export columns, the columns a
  forgetting evaluation fills (``forgetting=True``) and those older stores gain on write
  (``later=True``);
- what a law may predict (:data:`forgetscale.laws.registry.TARGETS`: ``target=True``) and
  the sign rule of the power laws (``rises``), the targets computed from another column
  (``derived_from``), ``fit --target``'s choices;
- the study's targets and the quantities it summarises at step 0 and over seeds
  (:mod:`forgetscale.study.config`), and every figure's labels (:mod:`forgetscale.figures`,
  which ``fit --plots`` and the study report share).

This module imports nothing of forgetscale's, so every step of the pipeline can read it.
"""

from __future__ import annotations

from dataclasses import dataclass

NATS = "nats/token"


@dataclass(frozen=True)
class Quantity:
    """One measured quantity (or, with ``variable=True``, a variable laws read: P, N)."""

    name: str
    """The column name everywhere: store, export, ``fit --target``, report.json."""
    symbol: str
    """Plain-text symbol in law formulas and fit tables (``L_f``)."""
    short: str
    """Plain-text name in the report's text and tables (``L_f (hard)``)."""
    tex: str
    """Short name in figure titles and legends (matplotlib mathtext: ``hard $L_f$``)."""
    axis: str
    """A figure axis's label, without its unit (``hard forgetting loss $L_f$``)."""
    unit: str
    """``nats/token``, ``share of positions``, ``tokens``, ``s`` ... ("" when none)."""
    help: str
    """One line for ``--help``, the docs and the store's schema."""
    sql: str | None = None
    """SQLite column type in the measurements table; None: not stored (derived or a variable)."""
    dtype: str = "float64"
    """pandas dtype when read back."""
    rises: bool | None = None
    """True: grows as the model forgets (with P and N); False: falls (the fine-tuning loss);
    None: neither (a count, a time)."""
    target: bool = False
    """A law may predict it (``fit --target``, a study's ``laws:``)."""
    loss: bool = False
    """One of the paper's losses (a cross-entropy): L_ft and the hard and soft L_f."""
    forgetting: bool = False
    """Filled by one forgetting evaluation (:class:`forgetscale.metrics.ForgettingResult`)."""
    later: bool = False
    """Added after stores were first written: older stores gain the column on write."""
    derived_from: str | None = None
    """Computed as ``1 - derived_from`` when a table lacks it (``disagreement``)."""
    variable: bool = False
    """A variable of the laws (P, N, p), not a measurement."""
    config_default: float | None = None
    """Set: a key of the run's config (one value per run) that the export gives beside every
    measurement, this value where a run's config lacks the key (recorded before it existed)."""

    def axis_label(self) -> str:
        """The axis label with its unit: ``hard forgetting loss $L_f$ (nats/token)``."""
        return f"{self.axis} ({self.unit})" if self.unit else self.axis

    def unit_suffix(self) -> str:
        return f" ({self.unit})" if self.unit else ""


Q = Quantity
QUANTITIES: tuple[Quantity, ...] = (
    Q("finetune_loss", "L_ft", "L_ft", "$L_{ft}$", "fine-tuning loss $L_{ft}$", NATS,
      "L_ft: cross-entropy on held-out task data", "REAL", rises=False, target=True, loss=True),
    Q("forgetting_loss", "L_f", "L_f (hard)", "hard $L_f$", "hard forgetting loss $L_f$", NATS,
      "hard L_f: mean -log q(base's top-1 token)", "REAL", rises=True, target=True,
      forgetting=True, loss=True),
    Q("forgetting_loss_soft", "L_f soft", "L_f (soft)", "soft $L_f$",
      "soft forgetting loss $L_f$", NATS, "soft L_f: mean cross-entropy p -> q", "REAL",
      rises=True, target=True, forgetting=True, loss=True),
    Q("kl", "KL", "KL", "KL", "KL(base || model)", NATS,
      "mean KL(base || model) (top-K + lumped tail)", "REAL", rises=True, target=True,
      forgetting=True),
    Q("base_entropy", "H_base", "base entropy", "base entropy", "entropy of the base", NATS,
      "mean entropy of the base (top-K + lumped tail)", "REAL", forgetting=True),
    Q("agreement", "agreement", "agreement", "agreement", "agreement with the base's top-1",
      "share of positions", "share of positions where top-1 is the base's", "REAL",
      rises=False, forgetting=True),
    Q("disagreement", "1 - agreement", "1 - agreement", "1 - agreement", "1 - agreement",
      "share of positions", "1 - agreement: share of positions whose top-1 token moved",
      rises=True, target=True, derived_from="agreement"),
    Q("train_loss", "L_train", "training loss", "training loss", "training loss", NATS,
      "mean training loss since the last measurement", "REAL"),
    Q("tokens_seen", "tokens", "tokens seen", "tokens seen", "training tokens seen", "tokens",
      "training tokens seen so far (task + replay)", "INTEGER", "Int64"),
    Q("task_tokens_seen", "task tokens", "task tokens seen", "task tokens seen",
      "task-data tokens seen", "tokens", "task-data training tokens seen so far", "INTEGER",
      "Int64", later=True),
    Q("replay_tokens_seen", "replay tokens", "replay tokens seen", "replay tokens seen",
      "replay-data tokens seen", "tokens", "replay-data training tokens seen so far",
      "INTEGER", "Int64", later=True),
    Q("train_kl", "KL_train", "training KL", "training KL", "KL penalty's KL(base || model)",
      NATS, "mean KL(base || model) of the KL penalty on its blocks since the last measurement",
      "REAL", later=True),
    Q("wall_s", "t", "wall time", "wall time", "training wall time", "s",
      "training wall time so far, in seconds", "REAL"),
)  # fmt: skip

#: The laws' variables: P (a run's trainable parameters), N (the step), and the strengths of
#: the run's mitigations from its config: p (replay fraction) and the KL penalty's weight.
VARIABLES: tuple[Quantity, ...] = (
    Q("params_trained", "P", "P", "$P$", "trainable parameters $P$", "",
      "trainable non-embedding parameters", variable=True),
    Q("step", "N", "N", "$N$", "fine-tuning steps $N$", "optimizer updates",
      "optimizer updates so far (0: the base model)", variable=True),
    Q("replay_fraction", "p", "replay fraction", "replay $p$", "replay fraction $p$",
      "share of blocks", "the run's replay_fraction: share of each update's blocks drawn "
      "from the replay data (0: no replay)", variable=True, config_default=0.0),
    Q("kl_weight", "lambda", "KL weight", "KL $\\lambda$", "KL penalty weight $\\lambda$", "",
      "the run's kl_weight: weight of the KL(base || model) penalty in the loss (0: none)",
      variable=True, config_default=0.0),
)  # fmt: skip
del Q


def quantity(name: str) -> Quantity:
    """The quantity (or variable) called ``name``; KeyError when there is none."""
    for q in (*QUANTITIES, *VARIABLES):
        if q.name == name:
            return q
    raise KeyError(name)


def stored() -> tuple[Quantity, ...]:
    """The measurement columns of the results store, in order."""
    return tuple(q for q in QUANTITIES if q.sql is not None)


def run_settings() -> tuple[Quantity, ...]:
    """The run columns read from each run's config (the export's, beside P), in order."""
    return tuple(q for q in VARIABLES if q.config_default is not None)


def targets() -> tuple[Quantity, ...]:
    """What a law may predict, in order."""
    return tuple(q for q in QUANTITIES if q.target)


def rising_targets() -> tuple[str, ...]:
    """The targets that rise as the model forgets (the measures of forgetting), in order."""
    return tuple(q.name for q in targets() if q.rises)


def losses() -> tuple[str, ...]:
    """The paper's losses (L_ft, hard L_f, soft L_f), in order."""
    return tuple(q.name for q in QUANTITIES if q.loss)


def forgetting_losses() -> tuple[str, ...]:
    """The losses that measure forgetting: hard and soft L_f."""
    return tuple(q.name for q in QUANTITIES if q.loss and q.rises)


def summarised() -> tuple[str, ...]:
    """The targets a study summarises (step 0, the seed spread): those that rise with
    forgetting first, then the others."""
    return (*rising_targets(), *(q.name for q in targets() if not q.rises))
