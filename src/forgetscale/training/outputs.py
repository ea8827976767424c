"""Where a training run writes (checkpoints, its lock, the saved adapter), checked before any
work: the run never overwrites or removes what it did not write."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from forgetscale.config import TrainConfig
from forgetscale.errors import UserError

RUN_MARKER = "forgetscale-run.json"
"""Written into ``output_dir`` with the saved weights: which run they came from."""


def checkpoint_dir(config: TrainConfig) -> Path:
    """The run's checkpoint folder (default: ``<store>.checkpoints/<run id>``)."""
    if config.checkpoint_dir:
        return Path(config.checkpoint_dir)
    return Path(config.store + ".checkpoints") / config.run_id


def lock_path(config: TrainConfig) -> Path:
    """The run's lock file: one per (store, run), wherever its checkpoints go."""
    from forgetscale.training.lock import run_lock_path

    return run_lock_path(config.store, config.run_id)


def check_outputs(config: TrainConfig) -> None:
    """Fail before any work when an output cannot be written or would overwrite someone's."""
    from forgetscale.outputs import check_folder

    ck = checkpoint_dir(config)
    if ck.exists() and not ck.is_dir():
        raise UserError(f"checkpoint_dir {ck} is a file, not a folder")
    check_folder(ck, what="checkpoint_dir")  # before the run is recorded: never left failed
    if not config.reference:
        from forgetscale.reference import reference_folder

        refs = reference_folder(config)
        if not refs.is_dir():  # a reference is built there: the folder must be makeable
            what = "reference_dir" if config.reference_dir else "the references folder"
            check_folder(refs, what=what)
    if not config.output_dir:
        return
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output_dir {out} is a file, not a folder")
    if out.is_dir():
        saved = [n for n in ("adapter_config.json", "config.json") if (out / n).exists()]
        owner = None
        if (out / RUN_MARKER).is_file():
            try:
                owner = json.loads((out / RUN_MARKER).read_text()).get("run_id")
            except (OSError, ValueError, AttributeError):
                owner = None
        if saved and owner != config.run_id:
            raise UserError(
                f"output_dir {out} already holds a model or adapter ({saved[0]}) that this run "
                "did not write; choose another output_dir or remove it"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".forgetscale-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"output_dir {out} cannot be written ({exc.strerror or exc})") from None
