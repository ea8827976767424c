"""forgetscale: measure, fit and predict forgetting when fine-tuning language models.

Implements the method of Kalajdzievski, "Scaling Laws for Forgetting When
Fine-Tuning Large Language Models" (arXiv 2401.05605): a forgetting loss measured
against the base model's own predictions, fine-tuning runs that track it step by
step, and shifted power laws that predict it.

The public API is imported lazily so that ``forgetscale --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "UserError": "forgetscale.errors",
    "load_model": "forgetscale.models",
    "count_parameters": "forgetscale.models",
    "load_documents": "forgetscale.corpus",
    "pack_documents": "forgetscale.corpus",
    "ReferenceCache": "forgetscale.reference",
    "build_reference": "forgetscale.reference",
    "ForgettingResult": "forgetscale.metrics",
    "evaluate_forgetting": "forgetscale.metrics",
    "measure": "forgetscale.metrics",
    "evaluate": "forgetscale.downstream",
    "run_suites": "forgetscale.downstream",
    "DownstreamConfig": "forgetscale.downstream",
    "TrainConfig": "forgetscale.config",
    "ForgettingCallback": "forgetscale.callback",
    "read_measurements": "forgetscale.store",
    "fit_law": "forgetscale.laws",
    "get_law": "forgetscale.laws",
    "load_fit": "forgetscale.laws",
    "predict": "forgetscale.laws",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from forgetscale.callback import ForgettingCallback
    from forgetscale.config import TrainConfig
    from forgetscale.corpus import load_documents, pack_documents
    from forgetscale.downstream import DownstreamConfig, evaluate, run_suites
    from forgetscale.errors import UserError
    from forgetscale.metrics import ForgettingResult, evaluate_forgetting, measure
    from forgetscale.models import count_parameters, load_model
    from forgetscale.reference import ReferenceCache, build_reference
    from forgetscale.store import read_measurements


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'forgetscale' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
