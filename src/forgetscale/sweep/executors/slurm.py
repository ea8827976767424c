"""The Slurm executor: one Slurm job per run, submitted through submitit as job arrays.

Runs submitted together with the same resources become one job array (``--array=0-N%P``, P =
``array_parallelism``), each array task training one run folder with the run's CPUs, GPUs,
memory and time limit (the sweep's ``resources:``, or this executor's options), in
``partition``, plus any other sbatch option (``additional_parameters``).

The job's callable (:class:`SlurmRun`) is a ``submitit.helpers.Checkpointable``: when Slurm
warns a job that its time is nearly up (``--signal=USR2@signal_delay_s``) or that it is
preempted, submitit requeues it (up to ``max_timeouts`` times after time-outs) and the requeued
job starts the same run folder again, which resumes from the training checkpoint already there.
A job that ends without a result (cancelled with ``scancel``, killed, out of memory, node
failure) is reported as failed with the path of its log; a run out of requeues stops and its
``status.json`` says so. Running the sweep again resumes either from its checkpoint.

Logs, sbatch scripts and submitit's files go to ``log_dir`` (default ``SWEEP_DIR/slurm``), one
folder per job; each run folder's ``slurm.json`` names its job and log files. The sweep folder
must be on a file system that the compute nodes see (as for any submitit job), and the nodes
need the same Python environment as the driver (``python``, ``setup``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetscale.config.fields import check_fields, config_field
from forgetscale.errors import UserError
from forgetscale.sweep.executors._remote import note_worker, source_path
from forgetscale.sweep.executors.base import Executor, Finished, Resources, RunTask
from forgetscale.sweep.folders import STATUS

INSTALL = 'the slurm executor needs submitit: pip install "forgetscale[slurm]"'
JOB_FILE = "slurm.json"
# Slurm states of a job that is not over (a requeued job passes through several)
ACTIVE = {
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "COMPLETING", "CONFIGURING",
    "RESIZING", "SUSPENDED", "PREEMPTED", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD", "UNKNOWN",
}  # fmt: skip

# reasons of a pending job that mean it will never start (nothing to wait for)
NEVER = {
    "PartitionConfig": "the partition cannot give it the CPUs/GPUs/memory it asks for",
    "PartitionTimeLimit": "its time limit exceeds the partition's",
    "PartitionNodeLimit": "it asks for more nodes than the partition has",
    "BadConstraints": "no node satisfies its constraints",
    "InvalidAccount": "invalid account",
    "InvalidQOS": "invalid QOS",
}

try:  # the job's callable is a submitit Checkpointable when submitit is there (always in a job)
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - the executor then refuses to start
    _Checkpointable = object  # type: ignore[assignment,misc]


@dataclass(frozen=True)
class SlurmOptions:
    """Options of the ``slurm`` executor (sweep file ``executor: {slurm: {...}}``, or
    ``--slurm-<option>`` on the command line)."""

    partition: str | None = config_field(
        None, "Slurm partition (unset: the cluster's default).", nonempty=True
    )
    account: str | None = config_field(None, "sbatch --account.", nonempty=True)
    qos: str | None = config_field(None, "sbatch --qos.", nonempty=True)
    time_limit_min: int | None = config_field(
        None,
        "Time limit of each job in minutes (unset: the sweep's resources, else 240). A run "
        "that needs longer is requeued and resumes from its checkpoint.",
        ge=1,
    )
    cpus_per_run: int | None = config_field(
        None, "CPUs per job (unset: the sweep's resources).", ge=1
    )
    gpus_per_run: int | None = config_field(
        None, "GPUs per job (unset: the sweep's resources).", ge=0
    )
    mem_gb: float | None = config_field(
        None, "Memory per job in GB (unset: the sweep's resources, else Slurm's default).", gt=0
    )
    array_parallelism: int = config_field(
        64, "At most this many jobs of one array run at the same time.", ge=1
    )
    max_timeouts: int = config_field(
        3, "How many times a job that reached its time limit is requeued.", ge=0
    )
    signal_delay_s: int = config_field(
        120,
        "Seconds before the time limit at which Slurm warns the job (SIGUSR2) so that it is "
        "requeued in time.",
        ge=0,
    )
    additional_parameters: dict[str, str | int | float | bool] = config_field(
        {},
        "Other sbatch options, e.g. {constraint: a100, exclusive: true, 'mail-type': END}; "
        "they override the ones above.",
    )
    setup: list[str] = config_field(
        [],
        "Shell lines run in each job before the run (e.g. 'module load cuda', "
        "'source ~/venv/bin/activate').",
    )
    python: str | None = config_field(
        None, "Python command on the compute nodes (unset: this interpreter).", nonempty=True
    )
    log_dir: str | None = config_field(
        None, "Folder for the jobs' logs and scripts (unset: SWEEP_DIR/slurm).", nonempty=True
    )
    job_name: str = config_field("forgetscale", "Slurm job name.", nonempty=True)
    poll_interval_s: float = config_field(
        10.0, "Seconds between two looks at the queue (sacct/squeue).", gt=0
    )
    command_timeout_s: float = config_field(
        20.0, "Seconds to wait for Slurm commands (sinfo, sacct) to answer.", gt=0
    )

    def __post_init__(self) -> None:
        check_fields(self, "", symbols=True)


class SlurmReferences:
    """What the Slurm job that builds a sweep's references runs (on a compute node, with the
    runs' resources, not on the login node the driver runs on)."""

    def __init__(self, configs: list[dict[str, Any]], threads: int | None = None):
        self.configs = configs
        self.threads = threads

    def __call__(self) -> dict[str, Any]:
        from forgetscale.sweep.references import build_here

        return build_here(self.configs, threads=self.threads)


