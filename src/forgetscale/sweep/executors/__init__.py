"""Executors that run a sweep's runs: one module each, named here (nothing is imported until
an executor is asked for, so ``forgetscale sweep --help`` stays fast and Ray/submitit stay
optional)."""

from __future__ import annotations

import importlib

from forgetscale.errors import UserError
from forgetscale.sweep.executors.base import Executor, Finished, Resources, RunTask

# executor name -> module defining ``EXECUTOR`` (an :class:`Executor` subclass)
EXECUTORS: dict[str, str] = {
    "local": "forgetscale.sweep.executors.local",
    "ray": "forgetscale.sweep.executors.ray",
    "slurm": "forgetscale.sweep.executors.slurm",
}


def get_executor(name: str) -> type[Executor]:
    """The executor class registered under ``name``."""
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
    module_name = EXECUTORS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name:
            raise UserError(f"the {name} executor is not part of this forgetscale") from None
        if missing.split(".")[0] == "forgetscale":
            raise
        raise UserError(
            f"the {name} executor needs {missing.split('.')[0]}, which is not installed: "
            f'pip install "forgetscale[{name}]"'
        ) from None
    return module.EXECUTOR


__all__ = ["EXECUTORS", "Executor", "Finished", "Resources", "RunTask", "get_executor"]
