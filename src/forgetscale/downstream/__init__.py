"""Downstream suites: what forgetting costs in knowledge, safety refusals and generations.

Suites (``forgetscale evaluate --suite ...``):

- ``probe``: built-in cloze probe from CPython's documentation (offline, 278 items);
- ``mc:FILE.jsonl``: your multiple-choice questions;
- ``lm-eval:TASK``: an lm-evaluation-harness multiple-choice task (optional extra);
- ``refusal`` / ``refusal:FILE.jsonl``: refusal of harmful requests, over-refusal of benign ones;
- ``generations`` / ``generations:FILE.jsonl``: greedy answers, base vs fine-tuned.

Importing this package registers the built-in suites; :mod:`.registry` imports none of
them. Add a suite with :func:`register_suite`.
"""

from __future__ import annotations

# the built-in suites register themselves when imported
from forgetscale.downstream import generation, lmeval, multiple_choice, probe, refusal  # noqa: F401
from forgetscale.downstream.config import DownstreamConfig
from forgetscale.downstream.registry import (
    Suite,
    SuiteOptions,
    get_suite,
    register_suite,
    suite_entries,
)
from forgetscale.downstream.runner import (
    SuiteMeasurement,
    SuiteResult,
    base_fingerprint,
    evaluate,
    run_suites,
)

__all__ = [
    "DownstreamConfig",
    "Suite",
    "SuiteMeasurement",
    "SuiteOptions",
    "SuiteResult",
    "base_fingerprint",
    "evaluate",
    "get_suite",
    "register_suite",
    "run_suites",
    "suite_entries",
]