class SlurmRun(_Checkpointable):
    """What a Slurm job runs: train one run folder (resuming from its checkpoint).

    On preemption or time-out submitit calls :meth:`checkpoint` and requeues the job with the
    returned submission, i.e. this same object: the run folder holds the training checkpoint,
    so nothing else needs saving.
    """

    def __init__(self, run_dir: str, threads: int | None = None):
        self.run_dir = run_dir
        self.threads = threads

    def __call__(self) -> dict[str, Any]:
        from forgetscale.sweep.worker import run_folder

        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = (
            f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get("SLURM_JOB_ID")
        )
        note_worker(
            self.run_dir, "slurm", job_id=job, restarts=os.environ.get("SLURM_RESTART_COUNT")
        )
        # an earlier attempt that was preempted wrote status.json on its way out: not the end
        (Path(self.run_dir) / STATUS).unlink(missing_ok=True)
        return run_folder(self.run_dir, threads=self.threads)

    def checkpoint(self, *args: Any, **kwargs: Any):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no answer"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


class SlurmExecutor(Executor):
    """Runs each run as a Slurm job through submitit (see the module's docstring)."""

    name = "slurm"
    Options = SlurmOptions

    def __init__(self, options: SlurmOptions, sweep_dir: Path):
        super().__init__(options, sweep_dir)
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UserError(INSTALL) from None
        self._check_slurm()
        self.log_dir = Path(options.log_dir) if options.log_dir else Path(sweep_dir) / "slurm"
        self._buffer: list[RunTask] = []
        self._jobs: dict[str, tuple[RunTask, Any]] = {}  # job id -> (task, submitit job)
        self._last_poll = 0.0
        self._last_states: dict[str, str] = {}

    # -- checks ----------------------------------------------------------------------------
    def _check_slurm(self) -> None:
        opts = self.options
        for tool in ("sbatch", "srun", "sinfo", "squeue", "scancel"):
            if shutil.which(tool) is None:
                raise UserError(
                    f"no Slurm on this machine: `{tool}` is not on PATH (run the sweep where "
                    "jobs can be submitted, e.g. a login node, or choose another executor)"
                )
        try:
            out = _run(["sinfo", "-h", "-o", "%P"], opts.command_timeout_s)
        except subprocess.TimeoutExpired:
            raise UserError(
                f"Slurm's controller does not answer (sinfo timed out after "
                f"{opts.command_timeout_s:g}s)"
            ) from None
        if out.returncode != 0:
            conf = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
            if not Path(conf).exists():
                raise UserError(
                    f"no Slurm on this machine: sbatch is installed but there is no {conf} "
                    "(set SLURM_CONF, or run the sweep on the cluster's login node)"
                )
            raise UserError(f"Slurm's controller does not answer: {_last_line(out.stderr)}")
        partitions = [p.strip() for p in out.stdout.split()]
        names = [p.rstrip("*") for p in partitions]
        self.partition = opts.partition or next(
            (p.rstrip("*") for p in partitions if p.endswith("*")), None
        )
        if opts.partition and opts.partition not in names:
            raise UserError(
                f"Slurm partition {opts.partition!r} does not exist here; partitions: "
                f"{', '.join(names) or 'none'}"
            )
        acct = _run(["sacct", "-n", "-X", "-j", "1", "-o", "JobID"], opts.command_timeout_s)
        # without accounting a finished job is only seen leaving the queue (no final state)
        self.accounting = acct.returncode == 0

    def describe(self) -> str:
        acct = "" if self.accounting else ", no accounting"
        return f"slurm (partition {self.partition or 'default'}{acct}, logs in {self.log_dir})"

    # -- submission ------------------------------------------------------------------------
    def submit(self, task: RunTask) -> None:
        attached = self._attach(task)
        if not attached:
            self._buffer.append(task)

    def _attach(self, task: RunTask) -> bool:
        """A job of an earlier driver that still trains (or waits to train) this run folder is
        followed instead of a second job being submitted."""
        from submitit import SlurmJob

        path = task.run_dir / JOB_FILE
        try:
            info = json.loads(path.read_text())
            job_id = str(info["job_id"])
        except (OSError, ValueError, KeyError):
            return False
        out = _run(["squeue", "-h", "-j", job_id, "-o", "%T"], self.options.command_timeout_s)
        if out.returncode != 0 or _first_line(out.stdout) not in ACTIVE - {"UNKNOWN"}:
            return False
        job = SlurmJob(folder=info["folder"], job_id=job_id, tasks=[0])
        self._jobs[job_id] = (task, job)
        return True

    def _executor(self, resources: Resources):
        import submitit

        opts = self.options
        ex = submitit.SlurmExecutor(
            folder=self.log_dir / "%j", max_num_timeout=opts.max_timeouts, python=opts.python
        )
        cpus = opts.cpus_per_run or resources.cpus
        gpus = opts.gpus_per_run if opts.gpus_per_run is not None else resources.gpus
        mem = opts.mem_gb or resources.memory_gb
        minutes = opts.time_limit_min or resources.time_limit_min or 240
        if opts.signal_delay_s >= minutes * 60:
            raise UserError(
                f"slurm signal_delay_s ({opts.signal_delay_s}) must be shorter than the time "
                f"limit ({minutes} min): the job would be warned, and requeued, at once"
            )
        params: dict[str, Any] = dict(
            job_name=opts.job_name,
            time=minutes,
            cpus_per_task=cpus,
            ntasks_per_node=1,
            signal_delay_s=opts.signal_delay_s,
            stderr_to_stdout=True,  # one log per job: submitit's lines, the run's, tracebacks
            array_parallelism=opts.array_parallelism,
            setup=self._setup_lines(cpus),
            additional_parameters=dict(opts.additional_parameters),
        )
        if gpus:
            params["gpus_per_node"] = gpus
        if mem:
            params["mem"] = float(mem)
        for name in ("partition", "account", "qos"):
            if getattr(opts, name):
                params[name] = getattr(opts, name)
        ex.update_parameters(**params)
        return ex, cpus

    def _setup_lines(self, cpus: int) -> list[str]:
        lines = list(self.options.setup)
        src = source_path()
        if src:  # the jobs run this forgetscale, as the driver does
            lines.append(f"export PYTHONPATH={shlex.quote(src)}${{PYTHONPATH:+:$PYTHONPATH}}")
        lines.append(f"export OMP_NUM_THREADS={cpus} MKL_NUM_THREADS={cpus}")
        return lines

    def build_references(self, configs, resources, log) -> None:
        """Build the references in one Slurm job with the runs' resources, and wait for it."""
        from submitit.core.utils import FailedJobError, FailedSubmissionError, UncompletedJobError

        from forgetscale.sweep.references import check_answer

        ex, cpus = self._executor(resources)
        try:
            job = ex.submit(SlurmReferences([c.to_dict() for c in configs], cpus))
        except (FailedSubmissionError, FailedJobError, subprocess.CalledProcessError) as exc:
            raise UserError(f"sbatch refused the jobs: {_sbatch_error(exc)}") from None
        log(f"reference: finding or building it in Slurm job {job.job_id} (log {job.paths.stdout})")
        try:
            answer = job.result()
        except (FailedJobError, UncompletedJobError) as exc:
            first = _first_line(str(exc)) or type(exc).__name__
            raise RuntimeError(
                f"Slurm job {job.job_id} building the reference failed: {first} "
                f"(log {job.paths.stdout})"
            ) from None
        except BaseException:
            job.cancel(check=False)
            raise
        for line in answer.get("lines", []):
            log(line)
        check_answer(answer, f"log {job.paths.stdout}")

    def _flush(self) -> None:
        """Submit the buffered runs: one job array per distinct set of resources."""
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        groups: dict[Resources, list[RunTask]] = {}
        for task in self._buffer:
            groups.setdefault(task.resources, []).append(task)
        self._buffer = []
        for resources, tasks in groups.items():
            ex, cpus = self._executor(resources)
            threads = cpus
            try:
                with ex.batch():
                    submitted = [ex.submit(SlurmRun(str(t.run_dir), threads)) for t in tasks]
            except (FailedSubmissionError, FailedJobError, subprocess.CalledProcessError) as exc:
                raise UserError(f"sbatch refused the jobs: {_sbatch_error(exc)}") from None
            for task, job in zip(tasks, submitted, strict=True):
                self._jobs[job.job_id] = (task, job)
                info = {
                    "job_id": job.job_id,
                    "folder": str(job.paths.folder),
                    "log": str(job.paths.stdout),
                    "submitted": time.time(),
                }
                (task.run_dir / JOB_FILE).write_text(json.dumps(info, indent=1))

    # -- waiting ---------------------------------------------------------------------------
    def pending(self) -> int:
        return len(self._buffer) + len(self._jobs)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        if self._buffer:
            self._flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._jobs:
            done = self._poll()
            if done:
                return done
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return []
            step = self.options.poll_interval_s - (time.monotonic() - self._last_poll)
            time.sleep(max(0.2, min(step, 1.0) if left is None else min(step, 1.0, left)))
        return []

    def _poll(self) -> list[Finished]:
        """The jobs that ended: a result file (cheap, every call) or, every poll interval, a
        final state in sacct (or gone from squeue when the cluster keeps no accounting)."""
        finished_ids = [jid for jid, (_, job) in self._jobs.items() if _has_result(job)]
        if not finished_ids and time.monotonic() - self._last_poll >= self.options.poll_interval_s:
            self._last_poll = time.monotonic()
            states = self._states()
            finished_ids = [
                jid
                for jid, (_, job) in self._jobs.items()
                if _has_result(job) or (jid in states and states[jid] not in ACTIVE)
            ]
        done = []
        for jid in finished_ids:
            task, job = self._jobs.pop(jid)
            done.append(self._finished(task, job, self._last_states.get(jid)))
        return done

    def _states(self) -> dict[str, str]:
        """Job id -> Slurm state (first word), for the jobs being followed."""
        ids = sorted({jid.split("_")[0] for jid in self._jobs})
        states: dict[str, str] = {}
        timeout = self.options.command_timeout_s
        if self.accounting:
            cmd = ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(ids)]
            out = _run(cmd, timeout)
            if out.returncode == 0:
                table = _sacct_table(out.stdout)
                for jid in self._jobs:
                    # an array cancelled before its tasks started has one record for them all
                    state = table.get(jid) or table.get(jid.split("_")[0])
                    if state:
                        states[jid] = state
        out = _run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(ids)], timeout)
        queued: dict[str, str] = {}
        if out.returncode == 0:
            for line in out.stdout.splitlines():
                jid, state, reason = (line.split("|") + ["", ""])[:3]
                queued[jid] = state.strip()
                if state.strip() == "PENDING" and reason.strip() in NEVER and jid in self._jobs:
                    # it would wait forever: end it and say why
                    _run(["scancel", jid], timeout)
                    queued[jid] = (
                        f"can never start here (Slurm: {reason.strip()}: {NEVER[reason.strip()]})"
                    )
            for jid in self._jobs:
                if jid in queued:
                    states[jid] = queued[jid]  # the queue is the fresher view
                elif time.time() - _submitted(self._jobs[jid][0]) > (
                    120 if self.accounting else 30
                ):
                    # out of the queue, no result, and (long enough) no final state in sacct
                    states.setdefault(jid, "LEFT_QUEUE")
        self._last_states = dict(states)
        return states

    def _finished(self, task: RunTask, job: Any, state: str | None) -> Finished:
        log = Path(job.paths.stdout)
        if _has_result(job):
            try:
                job.result()
            except Exception as exc:  # the job's Python raised (e.g. out of requeues)
                return Finished(
                    task, False, f"Slurm job {job.job_id}: {_first_line(str(exc))}", log
                )
            return Finished(task, True, None, log)
        what = state or "ended"
        if what == "LEFT_QUEUE":
            what = "left the queue without a result"
        return Finished(task, False, f"Slurm job {job.job_id} {what}", log)

    # -- stopping --------------------------------------------------------------------------
    def cancel_all(self) -> None:
        self._buffer = []
        ids = sorted({jid.split("_")[0] if "_" in jid else jid for jid in self._jobs})
        if ids:
            _run(["scancel", *ids], self.options.command_timeout_s)

    def close(self) -> None:
        self._buffer = []


