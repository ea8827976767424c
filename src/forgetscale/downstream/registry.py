"""The suite registry: a name, how to build the suite's items, how to score them.

A suite is named by a spec: ``NAME`` or ``NAME:ARGUMENT`` (``probe``,
``mc:questions.jsonl``, ``lm-eval:arc_challenge``, ``refusal``,
``refusal:prompts.jsonl``, ``generations``). Each suite module registers itself
with :func:`register_suite` when :mod:`forgetscale.downstream` is imported; this
module imports none of them, so a user suite registered first never changes the
built-ins. Adding a suite is one module with a :class:`Suite` subclass and one
``register_suite`` call.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from forgetscale.errors import UserError

Record = dict[str, Any]
"""What a suite keeps per item for one model (JSON-able: it is cached for the base)."""


@dataclass(frozen=True)
class SuiteOptions:
    """Settings shared by the suites (each suite reads the ones it uses)."""

    judge: str = "keyword"
    """Refusal judge: ``keyword`` (default) or ``classifier:MODEL`` (a text-classification model)."""
    max_new_tokens: int = 64
    """Tokens generated per prompt by the refusal and generations suites."""
    limit: int | None = None
    """Evaluate only the first N items of each suite (quick looks; the n is reported)."""
    lm_eval_include: tuple[str, ...] = ()
    """Extra folders of lm-eval task YAML files."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"limit must be at least 1, got {self.limit}")


class Suite(abc.ABC):
    """A downstream suite: items, a way to run a model on them, per-item outcomes.

    ``run`` returns one record per item for one model; ``outcomes`` turns the tuned
    model's records (and the base's, for agreement-style metrics) into 0/1 outcomes per
    metric. Rates, intervals and changes are computed from those by the runner.
    """

    kind: str = "suite"
    metrics: tuple[str, ...] = ()
    """Metric names, in display order."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    @abc.abstractmethod
    def describe(self) -> str:
        """One line: what the items are and how they are scored."""

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What identifies the items and the scoring settings (keys the base-side cache)."""

    @abc.abstractmethod
    def run(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        device: torch.device,
        batch_size: int,
        progress: bool = False,
    ) -> list[Record]:
        """Per-item records of ``model`` on the suite."""

    @abc.abstractmethod
    def outcomes(self, records: list[Record], base: list[Record]) -> dict[str, np.ndarray]:
        """Metric name -> per-item 0/1 outcomes (items a metric does not apply to are left out)."""

    def examples(self, records: list[Record], base: list[Record], n: int) -> list[dict[str, Any]]:
        """Up to ``n`` items worth showing (base vs tuned), for reports."""
        return []


def content_hash(payload: Any) -> str:
    """SHA-256 of a JSON-able payload (sorted keys, UTF-8)."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


SuiteFactory = Callable[[str | None, SuiteOptions], Suite]


@dataclass(frozen=True)
class SuiteEntry:
    name: str
    factory: SuiteFactory
    help: str
    argument: str = "none"
    """``none`` (plain name), ``optional`` (``NAME`` or ``NAME:ARG``) or ``required``."""
    example: str = ""


_SUITES: dict[str, SuiteEntry] = {}
_ARGUMENT_KINDS = ("none", "optional", "required")


def register_suite(
    name: str,
    factory: SuiteFactory,
    *,
    help: str,
    argument: str = "none",
    example: str = "",
    replace: bool = False,
) -> SuiteEntry:
    """Register a suite under ``name`` (``replace=True`` to override an existing one)."""
    if not name or ":" in name:
        raise ValueError(f"a suite name must be non-empty and contain no ':', got {name!r}")
    if argument not in _ARGUMENT_KINDS:
        raise ValueError(f"argument must be one of {_ARGUMENT_KINDS}, got {argument!r}")
    if name in _SUITES and not replace:
        raise ValueError(f"suite {name!r} is already registered (pass replace=True)")
    entry = SuiteEntry(name, factory, help, argument, example or name)
    _SUITES[name] = entry
    return entry


def suite_entries() -> list[SuiteEntry]:
    return list(_SUITES.values())


def split_spec(spec: str) -> tuple[str, str | None]:
    name, sep, arg = spec.partition(":")
    return name, (arg if sep else None)


def check_spec(spec: str) -> SuiteEntry:
    """The entry for ``spec``, or a :class:`UserError` naming the known suites."""
    name, arg = split_spec(spec.strip())
    entry = _SUITES.get(name)
    if entry is None:
        known = ", ".join(e.example for e in _SUITES.values())
        raise UserError(f"unknown suite {spec!r}; known suites: {known}")
    if entry.argument == "none" and arg is not None:
        raise UserError(f"suite {name!r} takes no argument, got {spec!r}")
    if entry.argument == "required" and not arg:
        raise UserError(f"suite {name!r} needs an argument, as in {entry.example!r}")
    return entry


def get_suite(spec: str, options: SuiteOptions | None = None) -> Suite:
    """Build the suite named by ``spec`` (see the module docs)."""
    entry = check_spec(spec)
    _, arg = split_spec(spec.strip())
    return entry.factory(arg, options or SuiteOptions())
