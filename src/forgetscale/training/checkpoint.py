"""Checkpoints of a training run: trainable weights, optimizer, scheduler and RNG states.

safetensors + JSON only (nothing is pickled), written to a temporary folder and renamed into
place, so a run killed at any moment leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forgetscale.errors import UserError


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (adapter init, data order, dropout)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import numpy as np

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(tensors["torch"])
    cuda = sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def _split_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested state by ``{"__tensor__": key}`` references."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {str(k): _split_state(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} without pickle")


def _join_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        return {k: _join_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_state(v, tensors) for v in obj]
    return obj


def _optimizer_state_from_json(state: dict[str, Any]) -> dict[str, Any]:
    """JSON turned the optimizer's integer parameter ids into strings; turn them back."""
    return {
        "state": {int(k): v for k, v in state["state"].items()},
        "param_groups": state["param_groups"],
    }


@dataclass
class Progress:
    """What a run has done so far that is not in the model or optimizer (checkpointed)."""

    train_loss_sum: float = 0.0
    """Sum of the per-update training losses since the last measurement."""
    train_loss_count: int = 0
    tokens_seen: int = 0
    """Training tokens so far, task and replay together."""
    replay_tokens_seen: int = 0
    """Of which replay tokens (``replay_fraction``)."""
    train_kl_sum: float = 0.0
    """Sum of the per-update KL penalty terms since the last measurement (``kl_weight``)."""
    wall_s: float = 0.0
    """Training wall time so far (resumed runs continue the count)."""

    def mean_train_loss(self) -> float | None:
        return self.train_loss_sum / self.train_loss_count if self.train_loss_count else None

    def mean_train_kl(self) -> float | None:
        return self.train_kl_sum / self.train_loss_count if self.train_loss_count else None

    def reset_train_loss(self) -> None:
        self.train_loss_sum, self.train_loss_count, self.train_kl_sum = 0.0, 0, 0.0


@dataclass
class Checkpoint:
    """A loaded checkpoint's step and progress (weights and states are already restored)."""

    step: int
    progress: Progress


STATE_FILE = "state.json"
_FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors", STATE_FILE)
_STEP = re.compile(r"^step-(\d{6,})$")
_TMP = re.compile(r"^\.tmp-step-\d{6,}-\d+$")


def save_checkpoint(
    directory: Path,
    run_id: str,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Progress,
) -> Path:
    """Write ``directory/step-NNNNNN`` atomically, then drop this run's older checkpoints."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:06d}"
    tmp = directory / f".tmp-step-{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {
        n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }
    save_file(weights, str(tmp / "trainable.safetensors"))
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_json = _split_state(optimizer.state_dict(), "optimizer", opt_tensors)
    sched_json = _split_state(scheduler.state_dict(), "scheduler", opt_tensors)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng_tensors, rng_json = _rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    state = {
        "run_id": run_id,
        "step": step,
        "optimizer": opt_json,
        "scheduler": sched_json,
        "rng": rng_json,
        "progress": asdict(progress),
    }
    with (tmp / STATE_FILE).open("w") as fh:
        json.dump(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if final.exists():
        if not (_checkpoint_run_id(final) == run_id or _is_partial(final)):
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(
                f"checkpoint_dir {directory} already holds {final.name}, which this run did not "
                "write: give the run a checkpoint_dir of its own"
            )
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _own_checkpoints(directory, run_id):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoint_run_id(path: Path) -> str | None:
    try:
        return json.loads((path / STATE_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def _is_partial(path: Path) -> bool:
    """A checkpoint folder whose deletion was cut short: only our file names, no state file."""
    return (
        bool(_STEP.match(path.name))
        and path.is_dir()
        and not (path / STATE_FILE).exists()
        and {f.name for f in path.iterdir()} <= set(_FILES)
    )


def _own_checkpoints(directory: Path, run_id: str) -> list[Path]:
    """This run's complete checkpoint folders in ``directory`` (others' are never touched)."""
    if not directory.is_dir():
        return []
    return [
        p
        for p in directory.iterdir()
        if _STEP.match(p.name) and p.is_dir() and _checkpoint_run_id(p) == run_id
    ]


def latest_checkpoint(directory: Path, run_id: str) -> Path | None:
    """The newest checkpoint of run ``run_id`` in ``directory``.

    Raises :class:`UserError` when ``directory`` holds checkpoints of another run (two
    configs given one ``checkpoint_dir``): resuming from them would mix two runs.
    """
    if not directory.is_dir():
        return None
    # a folder without its state file is one this run was deleting when it was killed
    steps = [
        p
        for p in directory.iterdir()
        if _STEP.match(p.name) and p.is_dir() and (p / STATE_FILE).is_file()
    ]
    others = {_checkpoint_run_id(p) for p in steps} - {run_id}
    if others:
        owner = ", ".join(sorted(str(o) for o in others))
        raise UserError(
            f"checkpoint_dir {directory} holds checkpoints of another run ({owner}), not of "
            f"run {run_id}: give each config its own checkpoint_dir"
        )
    return max(steps, key=lambda p: int(p.name[5:])) if steps else None


def remove_checkpoints(directory: Path, run_id: str) -> None:
    """Remove what this run wrote in ``directory`` (its checkpoints and unfinished temporary
    folders), then the folder itself only if that left it empty: a user's files stay."""
    for path in _own_checkpoints(directory, run_id):
        shutil.rmtree(path, ignore_errors=True)
    if directory.is_dir():
        for path in directory.iterdir():
            if _is_partial(path) or (_TMP.match(path.name) and path.is_dir()):
                shutil.rmtree(path, ignore_errors=True)
    try:
        directory.rmdir()
    except OSError:
        pass


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> Checkpoint:
    """Restore weights, optimizer, scheduler and RNG from ``path``.

    A damaged checkpoint (truncated or edited files) is one :class:`UserError` line that says
    ``--restart`` discards it.
    """
    from safetensors.torch import load_file

    try:
        state = json.loads((path / STATE_FILE).read_text())
        weights = load_file(str(path / "trainable.safetensors"))
        tensors = load_file(str(path / "optimizer.safetensors"))
        rng = load_file(str(path / "rng.safetensors"))
        progress = Progress(**state["progress"])
        step = int(state["step"])
    except Exception as exc:
        raise UserError(
            f"checkpoint {path} is damaged ({type(exc).__name__}: {exc}); "
            "run again with --restart to discard it and start afresh"
        ) from None
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing or set(weights) - set(params):
        raise UserError(
            f"checkpoint {path} does not match this run's trainable parameters; "
            "start afresh with --restart"
        )
    try:
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        optimizer.load_state_dict(
            _optimizer_state_from_json(_join_state(state["optimizer"], tensors))
        )
        scheduler.load_state_dict(_join_state(state["scheduler"], tensors))
        _set_rng_state(rng, state["rng"])
    except Exception as exc:
        raise UserError(
            f"checkpoint {path} is damaged ({type(exc).__name__}: {exc}); "
            "run again with --restart to discard it and start afresh"
        ) from None
    return Checkpoint(step, progress)
