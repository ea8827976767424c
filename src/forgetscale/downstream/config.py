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
refused with the key's name); :meth:`DownstreamConfig.from_dict` refuses unknown keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from forgetscale.downstream.registry import SuiteOptions, check_spec
from forgetscale.errors import UserError

LAST = "last"


@dataclass(frozen=True)
class DownstreamConfig:
    """Suites to run inside a training run and the steps to run them at."""

    suites: tuple[str, ...] = ()
    """Suite specs (``probe``, ``refusal``, ``lm-eval:arc_easy``, ``mc:FILE.jsonl`` ...)."""
    steps: tuple[int | str, ...] = (0, LAST)
    """Steps at which to run them: integers >= 0 and/or ``"last"`` (the run's final step)."""
    batch_size: int = 8
    """Contexts per forward pass (scoring) or prompts per batch (generation)."""
    max_new_tokens: int = 64
    judge: str = "keyword"
    limit: int | None = None
    lm_eval_include: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        prefix = "downstream"
        suites = _as_tuple(self.suites, f"{prefix}.suites")
        steps = _as_tuple(self.steps, f"{prefix}.steps")
        include = _as_tuple(self.lm_eval_include, f"{prefix}.lm_eval_include")
        object.__setattr__(self, "suites", suites)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "lm_eval_include", include)
        for spec in suites:
            if not isinstance(spec, str) or not spec.strip():
                raise UserError(f"{prefix}.suites: each suite is a non-empty string, got {spec!r}")
            try:
                check_spec(spec)
            except UserError as exc:
                raise UserError(f"{prefix}.suites: {exc}") from None
        if len(set(suites)) != len(suites):
            raise UserError(f"{prefix}.suites: a suite is named twice")
        if suites and not steps:
            raise UserError(f"{prefix}.steps: give at least one step (e.g. [0, last])")
        for step in steps:
            if step == LAST:
                continue
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise UserError(
                    f"{prefix}.steps: each step is an integer >= 0 or 'last', got {step!r}"
                )
        _check_int(self.batch_size, f"{prefix}.batch_size", 1)
        _check_int(self.max_new_tokens, f"{prefix}.max_new_tokens", 1)
        if self.limit is not None:
            _check_int(self.limit, f"{prefix}.limit", 1)
        if not isinstance(self.judge, str) or not (
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
        if not isinstance(data, dict):
            raise UserError(
                f"downstream: expected a mapping of suites/steps/..., got {type(data).__name__}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"downstream: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)


def _as_tuple(value: Any, key: str) -> tuple[Any, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(value)
    raise UserError(f"{key}: expected a list, got {type(value).__name__}")


def _check_int(value: Any, key: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            raise UserError(f"{key}: expected an integer, got {value!r}")
        raise UserError(f"{key}: expected an integer >= {low}, got {value!r}")
    if value < low:
        raise UserError(f"{key}: must be at least {low}, got {value}")