def _sacct_table(text: str) -> dict[str, str]:
    """``sacct -P -o JobID,State`` lines -> job id (``123``, ``123_4``) -> first word of the
    state; array ranges (``123_[0-3%2]``) give one entry per task."""
    from submitit.slurm.slurm import read_job_id

    table: dict[str, str] = {}
    for line in text.splitlines():
        jid, _, state = line.partition("|")
        if not jid.strip() or "." in jid or not state.strip():
            continue
        state = state.split()[0]
        try:
            parts = read_job_id(jid.strip())
        except (ValueError, IndexError):
            continue
        for part in parts:
            if len(part) == 1:
                table[part[0]] = state
            elif len(part) == 2:
                table[f"{part[0]}_{part[1]}"] = state
            else:
                for index in range(int(part[1]), int(part[2]) + 1):
                    table[f"{part[0]}_{index}"] = state
    return table


def _has_result(job: Any) -> bool:
    return Path(job.paths.result_pickle).exists()


def _submitted(task: RunTask) -> float:
    try:
        return float(json.loads((task.run_dir / JOB_FILE).read_text())["submitted"])
    except (OSError, ValueError, KeyError):
        return 0.0


def _sbatch_error(exc: Exception) -> str:
    text = getattr(exc, "stderr", None) or getattr(exc, "output", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or [type(exc).__name__])[-1]


EXECUTOR = SlurmExecutor

__all__ = ["EXECUTOR", "JOB_FILE", "SlurmExecutor", "SlurmOptions", "SlurmRun"]
