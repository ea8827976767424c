"""The Slurm executor on a real single-node Slurm cluster (no mocks).

The cluster is the project's own: ``bash scripts/local-slurm.sh start`` (munged, mariadb +
slurmdbd, slurmctld, slurmd; `.ci/run` starts it before the tests and stops it after). Without
it the cluster tests are skipped, except in CI (``CI=true``), where a missing cluster fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweep_runs import (
    checkpoint_steps,
    config_of,
    copy_run,
    make_inputs,
    make_run,
    max_difference,
    measurements,
    status,
    wait_all,
    wait_for,
    worker_env,
    write_sweep_file,
)

pytest.importorskip(
    "submitit", reason='submitit is not installed (pip install "forgetscale[slurm]")'
)

from forgetscale.errors import UserError  # noqa: E402
from forgetscale.sweep.executors import get_executor  # noqa: E402
from forgetscale.sweep.executors._remote import WORKER_FILE  # noqa: E402
from forgetscale.sweep.executors.base import Resources  # noqa: E402
from forgetscale.sweep.worker import run_folder  # noqa: E402

SlurmExecutor = get_executor("slurm")
LONG = dict(max_steps=400, eval_steps=[0, 1, 50, 100, 150, 200, 250, 300, 350, 400])
START = "bash scripts/local-slurm.sh start"


def _slurm_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return f"Slurm is not installed here (no sbatch on PATH; `{START}` installs and starts it)"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return f"Slurm's controller does not answer (start it: `{START}`)"
    if out.returncode != 0:
        last = out.stderr.strip().splitlines()[-1:] or ["no answer"]
        return f"Slurm is not running ({last[0][:120]}; start it: `{START}`)"
    if not any(s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split()):
        return f"no Slurm node is up (sinfo: {out.stdout.strip()!r})"
    return None


@pytest.fixture(scope="module")
def slurm():
    """The local Slurm cluster; skips (fails in CI) when it is not running."""
    problem = _slurm_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests: {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="module")
def sweep_inputs(tmp_path_factory, tiny_model_dir, general_jsonl):
    return make_inputs(tmp_path_factory.mktemp("inputs"), tiny_model_dir, general_jsonl)


def _options(**kw):
    return SlurmExecutor.Options(poll_interval_s=1, time_limit_min=10, **kw)


def _job_id(run) -> str:
    return json.loads((run.run_dir / "slurm.json").read_text())["job_id"]


def _state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def _queued_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True)
    return out.stdout.split()


# ------------------------------------------------------------------------------------------
# the runs on the cluster


def test_four_runs_as_one_array_match_local_runs(tmp_path, sweep_inputs, slurm):
    """4 tiny runs go out as one job array; their measurements equal run_folder's in this
    process; a second executor (a restarted driver) follows the same jobs instead of
    submitting them again."""
    runs = [make_run(tmp_path / "slurm", sweep_inputs, f"rank={r}-seed={s}", rank=r, seed=s)
            for r in (2, 4) for s in (0, 1)]  # fmt: skip
    local = [copy_run(run, tmp_path / "local") for run in runs]

    executor = SlurmExecutor(_options(array_parallelism=2), tmp_path)
    assert "partition debug" in executor.describe()
    # the shared reference, built in one Slurm job with the runs' resources (not the driver)
    lines: list[str] = []
    executor.build_references([config_of(r) for r in runs], Resources(), lines.append)
    assert "Slurm job" in lines[0]
    assert sum("reference: building" in line for line in lines) == 1
    assert len(list(sweep_inputs.references.glob("ref-*.safetensors"))) == 1
    for run in runs:
        executor.submit(run)
    assert executor.pending() == 4
    assert executor.wait(timeout=0) == []  # submits the array
    job_ids = [_job_id(run) for run in runs]
    array = {j.split("_")[0] for j in job_ids}
    assert len(array) == 1 and sorted(j.split("_")[1] for j in job_ids) == ["0", "1", "2", "3"]

    again = SlurmExecutor(_options(), tmp_path)  # the driver killed and started again
    for run in runs:
        again.submit(run)
    again.wait(timeout=0)
    attached = set(again._jobs)
    done = wait_all(again, 4, timeout=300)
    assert all(f.ok for f in done), [(f.message, f.log_path) for f in done]
    assert attached == set(job_ids)  # followed, not submitted twice
    for run in runs:
        assert status(run)["status"] == "finished"
        assert json.loads((run.run_dir / WORKER_FILE).read_text())["starts"] == 1
    for loc in local:  # they find the reference the Slurm job built
        run_folder(loc.run_dir, threads=1)
    diffs = [max_difference(loc, run) for run, loc in zip(runs, local, strict=True)]
    print(f"slurm vs local run_folder: max abs difference {max(diffs)}")
    assert max(diffs) <= 1e-5


def test_preempted_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path, sweep_inputs, slurm):
    """SIGUSR2, as Slurm sends before a time limit or on preemption (submitit's own test does
    the same): the job checkpoints its callable, requeues itself, and the requeued job resumes
    the run from the training checkpoint in the run folder."""
    run = make_run(tmp_path / "slurm", sweep_inputs, "preempted", seed=5, **LONG)
    local = copy_run(run, tmp_path / "local")
    run_folder(local.run_dir, threads=1)

    executor = SlurmExecutor(_options(), tmp_path)
    executor.submit(run)
    executor.wait(timeout=0)
    job = _job_id(run)
    wait_for(lambda: any(s >= 50 for s in checkpoint_steps(run)), 240, "a checkpoint", 0.01)
    assert not (run.run_dir / "status.json").exists(), "the run finished before the signal"
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    # Slurm holds a requeued job for 2 minutes (its begin time); release it at once
    wait_for(lambda: _state(job) == "PENDING", 60, "the job to be requeued", 0.1)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    (finished,) = wait_all(executor, 1, timeout=300)
    assert finished.ok, (finished.message, finished.log_path)
    info = json.loads((run.run_dir / WORKER_FILE).read_text())
    assert info["starts"] == 2 and info["job_id"] == job
    assert "resuming from the checkpoint at step" in (run.run_dir / "log.txt").read_text()
    log = finished.log_path.read_text()
    assert "Caught signal SIGUSR2" in log and f"Requeued job {job}" in log
    assert status(run)["status"] == "finished"
    diff = max_difference(local, run)
    print(f"requeued on Slurm vs uninterrupted local: max abs difference {diff}")
    assert diff <= 1e-5


def test_a_job_out_of_requeues_ends_the_run_as_failed(tmp_path, sweep_inputs, slurm):
    """max_timeouts=0: the time-limit warning is not followed by a requeue; the run stops and
    its folder says why (the driver reports it; a rerun resumes from the checkpoint)."""
    run = make_run(tmp_path / "slurm", sweep_inputs, "out-of-time", seed=9, **LONG)
    executor = SlurmExecutor(_options(max_timeouts=0), tmp_path)
    executor.submit(run)
    executor.wait(timeout=0)
    wait_for(lambda: checkpoint_steps(run), 240, "a checkpoint", 0.01)
    subprocess.run(["scancel", "--signal=USR2", _job_id(run)], check=True)
    (finished,) = wait_all(executor, 1, timeout=120)
    final = status(run)
    assert final["status"] == "failed" and "timed-out too many times" in final["message"]
    assert "Job not requeued because: timed-out too many times" in finished.log_path.read_text()


def test_cancelled_job_is_reported_failed_and_a_rerun_completes_it(tmp_path, sweep_inputs, slurm):
    # long enough to outlast the ~5 s a cancelled job's processes take to die here (submitit
    # ignores SIGTERM): cancelled right after its step-1 checkpoint
    run = make_run(tmp_path / "slurm", sweep_inputs, "cancelled", seed=6, max_steps=2000,
                   eval_steps=[0, 1, 1000, 2000])  # fmt: skip

    executor = SlurmExecutor(_options(), tmp_path)
    executor.submit(run)
    executor.wait(timeout=0)
    job = _job_id(run)
    wait_for(lambda: checkpoint_steps(run), 240, "a checkpoint", 0.01)
    subprocess.run(["scancel", job], check=True)
    (finished,) = wait_all(executor, 1, timeout=120)
    assert not (run.run_dir / "status.json").exists(), "the run finished before it was killed"
    assert not finished.ok
    assert finished.message == f"Slurm job {job} CANCELLED"
    assert finished.log_path.is_file() and job in finished.log_path.name

    rerun = SlurmExecutor(_options(), tmp_path)  # the sweep run again
    rerun.submit(run)
    (finished,) = wait_all(rerun, 1, timeout=300)
    assert finished.ok, (finished.message, finished.log_path)
    assert _job_id(run) != job
    assert "resuming from the checkpoint at step" in (run.run_dir / "log.txt").read_text()
    assert status(run)["status"] == "finished"
    # each measurement once (the preemption test compares a resumed run with an uninterrupted one)
    assert measurements(run).step.tolist() == [0, 1, 1000, 2000]


def test_cancel_all_cancels_the_queued_jobs(tmp_path, sweep_inputs, slurm):
    runs = [make_run(tmp_path / "slurm", sweep_inputs, f"seed={s}", seed=s, max_steps=2000,
                     eval_steps=[0, 2000]) for s in (7, 8)]  # fmt: skip
    executor = SlurmExecutor(_options(), tmp_path)
    for run in runs:
        executor.submit(run)
    executor.wait(timeout=0)
    ids = {_job_id(run) for run in runs}
    executor.cancel_all()
    done = wait_all(executor, 2, timeout=120)
    assert {f.task.label for f in done} == {"seed=7", "seed=8"} and not any(f.ok for f in done)
    assert not ids & set(_queued_jobs())


def test_unknown_partition_is_one_line(tmp_path, slurm):
    with pytest.raises(UserError, match="partition 'nope' does not exist here; partitions: debug"):
        SlurmExecutor(SlurmExecutor.Options(partition="nope"), tmp_path)


def test_sbatch_refusal_is_one_line(tmp_path, sweep_inputs, slurm):
    run = make_run(tmp_path / "slurm", sweep_inputs, "gpu")
    executor = SlurmExecutor(_options(gpus_per_run=1), tmp_path)  # this cluster has no GPU
    executor.submit(run)
    with pytest.raises(UserError, match="sbatch refused the jobs: .*gres") as err:
        executor.wait(timeout=0)
    assert "\n" not in str(err.value)


def test_a_warning_longer_than_the_time_limit_is_refused(tmp_path, sweep_inputs, slurm):
    run = make_run(tmp_path / "slurm", sweep_inputs, "short")
    executor = SlurmExecutor(SlurmExecutor.Options(time_limit_min=2), tmp_path)
    executor.submit(run)
    with pytest.raises(UserError, match=r"signal_delay_s \(120\) must be shorter"):
        executor.wait(timeout=0)
    assert not (run.run_dir / "slurm.json").exists()


def test_a_job_that_can_never_start_is_reported_not_awaited(tmp_path, sweep_inputs, slurm):
    run = make_run(tmp_path / "slurm", sweep_inputs, "too-big")
    executor = SlurmExecutor(_options(cpus_per_run=4096), tmp_path)  # accepted, never runnable
    executor.submit(run)
    (finished,) = wait_all(executor, 1, timeout=60)
    assert not finished.ok
    assert "can never start here (Slurm: PartitionConfig" in finished.message
    assert _job_id(run) not in _queued_jobs()


# ------------------------------------------------------------------------------------------
# no Slurm here, bad options, no submitit: one line, nothing started

NO_SLURM = (
    "import sys\n"
    "from pathlib import Path\n"
    "from forgetscale.errors import UserError\n"
    "from forgetscale.sweep.executors import get_executor\n"
    "E = get_executor('slurm')\n"
    "try:\n"
    "    E(E.Options(**eval(sys.argv[1])), Path('.'))\n"
    "except UserError as e:\n"
    "    print(f'error: {e}', file=sys.stderr)\n"
    "    sys.exit(2)\n"
)


def _without_slurm_env() -> dict[str, str]:
    """This environment with every PATH folder that holds sbatch left out."""
    env = worker_env()
    keep = [
        d for d in env.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "sbatch").exists()
    ]
    env["PATH"] = os.pathsep.join(keep)
    return env


def test_no_slurm_on_the_machine_is_one_line_exit_2(tmp_path):
    env = _without_slurm_env()
    out = subprocess.run([sys.executable, "-c", NO_SLURM, "{}"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: no Slurm on this machine: `sbatch` is not on PATH")


def test_no_slurm_through_the_sweep_command(tmp_path, sweep_inputs):
    """The same through `forgetscale sweep --executor slurm` once the command exists."""
    from forgetscale import cli

    if "sweep" not in cli.COMMAND_MODULES:
        pytest.skip("`forgetscale sweep` is not on this branch")
    write_sweep_file(tmp_path, sweep_inputs)
    out = subprocess.run(
        [sys.executable, "-m", "forgetscale", "sweep", "sweep.yaml", "--executor", "slurm"],
        env=_without_slurm_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "no Slurm on this machine" in out.stderr


def test_unreachable_controller_is_one_line(tmp_path):
    """sbatch is there but the controller is not (a Slurm config naming a port nobody serves)."""
    if shutil.which("sinfo") is None:
        pytest.skip(f"Slurm's client commands are not installed (`{START}` installs them)")
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=nowhere\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=1\n"
        "AuthType=auth/munge\nNodeName=localhost CPUs=1\nPartitionName=p Nodes=ALL\n"
    )
    env = dict(worker_env(), SLURM_CONF=str(conf))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", NO_SLURM, "{'command_timeout_s': 3}"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert time.perf_counter() - t0 < 30
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "Slurm's controller does not answer" in out.stderr


@pytest.mark.parametrize(
    "values, words",
    [
        ({"partition": ""}, "partition"),
        ({"time_limit_min": 0}, "time_limit_min"),
        ({"array_parallelism": 1.5}, "array_parallelism"),
        ({"mem_gb": -1}, "mem_gb"),
        ({"additional_parameters": ["exclusive"]}, "additional_parameters"),
        ({"setup": "module load cuda"}, "setup"),
        ({"poll_interval_s": 0}, "poll_interval_s"),
    ],
)
def test_bad_options_are_refused(values, words):
    with pytest.raises(UserError, match=words):
        SlurmExecutor.Options(**values)


def test_missing_submitit_names_the_install_command(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "submitit.py").write_text("raise ImportError('no submitit here')\n")
    env = worker_env()
    env["PYTHONPATH"] = f"{fake}{os.pathsep}{env['PYTHONPATH']}"
    out = subprocess.run([sys.executable, "-c", NO_SLURM, "{}"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert (
        out.stderr == 'error: the slurm executor needs submitit: pip install "forgetscale[slurm]"\n'
    )


def test_sacct_lines_are_read_per_array_task():
    from forgetscale.sweep.executors.slurm import _sacct_table

    text = "16|CANCELLED by 0\n17_[2-3%2]|PENDING\n17_0|RUNNING\n18_1|COMPLETED\n18_1.batch|COMPLETED\n"
    assert _sacct_table(text) == {
        "16": "CANCELLED",
        "17_2": "PENDING",
        "17_3": "PENDING",
        "17_0": "RUNNING",
        "18_1": "COMPLETED",
    }


def test_a_bad_reference_is_the_one_line_the_reference_job_answered(tmp_path, sweep_inputs, slurm):
    from forgetscale.config import build_config

    run = make_run(tmp_path / "bad", sweep_inputs, "rank=2", rank=2)
    garbage = tmp_path / "not-a-reference.safetensors"
    garbage.write_bytes(b"garbage")
    config = build_config(config_of(run).to_dict() | {"reference": str(garbage)})
    executor = SlurmExecutor(_options(), tmp_path)
    with pytest.raises(UserError, match="not-a-reference"):
        executor.build_references([config], Resources(), lambda line: None)
