"""The ``downstream:`` block of a train config or sweep: which suites, at which steps.

.. code-block:: yaml

    downstream:
      suites: [probe, refusal]
      steps: [0, last]          # step numbers and/or "last"
      batch_size: 8
      max_new_tokens: 64
      judge: keyword
      limit: null               # every item

Validated when constructed (unknown suites, bad steps and out-of-range numbers are
refused with the key's name), as every config is (:mod:`forgetscale.config.fields`);
:meth:`DownstreamConfig.from_dict` refuses unknown keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forgetscale.config.fields import (
    check_fields,
    check_mapping_keys,
    config_field,
    fields_help_dict,
)
from forgetscale.downstream.registry import SuiteOptions, check_spec
from forgetscale.errors import UserError

LAST = "last"


@dataclass(frozen=True)
class DownstreamConfig:
    """Suites to run inside a training run and the steps to run them at.

    Each field carries its help text and bounds (:func:`~forgetscale.config.fields.config_field`),
    checked when the config is made (:func:`~forgetscale.config.fields.check_fields`), beside
    what only this block knows: the suites exist, the steps, the judge."""

    suites: tuple[str, ...] = config_field(
        (),
        "suite specs to run (probe, refusal, lm-eval:arc_easy, mc:FILE.jsonl, ...; "
        "`forgetscale evaluate --list-suites` names them)",
    )
    steps: tuple[int | str, ...] = config_field(
        (0, LAST),
        "steps at which to run them: integers >= 0 and/or 'last' (the run's final step)",
    )
    batch_size: int = config_field(
        8, "contexts per forward pass (scoring) or prompts per batch (generation)", ge=1
    )
    max_new_tokens: int = config_field(64, "tokens generated per answer (generation suites)", ge=1)
    judge: str = config_field(
        "keyword", "who judges a refusal: keyword or classifier:MODEL[@LABEL]"
    )
    limit: int | None = config_field(None, "items per suite (unset: every item)", ge=1)
    lm_eval_include: tuple[str, ...] = config_field(
        (), "folders of extra lm-evaluation-harness task definitions"
    )

    def __post_init__(self) -> None:
        prefix = "downstream"
        for key in ("suites", "steps", "lm_eval_include"):  # one string is a list of one
            object.__setattr__(self, key, _as_tuple(getattr(self, key), f"{prefix}.{key}"))
        for spec in self.suites:
            if not isinstance(spec, str) or not spec.strip():
                raise UserError(f"{prefix}.suites: each suite is a non-empty string, got {spec!r}")
            try:
                check_spec(spec)
            except UserError as exc:
                raise UserError(f"{prefix}.suites: {exc}") from None
        if len(set(self.suites)) != len(self.suites):
            raise UserError(f"{prefix}.suites: a suite is named twice")
        if self.suites and not self.steps:
            raise UserError(f"{prefix}.steps: give at least one step (e.g. [0, last])")
        for step in self.steps:
            if step == LAST:
                continue
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise UserError(
                    f"{prefix}.steps: each step is an integer >= 0 or 'last', got {step!r}"
                )
        check_fields(self, prefix)
        if not (
            self.judge == "keyword"
            or (self.judge.startswith("classifier:") and len(self.judge) > 11)
        ):
            raise UserError(
                f"{prefix}.judge: keyword or classifier:MODEL[@LABEL], got {self.judge!r}"
            )

    @property
    def enabled(self) -> bool:
        return bool(self.suites)

    def resolve_steps(self, last_step: int) -> list[int]:
        """The concrete steps for a run whose final step is ``last_step`` (sorted, unique)."""
        out = {last_step if s == LAST else int(s) for s in self.steps}
        return sorted(s for s in out if s <= last_step)

    def options(self) -> SuiteOptions:
        return SuiteOptions(
            judge=self.judge,
            max_new_tokens=self.max_new_tokens,
            limit=self.limit,
            lm_eval_include=self.lm_eval_include,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "suites": list(self.suites),
            "steps": list(self.steps),
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
            "judge": self.judge,
            "limit": self.limit,
            "lm_eval_include": list(self.lm_eval_include),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DownstreamConfig:
        """From a config's ``downstream:`` mapping (None or {} means no suites)."""
        if data is None:
            return cls()
        check_mapping_keys(cls, data, "downstream")
        return cls(**data)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each key's help line."""
        return fields_help_dict(cls)


def _as_tuple(value: Any, key: str) -> tuple[Any, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(value)
    raise UserError(f"{key}: expected a list, got {type(value).__name__}")
