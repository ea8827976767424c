"""The executor interface: how a sweep's runs get somewhere to run.

The driver (``forgetscale.sweep.driver``) owns the sweep: it expands the grid, asks the
executor to have the reference caches built once, where the runs run
(:meth:`Executor.build_references`), writes one folder per run and merges finished folders
into the sweep's results store. An executor only starts the worker for a run folder somewhere (a
local process, a Ray task, a Slurm job), tells the driver when it has stopped, and can
cancel it. It never reads or writes the results store, and it never decides whether a
run succeeded: the run folder says that (``status.json``, written by the worker).

The worker for one run is :func:`forgetscale.sweep.worker.run_folder` (a plain top-level
function, importable and picklable: Ray and submitit ship it by reference), also runnable as
``python -m forgetscale.sweep.worker RUN_DIR``. It reads ``RUN_DIR/spec.json``, trains the
run with its store, checkpoints, adapter and log inside ``RUN_DIR`` (resuming from the
checkpoint there when one exists), and writes ``RUN_DIR/status.json``.

Adding an executor is one module in this package that defines a subclass of
:class:`Executor` and is named in :data:`forgetscale.sweep.executors.EXECUTORS`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from forgetscale.config import TrainConfig


@dataclass(frozen=True)
class Resources:
    """What one run asks of the machine it runs on (the sweep file's ``resources:``)."""

    cpus: int = 1
    gpus: int = 0
    memory_gb: float | None = None
    time_limit_min: int | None = None


@dataclass(frozen=True)
class RunTask:
    """One run handed to an executor."""

    run_id: str
    run_dir: Path
    """The run's own folder; ``run_dir / "spec.json"`` is already written."""
    label: str
    """The grid values, e.g. ``rank=4 seed=1`` (for job names and messages)."""
    resources: Resources = field(default_factory=Resources)


@dataclass
class Finished:
    """A run whose worker stopped: the driver then reads ``run_dir/status.json``."""

    task: RunTask
    ok: bool
    """False when the executor saw the worker die (killed, cancelled, lost node, non-zero
    exit) after exhausting its retries; the run folder may still hold partial results."""
    message: str | None = None
    log_path: Path | None = None


class Executor(abc.ABC):
    """Starts run workers and reports when they stop. One instance per sweep invocation.

    ``Options`` is the executor's own frozen dataclass, made as every config is
    (:mod:`forgetscale.config.fields`): fields by ``config_field`` with their help and bounds,
    checked in ``__post_init__`` by ``check_fields(self, "", symbols=True)`` (fields named
    bare: the caller says where a value came from) plus what only this executor knows,
    raising :class:`forgetscale.errors.UserError`; its values come from the sweep file's
    ``executor: {NAME: {...}}`` block with command-line flags on top. Field ``FIELD`` is set
    on the command line as ``--NAME-FIELD=value`` (``--ray-address``); ``flag="--workers"``
    names another flag for ``forgetscale sweep --help`` (the command itself knows
    ``--workers``). Values are typed by the field's annotation (int, float, str, bool,
    list[...], X | None) before the dataclass is built.
    The constructor must fail fast with one ``UserError`` line when the executor cannot work
    here (extra not installed: name the ``pip install "forgetscale[NAME]"`` command; cluster
    unreachable; no Slurm on the machine), before the driver starts anything.
    """

    name: ClassVar[str]
    Options: ClassVar[type]

    def __init__(self, options: Any, sweep_dir: Path):
        self.options = options
        self.sweep_dir = sweep_dir

    def start(self) -> None:  # noqa: B027 - optional
        """Called once before :meth:`build_references` and the first run: start what takes a
        while (worker processes, a cluster connection) so it overlaps the driver's planning."""

    def build_references(
        self, configs: list[TrainConfig], resources: Resources, log: Callable[[str], None]
    ) -> None:
        """Find or build the reference cache of every run in ``configs`` before any run is
        submitted (:func:`forgetscale.sweep.references.build_references`), where the runs
        run and with their ``resources`` (:func:`forgetscale.sweep.references.build_here`
        there): the local executor's first worker, a Ray task, a Slurm job. This default
        builds them in the driver's own process, which only an executor that runs on the
        driver's machine may keep (a login node does not load the model)."""
        from forgetscale.sweep.references import build_references

        build_references(configs, log)

    @abc.abstractmethod
    def submit(self, task: RunTask) -> None:
        """Start (or queue) the worker for ``task``; returns at once."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> list[Finished]:
        """Block until at least one submitted run stopped (or ``timeout`` seconds passed) and
        return the runs that stopped since the last call (possibly none on a timeout)."""

    @abc.abstractmethod
    def pending(self) -> int:
        """Runs submitted and not yet returned by :meth:`wait`."""

    def capacity(self) -> int | None:
        """How many runs to keep submitted at once (None = all of them; the cluster queues)."""
        return None

    def cancel_all(self) -> None:  # noqa: B027 - optional
        """Stop every worker this executor started (driver interrupted by the user)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release what the executor holds (a Ray connection, a local Ray it started)."""

    def describe(self) -> str:
        return self.name
