"""The Ray executor: one Ray task per run, on an existing Ray cluster or a local Ray.

``address`` (``--ray-address``) ``auto`` or ``HOST:PORT`` (or ``ray://HOST:PORT`` through Ray
Client) joins a running cluster; left unset, a local Ray is started for the sweep and shut down
when the sweep ends. Each run is a task asking for the run's ``cpus``/``gpus`` (the sweep's
``resources:``); Ray places it on a node that has them. A worker that dies (killed, out of
memory, its node lost) is retried up to ``max_retries`` times: the run folder holds the run's
checkpoint, so the retry resumes from it rather than starting over.

The workers import forgetscale themselves: every node needs the same Python environment as the
driver (forgetscale installed, or the driver's source folder on a shared file system, which is
put on the workers' ``PYTHONPATH``; anything else through ``runtime_env``).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetscale.config.fields import check_fields, config_field
from forgetscale.errors import UserError
from forgetscale.sweep.executors._remote import WORKER_FILE, note_worker, source_path
from forgetscale.sweep.executors.base import Executor, Finished, Resources, RunTask
from forgetscale.sweep.folders import LOG

INSTALL = 'the ray executor needs Ray: pip install "forgetscale[ray]"'


@dataclass(frozen=True)
class RayOptions:
    """Options of the ``ray`` executor (sweep file ``executor: {ray: {...}}``, or
    ``--ray-<option>`` on the command line)."""

    address: str | None = config_field(
        None,
        "Ray cluster to run on: 'auto' (the cluster this machine belongs to, or RAY_ADDRESS), "
        "HOST:PORT of its head node (GCS port, 6379 by default), or ray://HOST:PORT (Ray "
        "Client). Unset: start a local Ray for this sweep and stop it at the end.",
    )
    num_cpus: int | None = config_field(
        None, "CPUs of the local Ray (unset: all of this machine's). Local Ray only.", ge=1
    )
    num_gpus: int | None = config_field(
        None, "GPUs of the local Ray (unset: those CUDA shows). Local Ray only.", ge=0
    )
    max_retries: int = config_field(
        3,
        "How many times a run whose worker died (killed, out of memory, node lost) is started "
        "again; it resumes from its checkpoint.",
        ge=0,
    )
    connect_timeout_s: float = config_field(
        10.0, "Seconds to wait for the cluster's head node before giving up.", gt=0
    )
    threads: int | None = config_field(None, "torch threads per run (unset: the run's cpus).", ge=1)
    runtime_env: dict[str, Any] = config_field(
        {},
        "Ray runtime_env for the workers (e.g. {pip: [...]} or {env_vars: {...}}); "
        "forgetscale's source folder, when it runs from one, is put first on PYTHONPATH.",
    )
    include_dashboard: bool = config_field(False, "Start Ray's dashboard with the local Ray.")

    def __post_init__(self) -> None:
        check_fields(self, "", symbols=True)
        if self.address is not None and self.address not in ("auto", "local"):
            hostport = self.address.removeprefix("ray://")
            host, sep, port = hostport.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UserError(
                    f"address must be 'auto', HOST:PORT or ray://HOST:PORT, got {self.address!r}"
                )
        if self.address not in (None, "local") and (self.num_cpus or self.num_gpus is not None):
            raise UserError("num_cpus/num_gpus size a local Ray; an existing cluster has its own")

    @property
    def local(self) -> bool:
        return self.address in (None, "local")


def _run_task(run_dir: str, threads: int | None) -> dict[str, Any]:
    """The body of one Ray task: note the worker, then train the run folder."""
    from forgetscale.sweep.worker import run_folder

    note_worker(run_dir, "ray", node_ip=_node_ip())
    return run_folder(run_dir, threads=threads)


def _reference_task(configs: list[dict[str, Any]], threads: int | None) -> dict[str, Any]:
    """The body of the Ray task that builds a sweep's references where its runs run."""
    from forgetscale.sweep.references import build_here

    return build_here(configs, threads=threads)


def _node_ip() -> str | None:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:
        return None


