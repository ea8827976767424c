"""The Ray executor on real Ray clusters (no mocks): a local Ray started for the sweep, and a
cluster started with ``ray start --head`` on the loopback address that the executor joins
by HOST:PORT, whose worker is killed mid-run and retried."""

from __future__ import annotations

import os
import signal
import socket
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
    status,
    wait_all,
    wait_for,
    worker_env,
    write_sweep_file,
)

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "forgetscale[ray]")')

from forgetscale.errors import UserError  # noqa: E402
from forgetscale.sweep.executors import get_executor  # noqa: E402
from forgetscale.sweep.executors._remote import WORKER_FILE  # noqa: E402
from forgetscale.sweep.executors.base import Resources  # noqa: E402
from forgetscale.sweep.worker import run_folder  # noqa: E402

RayExecutor = get_executor("ray")
LONG = dict(max_steps=400, eval_steps=[0, 1, 50, 100, 150, 200, 250, 300, 350, 400])


@pytest.fixture(scope="module")
def sweep_inputs(tmp_path_factory, tiny_model_dir, general_jsonl):
    return make_inputs(tmp_path_factory.mktemp("inputs"), tiny_model_dir, general_jsonl)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray cluster of its own (`ray start --head --block`, 2 CPUs, loopback, no dashboard);
    yields its HOST:PORT and stops it (SIGTERM to the process this fixture started)."""
    log = tmp_path_factory.mktemp("ray-head") / "ray-start.log"
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    cmd = [
        str(ray_bin), "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1",
        "--port", str(port),
        "--ray-client-server-port", str(_free_port()),
        "--dashboard-agent-listen-port", str(_free_port()),
        "--num-cpus", "2",
        "--include-dashboard", "false",
        "--disable-usage-stats",
    ]  # fmt: skip
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=worker_env(),
                                start_new_session=True)  # fmt: skip
    try:
        wait_for(
            lambda: "Ray runtime started" in log.read_text() or proc.poll() is not None,
            120,
            "ray start --head",
            interval=0.2,
        )
        if proc.poll() is not None:
            pytest.fail(f"ray start --head failed:\n{log.read_text()[-2000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)  # --block: drains, then stops the processes it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# bad input (first: before this module's Ray cluster starts): one line, before anything starts


def test_unreachable_address_is_one_line_and_fast(tmp_path):
    port = _free_port()  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        RayExecutor(RayExecutor.Options(address=f"127.0.0.1:{port}", connect_timeout_s=3), tmp_path)
    assert time.perf_counter() - t0 < 10
    message = str(err.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message
    assert not ray.is_initialized()


def test_auto_without_a_cluster_is_one_line(tmp_path, monkeypatch):
    from ray._private.services import find_gcs_addresses

    if find_gcs_addresses():  # 'auto' joins any Ray running on this machine
        pytest.skip("a Ray cluster runs on this machine: 'auto' would join it")
    monkeypatch.setenv("RAY_ADDRESS", "")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "no-ray-here"))  # no ray_current_cluster
    with pytest.raises(UserError) as err:
        RayExecutor(RayExecutor.Options(address="auto", connect_timeout_s=3), tmp_path)
    assert "\n" not in str(err.value) and "auto" in str(err.value)
    assert not ray.is_initialized()


def test_unreachable_address_through_the_sweep_command(tmp_path, sweep_inputs):
    """`forgetscale sweep --executor ray --ray-address HOST:PORT` (once the command exists)."""
    from forgetscale import cli

    if "sweep" not in cli.COMMAND_MODULES:
        pytest.skip("`forgetscale sweep` is not on this branch")
    write_sweep_file(tmp_path, sweep_inputs)
    port = _free_port()
    cmd = [sys.executable, "-m", "forgetscale", "sweep", "sweep.yaml", "--executor", "ray",
           "--ray-address", f"127.0.0.1:{port}"]  # fmt: skip
    out = subprocess.run(cmd, env=worker_env(), cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in out.stderr


@pytest.mark.parametrize(
    "values, words",
    [
        ({"address": "nohost"}, "HOST:PORT"),
        ({"address": "127.0.0.1:99999"}, "HOST:PORT"),
        ({"max_retries": -1}, "max_retries"),
        ({"num_cpus": 0}, "num_cpus"),
        ({"address": "auto", "num_cpus": 2}, "local Ray"),
        ({"connect_timeout_s": "soon"}, "connect_timeout_s"),
    ],
)
def test_bad_options_are_refused(values, words):
    with pytest.raises(UserError, match=words):
        RayExecutor.Options(**values)


def test_missing_ray_names_the_install_command(tmp_path):
    """With ray not importable (a module named ray that fails), the constructor says how to
    install it."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "ray.py").write_text("raise ImportError('no ray here')\n")
    code = (
        "from pathlib import Path\n"
        "from forgetscale.errors import UserError\n"
        "from forgetscale.sweep.executors import get_executor\n"
        "E = get_executor('ray')\n"
        "try:\n"
        "    E(E.Options(), Path('.'))\n"
        "except UserError as e:\n"
        "    print(e)\n"
    )
    env = worker_env()
    env["PYTHONPATH"] = f"{fake}{os.pathsep}{env['PYTHONPATH']}"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=tmp_path, check=True)  # fmt: skip
    assert out.stdout.strip() == 'the ray executor needs Ray: pip install "forgetscale[ray]"'


