"""The train config: one fine-tuning run (``forgetscale train``), its YAML file and overrides.

A training run is described by one :class:`TrainConfig`. It comes from a YAML
file (flat ``key: value`` pairs), overridden by ``--key=value`` arguments on the
command line, both typed by the dataclass field types. Unknown keys are rejected
with a :class:`~forgetscale.errors.UserError` that lists the closest known keys.

Every field carries its help text in ``metadata["help"]`` (the PEFT style), so
``forgetscale train --help-config`` and the docs are generated from one place.

The *run id* is the hash of the resolved configuration (:func:`run_id`): a stable
JSON of every field that can change the results. Fields that only say where
things go or how they are shown (the store path, checkpoint and output folders,
the progress bar, a label) are left out, so moving the results file does not
change a run's identity, while changing the learning rate does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetscale.config.fields import (
    check_field_values,
    check_known,
    coerce_value,
    config_field,
    fields_help,
    parse_overrides,
    read_yaml_file,
    stable_json,
)
from forgetscale.errors import UserError

_f = config_field

METHODS = ("lora", "ia3", "top-layers", "full")
TARGET_PRESETS = ("attention", "mlp", "all-linear")
OPTIMIZERS = ("adamw", "adafactor")
SCHEDULES = ("constant", "linear", "cosine")
DTYPES = ("float32", "bfloat16")
TASK_FORMATS = ("auto", "text", "prompt_response", "messages")
KL_DATA = ("task", "replay")

# Fields that never change a run's numbers: excluded from the run id.
NON_RESULT_FIELDS = frozenset(
    {
        "store",
        "reference_dir",
        "checkpoint_dir",
        "checkpoint_every",
        "keep_checkpoint",
        "output_dir",
        "progress",
        "name",
        "device",
    }
)

# Keys added after run ids were first given out, with their defaults: a run id includes
# them only when they differ from these, so a store's earlier runs keep their ids.
LATER_KEYS: dict[str, Any] = {
    "downstream": None,
    "prompt_field": "prompt",
    "response_field": "response",
    "task_split": "train",
    "forgetting_split": "train",
    "replay_data": None,
    "replay_fraction": 0.0,
    "kl_weight": 0.0,
    "kl_data": "task",
    "torch_compile": False,
}

# Fields that hold local paths (resolved against the config file's folder).
PATH_FIELDS = frozenset(
    {
        "model",
        "task_data",
        "heldout_data",
        "forgetting_data",
        "reference",
        "reference_dir",
        "store",
        "checkpoint_dir",
        "output_dir",
        "adapter",
        "replay_data",
    }
)


@dataclass
class TrainConfig:
    """One fine-tuning run that tracks forgetting step by step (``forgetscale train``)."""

    # --- what is trained, on what -------------------------------------------------
    model: str = _f(
        "smollm2-135m",
        "Base model: a local folder, a hub id, a .gguf file, or the embedded default "
        "'smollm2-135m'.",
    )
    task_data: str | None = _f(
        None,
        "Fine-tuning data: an embedded corpus name (e.g. 'shakespeare'), a .txt/.jsonl/.parquet "
        "file or folder, or hf:NAME. JSONL may hold {'text'}, {'prompt','response'} or "
        "{'messages'} records.",
    )
    task_format: str = _f(
        "auto",
        "How to read task records: auto (detect from the first record), text, "
        "prompt_response or messages.",
        choices=TASK_FORMATS,
    )
    text_field: str = _f("text", "Field holding the text in JSONL/parquet plain-text records.")
    prompt_field: str = _f(
        "prompt", "Field holding the prompt in prompt/response records (OpenOrca: question)."
    )
    response_field: str = _f("response", "Field holding the response in prompt/response records.")
    task_split: str = _f("train", "Split of an hf: task data set.")
    response_only_loss: bool = _f(
        True,
        "For prompt/response or chat data: train and measure L_ft on response tokens only.",
    )
    heldout_data: str | None = _f(
        None,
        "Separate held-out task data for L_ft. If unset, a fraction of the task data is held out.",
    )
    heldout_fraction: float = _f(
        0.1,
        "Fraction of the task blocks/examples held out for L_ft when heldout_data is unset.",
        ge=0.0,
        lt=1.0,
    )
    heldout_max_tokens: int | None = _f(
        2048,
        "Token budget of each L_ft evaluation: at most this many held-out tokens (None = all).",
        gt=0,
    )
    block_size: int = _f(128, "Tokens per training block (context length T).", ge=2)
    adapter: str | None = _f(
        None, "An existing PEFT adapter to start from (applied to the base before training)."
    )
    trust_remote_code: bool = _f(False, "Allow model code from the hub to run (off by default).")

    # --- forgetting reference -----------------------------------------------------
    forgetting_data: str = _f(
        "pydoc",
        "General text that forgetting is measured on (embedded 'pydoc'/'shakespeare', a file, "
        "folder or hf:NAME).",
    )
    forgetting_split: str = _f(
        "train", "Split of an hf: forgetting corpus (the paper: WikiText-103's test split)."
    )
    forgetting_block_size: int | None = _f(
        None, "Block size of the forgetting corpus (None = block_size).", ge=2
    )
    forgetting_max_tokens: int | None = _f(
        4096,
        "Token budget of the forgetting evaluation: at most this many tokens of the forgetting "
        "corpus (None = all).",
        gt=0,
    )
    reference: str | None = _f(
        None,
        "Path of the reference cache (.safetensors). Built when missing, reused when its "
        "fingerprint matches. None = a file next to the store named by its fingerprint.",
    )
    reference_top_k: int = _f(
        32, "Base-model top-K tokens kept per position for the soft metrics.", ge=1
    )

    # --- method ---------------------------------------------------------------------
    method: str = _f("lora", "Fine-tuning method: lora, ia3, top-layers or full.", choices=METHODS)
    rank: int = _f(8, "LoRA rank r.", ge=1)
    alpha: float = _f(
        16.0, "LoRA alpha. The update is scaled by alpha/sqrt(r) with rslora.", gt=0.0
    )
    rslora: bool = _f(
        True, "Rank-stabilised LoRA scaling alpha/sqrt(r) (the paper's); false = alpha/r."
    )
    dropout: float = _f(0.0, "LoRA dropout.", ge=0.0, lt=1.0)
    target_modules: str | list[str] = _f(
        "all-linear",
        "Modules to adapt: attention, mlp, all-linear (the paper's) or a list of module names.",
    )
    layers: list[int] | None = _f(
        None, "Only adapt these transformer blocks (0-based indices); None = all.", ge=0
    )
    top_k_layers: int = _f(1, "top-layers method: unfreeze the top k transformer blocks.", ge=1)

    # --- optimisation ---------------------------------------------------------------
    optimizer: str = _f("adamw", "adamw or adafactor (the paper's).", choices=OPTIMIZERS)
    learning_rate: float = _f(1e-4, "Peak learning rate.", gt=0.0)
    weight_decay: float = _f(0.0, "Weight decay (AdamW / Adafactor).", ge=0.0)
    max_grad_norm: float | None = _f(1.0, "Gradient clipping norm (None = no clipping).", gt=0.0)
    warmup_steps: int = _f(0, "Linear warm-up steps.", ge=0)
    schedule: str = _f(
        "constant",
        "Learning-rate schedule after warm-up: constant, linear or cosine.",
        choices=SCHEDULES,
    )
    batch_size: int = _f(
        8, "Blocks per optimizer step (per micro-batch x grad_accumulation).", ge=1
    )
    grad_accumulation: int = _f(
        1,
        "Micro-batches per update; each micro-batch holds batch_size/grad_accumulation blocks.",
        ge=1,
    )
    max_steps: int = _f(100, "Number of optimizer updates N.", ge=1)
    seed: int = _f(0, "Random seed (adapter init, data order, dropout).", ge=0)
    dtype: str = _f("float32", "Compute dtype: float32 or bfloat16.", choices=DTYPES)
    gradient_checkpointing: bool = _f(False, "Trade compute for memory in the backward pass.")
    torch_compile: bool = _f(
        False,
        "Compile each transformer block once with torch.compile (regional compilation; on a "
        "CPU it needs a C++ compiler) and train through the compiled blocks; evaluation stays "
        "eager. Fuses the elementwise work, so the rounding differs from eager in the last "
        "bits. Where compilation is unavailable the run says so and trains eagerly.",
    )

    # --- mitigations: forget less (docs/train.md, "Forgetting less") -----------------------
    replay_data: str | None = _f(
        None,
        "Replay corpus mixed into the updates: an embedded name ('pydoc-replay': the pydoc "
        "documents the forgetting evaluation never touches), a .txt/.jsonl/.parquet file or "
        "folder, or hf:NAME. Refused when it shares a document with the evaluation blocks.",
    )
    replay_fraction: float = _f(
        0.0,
        "Share p of each update's blocks drawn from replay_data (the rest from the task data); "
        "update s holds round((s+1)*p*batch_size) - round(s*p*batch_size) replay blocks.",
        ge=0.0,
        lt=1.0,
    )
    kl_weight: float = _f(
        0.0,
        "Weight lambda of the KL-to-base penalty: the update's loss adds lambda * KL(base || "
        "model) (top-K + lumped tail, against a reference cached once) on kl_data's blocks.",
        ge=0.0,
    )
    kl_data: str = _f(
        "task",
        "Blocks the KL penalty is taken on: task (the update's task blocks) or replay (its "
        "replay blocks; needs replay_data and replay_fraction > 0).",
        choices=KL_DATA,
    )

    # --- evaluation schedule ------------------------------------------------------------
    eval_steps: list[int] | None = _f(
        None,
        "Explicit steps after which to measure (0 = the base before any update). "
        "Overrides eval_log_points/eval_every when set.",
        ge=0,
    )
    eval_log_points: int = _f(
        6,
        "Number of log-spaced evaluation steps in 1..max_steps (plus step 0 and the last).",
        ge=0,
    )
    eval_every: int | None = _f(None, "Also measure every k steps.", ge=1)
    eval_batch_size: int = _f(8, "Blocks per forward pass in evaluation.", ge=1)

    # --- what forgetting costs downstream -------------------------------------------------
    downstream: dict[str, Any] | None = _f(
        None,
        "Downstream suites measured inside the run: {suites: [probe, refusal], steps: [0, last]} "
        "(`forgetscale evaluate --list-suites` names them). Results go to the store's downstream "
        "table, beside the base's.",
    )

    # --- where things go (not part of the run id) --------------------------------------
    store: str = _f("results.db", "SQLite results store.")
    reference_dir: str | None = _f(
        None,
        "Folder where reference caches named by their fingerprint are found or built when "
        "`reference` is unset (None = a 'references' folder beside the store). A sweep points "
        "every run at its own shared folder.",
    )
    checkpoint_dir: str | None = _f(
        None, "Checkpoint folder (None = <store>.checkpoints/<run id>)."
    )
    checkpoint_every: int | None = _f(
        None, "Checkpoint every k steps (None = at every evaluation step).", ge=1
    )
    keep_checkpoint: bool = _f(
        False, "Keep the last checkpoint after the run finishes (for inspection)."
    )
    output_dir: str | None = _f(
        None, "Save the trained adapter / weights here when the run finishes."
    )
    device: str = _f("auto", "auto, cpu, cuda, cuda:1, mps ...")
    progress: bool = _f(True, "Show a progress bar.")
    name: str | None = _f(None, "Free-form label shown by `forgetscale runs`.")

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        """Validate at construction: a TrainConfig that exists is a valid one."""
        if not self.task_data:
            raise UserError("task_data is required (a file, folder, embedded corpus or hf:NAME)")
        check_field_values(self)
        if self.batch_size % self.grad_accumulation:
            raise UserError(
                f"batch_size ({self.batch_size}) must be a multiple of grad_accumulation "
                f"({self.grad_accumulation})"
            )
        if self.heldout_data is None and self.heldout_fraction == 0.0:
            raise UserError("set heldout_data or a heldout_fraction > 0: L_ft needs held-out data")
        if self.eval_steps is not None:
            bad = [s for s in self.eval_steps if s > self.max_steps]
            if bad:
                raise UserError(f"eval_steps {bad} outside 0..max_steps ({self.max_steps})")
        if not self.target_modules or (
            isinstance(self.target_modules, str) and not self.target_modules.strip()
        ):
            raise UserError("target_modules is empty")
        self.downstream_config()  # checks the block's keys, suites and steps
        self._check_mitigations()

    def _check_mitigations(self) -> None:
        if self.replay_fraction > 0 and not self.replay_data:
            raise UserError(f"replay_fraction={self.replay_fraction:g} needs replay_data")
        if self.kl_weight > 0 and self.kl_data == "replay":
            if not self.replay_data:
                raise UserError("kl_data=replay needs replay_data (the KL is taken on its blocks)")
            if self.replay_fraction == 0:
                raise UserError(
                    "kl_data=replay takes the KL on the update's replay blocks: "
                    "set replay_fraction > 0"
                )

    @property
    def mitigated(self) -> bool:
        """Whether replay or the KL penalty changes the updates (off: the plain run)."""
        return bool(self.mitigations)

    @property
    def mitigations(self) -> tuple[str, ...]:
        """The mitigations that change the updates: ``replay``, ``kl`` (none: the plain run)."""
        on = (("replay", self.replay_fraction > 0), ("kl", self.kl_weight > 0))
        return tuple(name for name, is_on in on if is_on)

    def check_splits(self) -> None:
        """A split other than ``train`` names one of an ``hf:`` data set: refused for a local
        file or an embedded corpus (which have none) before a run starts or a sweep is
        expanded. Not at construction: a config may be built to compute a run id."""
        from forgetscale.corpus import check_split

        check_split(self.task_data, self.task_split, option="task_split")
        check_split(self.forgetting_data, self.forgetting_split, option="forgetting_split")

    def downstream_config(self) -> Any:
        """The ``downstream:`` block as a checked
        :class:`~forgetscale.downstream.config.DownstreamConfig` (None when unset)."""
        if self.downstream is None:
            return None
        from forgetscale.downstream.config import DownstreamConfig

        return DownstreamConfig.from_dict(self.downstream)

    # ------------------------------------------------------------------------------------
    def evaluation_steps(self) -> list[int]:
        """The sorted steps after which the run measures (0 = the base model)."""
        return evaluation_schedule(
            self.max_steps,
            explicit=self.eval_steps,
            log_points=self.eval_log_points,
            every=self.eval_every,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_dict(self) -> dict[str, Any]:
        """The fields that define the results (everything but where things go). Keys added
        after run ids existed enter it only when set to another value than their default, so
        earlier run ids stay the same."""
        return {
            k: v
            for k, v in self.to_dict().items()
            if k not in NON_RESULT_FIELDS and not (k in LATER_KEYS and v == LATER_KEYS[k])
        }

    @property
    def run_id(self) -> str:
        return run_id(self)


def evaluation_schedule(
    max_steps: int,
    *,
    explicit: list[int] | None = None,
    log_points: int = 8,
    every: int | None = None,
) -> list[int]:
    """Steps after which to measure: 0, ``log_points`` log-spaced steps, multiples of ``every``.

    With ``explicit`` the list is used as given (sorted, deduplicated). Otherwise the
    schedule always holds step 0 (the base model) and ``max_steps``; ``log_points``
    steps are spread geometrically over 1..max_steps (rounded, deduplicated), which
    samples the early steps where the losses move fastest densely, as the power laws
    in N need.
    """
    if explicit is not None:
        return sorted({int(s) for s in explicit})
    steps = {0, max_steps}
    if log_points > 0:
        if log_points == 1:
            steps.add(max_steps)
        else:
            ratio = max_steps ** (1.0 / (log_points - 1))
            for i in range(log_points):
                steps.add(min(max_steps, max(1, round(ratio**i))))
    if every:
        steps.update(range(every, max_steps + 1, every))
    return sorted(steps)


# ----------------------------------------------------------------------------------------
# loading, overrides, hashing


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_known(keys: typing.Iterable[str], where: str) -> None:
    check_known(keys, [f.name for f in dataclasses.fields(TrainConfig)], where)


OUTPUT_PATH_FIELDS = frozenset({"store", "reference_dir", "checkpoint_dir", "output_dir"})


def _resolve_path(key: str, value: str, base: Path | None) -> str:
    """Make a local path absolute.

    Inputs (model, data, adapter, reference) are looked up next to the config file
    first, then in the current directory; a value that exists in neither is kept as
    written (a hub id, an embedded corpus name, ``hf:NAME``; a missing file is
    reported when it is read). Outputs (store, checkpoint and output folders) are
    relative to the current directory, like any command-line tool's.
    """
    if not isinstance(value, str) or not value or value.startswith("hf:"):
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    if key in OUTPUT_PATH_FIELDS:
        return str((Path.cwd() / p).resolve())
    candidates = ([base / p] if base is not None else []) + [Path.cwd() / p]
    for c in candidates:
        if c.exists():
            return str(c.resolve())
    if key == "reference" and base is not None:
        return str((base / p).resolve())
    if key == "reference":
        return str((Path.cwd() / p).resolve())
    return value


def build_config(
    values: dict[str, Any],
    *,
    overrides: dict[str, Any] | None = None,
    base_dir: str | Path | None = None,
    where: str = "config",
) -> TrainConfig:
    """Build a validated :class:`TrainConfig` from a mapping plus overrides.

    Paths in ``values`` are resolved against ``base_dir`` (the config file's folder),
    paths in ``overrides`` against the current directory.
    """
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping of key: value pairs")
    _check_known(values, where)
    overrides = dict(overrides or {})
    _check_known(overrides, "command-line overrides")
    hints = _hints()
    kwargs: dict[str, Any] = {}
    base = Path(base_dir) if base_dir is not None else None
    for mapping, anchor, origin in ((values, base, where), (overrides, None, "command line")):
        for key, raw in mapping.items():
            try:
                value = coerce_value(key, raw, hints[key])
            except UserError as exc:  # say where the value came from, when that says something
                raise UserError(f"{origin}: {exc}" if origin != "config" else str(exc)) from None
            if key in PATH_FIELDS and isinstance(value, str):
                value = _resolve_path(key, value, anchor)
            kwargs[key] = value
    tm = kwargs.get("target_modules")
    if isinstance(tm, str) and "," in tm:
        tm = [t.strip() for t in tm.split(",") if t.strip()]
    if isinstance(tm, list) and len(tm) == 1:
        tm = tm[0]
    if tm is not None:
        kwargs["target_modules"] = tm
    try:
        return TrainConfig(**kwargs)
    except UserError as exc:
        import re

        # a value the command line set is the command line's error, not the file's
        key = re.match(r"[A-Za-z_]\w*", str(exc))
        origin = "command line" if key and key.group(0) in overrides else where
        raise UserError(f"{origin}: {exc}" if origin != "config" else str(exc)) from None


def load_config(
    path: str | Path | None = None, overrides: typing.Sequence[str] | dict[str, Any] = ()
) -> TrainConfig:
    """Read a YAML config file and apply ``--key=value`` overrides."""
    values: dict[str, Any] = {}
    base_dir = None
    where = "config"
    if path is not None:
        values = read_yaml_file(path) or {}
        base_dir = Path(path).resolve().parent
        where = str(path)
    ov = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    return build_config(values, overrides=ov, base_dir=base_dir, where=where)


def run_id(config: TrainConfig) -> str:
    """The run's identity: 16 hex digits of sha256 over the result-defining fields."""
    return hashlib.sha256(stable_json(config.result_dict()).encode()).hexdigest()[:16]


def config_help() -> str:
    """Every config key with its type, default and help text (for ``--help-config``)."""
    return fields_help(TrainConfig)