class RayExecutor(Executor):
    """Runs each run as a Ray task (see the module's docstring)."""

    name = "ray"
    Options = RayOptions

    def __init__(self, options: RayOptions, sweep_dir: Path):
        super().__init__(options, sweep_dir)
        try:
            import ray
        except ImportError:
            raise UserError(INSTALL) from None
        self._ray = ray
        self._refs: dict[Any, RunTask] = {}
        self._started_local = False
        self._owns_connection = False
        self._remote = None
        self._connect()

    # -- connection ------------------------------------------------------------------------
    def _runtime_env(self) -> dict[str, Any]:
        env = dict(self.options.runtime_env)
        src = source_path()
        if src:
            env_vars = dict(env.get("env_vars") or {})
            if "PYTHONPATH" not in env_vars:
                env_vars["PYTHONPATH"] = src + os.pathsep + "${PYTHONPATH}"
            env["env_vars"] = env_vars
        return env

    def _connect(self) -> None:
        ray, opts = self._ray, self.options
        if ray.is_initialized():  # a caller's own connection (e.g. a notebook): use it as is
            return
        address = opts.address
        target = os.environ.get("RAY_ADDRESS") or None if address == "auto" else address
        if not opts.local and target and target != "auto" and ":" in target:
            self._probe(target.removeprefix("ray://"), opts.connect_timeout_s)
        kwargs: dict[str, Any] = dict(
            runtime_env=self._runtime_env() or None,
            log_to_driver=False,
            configure_logging=True,
            logging_level="ERROR",
        )
        if opts.local:
            kwargs.update(
                address="local",
                num_cpus=opts.num_cpus,
                num_gpus=opts.num_gpus,
                include_dashboard=opts.include_dashboard,
                # runs return a small dict: the object store needs little room
                object_store_memory=128 * 1024**2,
            )
        else:
            kwargs["address"] = address
        # Ray lets RAY_ADDRESS override the address it is given: the option given wins here
        saved = os.environ.pop("RAY_ADDRESS", None)
        if address == "auto" and saved:
            os.environ["RAY_ADDRESS"] = saved
        try:
            ray.init(**kwargs)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = "start a local Ray" if opts.local else f"connect to Ray at {address}"
            raise UserError(f"cannot {where}: {first}") from None
        finally:
            if saved is not None:
                os.environ["RAY_ADDRESS"] = saved
        self._started_local = opts.local
        self._owns_connection = True

    @staticmethod
    def _probe(hostport: str, timeout: float) -> None:
        """Fail fast, with one line, when nothing listens at the head node's address (Ray
        itself would retry for a minute or more)."""
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            return  # not HOST:PORT (e.g. a RAY_ADDRESS URL): Ray itself says what is wrong
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise UserError(
                f"cannot reach the Ray cluster at {hostport}: {reason} (is `ray start --head` "
                "running there, and is this its GCS port?)"
            ) from None

    def describe(self) -> str:
        try:
            res = self._ray.cluster_resources()
        except Exception:
            res = {}
        what = f"{int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs"
        if self._started_local:
            return f"ray (local, {what})"
        return f"ray at {self.options.address} ({what})"

    # -- runs --------------------------------------------------------------------------------
    def _task_function(self):
        if self._remote is None:
            self._remote = self._ray.remote(_run_task)
        return self._remote

    def _task_options(self, r: Resources, name: str) -> dict[str, Any]:
        """Ray options of a task with the runs' resources (checked against a local Ray)."""
        if self._started_local:
            res = self._ray.cluster_resources()
            for what, need, have in (
                ("CPUs", r.cpus, res.get("CPU", 0)),
                ("GPUs", r.gpus, res.get("GPU", 0)),
            ):
                if need > have:
                    raise UserError(
                        f"a run asks for {need} {what} but the local Ray has {int(have)}"
                    )
        opts: dict[str, Any] = dict(
            num_cpus=r.cpus,
            num_gpus=r.gpus,
            max_retries=self.options.max_retries,
            retry_exceptions=False,
            name=name,
        )
        if r.memory_gb:
            opts["memory"] = int(r.memory_gb * 1024**3)
        return opts

    def build_references(self, configs, resources, log) -> None:
        """Build the references in a Ray task with the runs' resources (on a GPU node when the
        runs ask for GPUs), not in the driver."""
        from forgetscale.sweep.references import check_answer

        opts = self._task_options(resources, "forgetscale references")
        threads = self.options.threads or resources.cpus
        task = self._ray.remote(_reference_task).options(**opts)
        ref = task.remote([c.to_dict() for c in configs], threads)
        try:
            answer = self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            raise RuntimeError(
                f"the Ray task building the reference failed: {_why(exc, self.options.max_retries)}"
            ) from None
        except BaseException:
            self._ray.cancel(ref, force=True)
            raise
        for line in answer.get("lines", []):
            log(line)
        check_answer(answer, "the task's traceback is in the Ray worker logs")

    def submit(self, task: RunTask) -> None:
        r = task.resources
        opts = self._task_options(r, f"forgetscale {task.label or task.run_id}")
        threads = self.options.threads or r.cpus
        ref = self._task_function().options(**opts).remote(str(task.run_dir), threads)
        self._refs[ref] = task

    def pending(self) -> int:
        return len(self._refs)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        if not self._refs:
            if timeout:
                time.sleep(min(timeout, 0.1))
            return []
        ray = self._ray
        refs = list(self._refs)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if not ready:
            return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done = []
        for ref in ready:
            task = self._refs.pop(ref)
            log = task.run_dir / LOG
            try:
                ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                done.append(Finished(task, False, "cancelled", log))
            except ray.exceptions.RayError as exc:
                done.append(Finished(task, False, _why(exc, self.options.max_retries), log))
            else:
                done.append(Finished(task, True, None, log))
        return done

    def cancel_all(self) -> None:
        for ref in list(self._refs):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:
                pass

    def close(self) -> None:
        if self._owns_connection and self._ray.is_initialized():
            self._ray.shutdown()  # stops the local Ray; leaves a cluster's Ray running
        self._owns_connection = False
        self._refs.clear()


def _why(exc: Exception, retries: int) -> str:
    """One line saying why a Ray task failed for good."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()
    first = next((t for t in text if t.strip()), "")
    if "WorkerCrashed" in name or "NodeDied" in name or "OutOfMemory" in name:
        return f"the worker died {retries + 1} times ({name}): {first}"
    return f"{name}: {first}"


EXECUTOR = RayExecutor

__all__ = ["EXECUTOR", "RayExecutor", "RayOptions", "WORKER_FILE"]