# ------------------------------------------------------------------------------------------
# real clusters


def test_local_ray_runs_four_runs_like_local_workers(tmp_path, sweep_inputs):
    """A local Ray started for the sweep runs 4 runs; each equals a plain local run; close()
    shuts that Ray down."""
    runs = [make_run(tmp_path / "ray", sweep_inputs, f"rank={r}-seed={s}", rank=r, seed=s)
            for r in (2, 4) for s in (0, 1)]  # fmt: skip
    local = copy_run(runs[0], tmp_path / "local")

    executor = RayExecutor(RayExecutor.Options(num_cpus=2), tmp_path)
    try:
        assert "local, 2 CPUs" in executor.describe()
        # the shared reference, built in a Ray task with the runs' resources (not the driver)
        lines: list[str] = []
        executor.build_references([config_of(r) for r in runs], Resources(), lines.append)
        assert sum("reference: building" in line for line in lines) == 1
        assert len(list(sweep_inputs.references.glob("ref-*.safetensors"))) == 1
        for run in runs:
            executor.submit(run)
        assert executor.pending() == 4
        done = wait_all(executor, 4, timeout=300)
    finally:
        executor.close()
    assert not ray.is_initialized()
    assert executor.pending() == 0
    assert sorted(f.task.label for f in done) == sorted(r.label for r in runs)
    assert all(f.ok for f in done), [f.message for f in done]
    for run in runs:
        assert status(run)["status"] == "finished"
        assert (run.run_dir / WORKER_FILE).is_file()
    run_folder(local.run_dir, threads=1)  # finds the reference the Ray task built
    diff = max_difference(local, runs[0])
    print(f"ray vs local run_folder: max abs difference {diff}")
    assert diff <= 1e-5


def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(tmp_path, sweep_inputs, ray_head):
    """SIGKILL the Ray worker that trains a run, after a checkpoint: Ray starts the task again,
    the run resumes from the checkpoint in its folder and ends with the uninterrupted run's
    measurements."""
    run = make_run(tmp_path / "ray", sweep_inputs, "killed", seed=3, **LONG)
    local = copy_run(run, tmp_path / "local")
    run_folder(local.run_dir, threads=1)

    executor = RayExecutor(RayExecutor.Options(address=ray_head, max_retries=2), tmp_path)
    try:
        assert executor.describe().startswith(f"ray at {ray_head}")
        executor.submit(run)
        wait_for(lambda: any(s >= 50 for s in checkpoint_steps(run)), 180, "a checkpoint",
                 interval=0.005)  # fmt: skip
        pid = _worker_pid(run)
        assert status_is_missing(run), "the run finished before it could be killed"
        os.kill(pid, signal.SIGKILL)
        (finished,) = wait_all(executor, 1, timeout=300)
    finally:
        executor.close()
    assert finished.ok, finished.message
    info = _worker_info(run)
    assert info["starts"] == 2 and info["pid"] != pid
    assert "resuming from the checkpoint at step" in (run.run_dir / "log.txt").read_text()
    assert status(run)["status"] == "finished"
    diff = max_difference(local, run)
    print(f"killed + retried on Ray vs uninterrupted local: max abs difference {diff}")
    assert diff <= 1e-5


def test_worker_killed_with_no_retries_left_is_reported_failed(tmp_path, sweep_inputs, ray_head):
    run = make_run(tmp_path / "ray", sweep_inputs, "no-retries", seed=4, **LONG)
    executor = RayExecutor(RayExecutor.Options(address=ray_head, max_retries=0), tmp_path)
    try:
        executor.submit(run)
        wait_for(lambda: checkpoint_steps(run), 180, "a checkpoint", interval=0.005)
        os.kill(_worker_pid(run), signal.SIGKILL)
        (finished,) = wait_all(executor, 1, timeout=120)
    finally:
        executor.close()
    assert not finished.ok
    assert "died" in finished.message and finished.log_path == run.run_dir / "log.txt"
    assert not (run.run_dir / "status.json").exists()  # a partial run: the driver resumes it


def status_is_missing(run) -> bool:
    return not (run.run_dir / "status.json").exists()


def _worker_info(run) -> dict:
    import json

    return json.loads((run.run_dir / WORKER_FILE).read_text())


def _worker_pid(run) -> int:
    pid = _worker_info(run)["pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert cmdline.startswith("ray::"), f"pid {pid} is not a Ray worker: {cmdline!r}"
    return pid
