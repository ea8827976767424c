"""Sweep files: a base train config, overrides, and grid/zip axes, expanded into runs.

A sweep file is YAML::

    name: rank-study               # optional label (default: the file's name)
    base: ./run.yaml               # a train config file, or a mapping of train keys
    store: ./sweep/results.db      # the sweep's results store; its folder holds the runs
    learning_rate: 2.0e-4          # any train key here overrides the base ...
    overrides: {max_steps: 50}     # ... and so does any key in this block
    grid:                          # Cartesian product over any train keys
      rank: [2, 4]
      seed: [0, 1]
    zip:                           # axes that vary together (one block, or a list of blocks)
      rank: [8, 16, 32]
      alpha: [16, 32, 64]
    resources: {cpus: 4, gpus: 1, memory_gb: 32, time_limit_min: 120}
    executor:
      default: local               # used without --executor
      local: {workers: 2}
      slurm: {partition: gpu}

Every expanded run is an ordinary :class:`~forgetscale.config.TrainConfig` (its run id is the
hash of the resolved config, as for ``forgetscale train``), checked when the file is read:
unknown keys and bad values are refused with their path in the file (``grid.rank[1]``)
before anything starts.

Paths: inputs in the base file are resolved against the base file's folder, inputs in the
sweep file against the sweep file's folder (then the current folder); outputs (``store``)
are relative to the current folder, as for every forgetscale command. The ``store``,
``checkpoint_dir``, ``output_dir`` and ``reference_dir`` of the runs are the sweep's: each
run writes into ``<store folder>/runs/<run id>/`` and references live in
``<store folder>/references/`` (where ``forgetscale train --store=<store>`` finds them too).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgetscale.config import PATH_FIELDS, TrainConfig, build_config, read_yaml_file
from forgetscale.errors import UserError
from forgetscale.sweep import folders
from forgetscale.sweep.executors.base import Resources
from forgetscale.sweep.folders import RunFolder
from forgetscale.sweep.options import _close, coerce_dataclass

SWEEP_KEYS = ("name", "base", "store", "overrides", "grid", "zip", "resources", "executor")

# Train keys the sweep decides for every run: each run writes into its own folder.
SWEEP_OWNED = frozenset({"store", "checkpoint_dir", "output_dir", "reference_dir"})

RUN_FOLDER = "runs"
REFERENCE_FOLDER = "references"


@dataclass(frozen=True)
class SweepRun:
    """One expanded run: its train config (pointing into its run folder) and grid values."""

    config: TrainConfig
    values: dict[str, Any]
    """The axis values of this run, in the file's order (``{"rank": 4, "seed": 1}``)."""
    label: str
    """The axis values as text: ``rank=4 seed=1``."""

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def run_dir(self) -> Path:
        return Path(self.config.store).parent

    @property
    def folder(self) -> RunFolder:
        """The run's folder, read through :class:`~forgetscale.sweep.folders.RunFolder`."""
        return RunFolder(self.run_dir)


@dataclass
class Sweep:
    """A sweep file, read and expanded (see the module docstring for the schema)."""

    path: Path
    name: str
    store: Path
    axes: list[str]
    runs: list[SweepRun]
    resources: Resources = field(default_factory=Resources)
    executor: str = "local"
    """The executor used when the command line names none."""
    executor_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``executor: {NAME: {...}}`` blocks of the file, as written (checked by the executor's
    ``Options`` when that executor is chosen)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Blocks of ``extra_keys`` given to :func:`load_sweep` (a study's ``analysis:``)."""

    @property
    def folder(self) -> Path:
        """The sweep's folder: the store, ``runs/<run id>/`` and ``references/``."""
        return self.store.parent

    @property
    def reference_dir(self) -> Path:
        return self.folder / REFERENCE_FOLDER

    def run_dir(self, run_id: str) -> Path:
        return self.folder / RUN_FOLDER / run_id

    def run_folder(self, run_id: str) -> RunFolder:
        """The folder of run ``run_id`` (:class:`~forgetscale.sweep.folders.RunFolder`)."""
        return RunFolder(self.run_dir(run_id))


# ------------------------------------------------------------------------------------------
# reading


def _fmt_value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_fmt_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "null"
    return str(value)


def label_of(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in values.items())


def _train_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def _anchor_paths(values: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Make relative input paths that exist under ``folder`` absolute (the config convention:
    inputs are found next to the file that names them, then in the current folder)."""
    out = dict(values)
    for key, value in values.items():
        if key not in PATH_FIELDS or key in SWEEP_OWNED:
            continue
        if not isinstance(value, str) or not value or value.startswith("hf:"):
            continue
        p = Path(value).expanduser()
        if p.is_absolute():
            continue
        if (folder / p).exists() or key == "reference":
            out[key] = str((folder / p).resolve())
    return out


def _check_train_keys(values: dict[str, Any], where: str, *, owned_ok: bool = False) -> None:
    known = _train_keys()
    for key in values:
        if not isinstance(key, str) or key not in known:
            raise UserError(f"{where}.{key}: unknown config key{_close(str(key), known)}")
        if key in SWEEP_OWNED and not owned_ok:
            raise UserError(
                f"{where}.{key}: set by the sweep (each run writes into its own folder under "
                "the store's folder); set the sweep's `store:` instead"
            )


def _axes(raw: Any, where: str) -> dict[str, list[Any]]:
    if not isinstance(raw, dict) or not raw:
        raise UserError(
            f"{where} is empty: give at least one axis, e.g. `rank: [2, 4]` "
            "(a key and a list of values)"
        )
    out = {}
    for key, values in raw.items():
        if not isinstance(values, list):
            raise UserError(f"{where}.{key}: an axis is a list of values, got {values!r}")
        if not values:
            raise UserError(f"{where}.{key}: the axis has no values")
        out[key] = values
    return out


def _fine_with_its_run(fixed: dict[str, Any], run: dict[str, Any], cli: Any) -> bool:
    """Whether a zipped value that fails alone builds with the other values of its run (a
    key that needs another key the same zip sets)."""
    try:
        build_config({**fixed, **run}, overrides=cli)
    except UserError:
        return False
    return True


def load_sweep(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    *,
    executor: str | None = None,
    extra_keys: tuple[str, ...] = (),
) -> Sweep:
    """Read and expand a sweep file; ``overrides`` (``--key=value`` from the command line)
    apply to every run; ``store`` among them moves the sweep's store. Raises
    :class:`UserError` naming the key's path in the file on the first problem.

    ``extra_keys``: top-level blocks a file built on the sweep format may add (a study's
    ``analysis:``); they are returned as written in :attr:`Sweep.extra`."""
    path = Path(path)
    where = str(path)
    raw = read_yaml_file(path, what="sweep file")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a sweep file is a mapping (base:, store:, grid: ...)")
    folder = path.resolve().parent
    train_keys = _train_keys()
    extra = {k: raw.pop(k) for k in extra_keys if k in raw}
    known = (*SWEEP_KEYS, *extra_keys)
    for key in raw:
        if key not in SWEEP_KEYS and key not in train_keys:
            raise UserError(
                f"{where}: {key}: unknown key (keys: {', '.join(known)}, or any "
                f"train config key){_close(str(key), [*known, *train_keys])}"
            )

    # --- the base config ------------------------------------------------------------------
    base_raw = raw.get("base")
    base: dict[str, Any] = {}
    if isinstance(base_raw, str):
        base_path = Path(base_raw).expanduser()
        if not base_path.is_absolute():
            base_path = folder / base_path if (folder / base_path).exists() else base_path
        try:
            loaded = read_yaml_file(base_path, what="base config")
        except UserError as exc:
            raise UserError(f"{where}: base: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{where}: base: {base_path} is not a mapping of key: value pairs")
        _check_train_keys(loaded, f"{where}: base ({base_path})", owned_ok=True)
        base = _anchor_paths(loaded, base_path.resolve().parent)
    elif isinstance(base_raw, dict):
        _check_train_keys(base_raw, f"{where}: base", owned_ok=True)
        base = _anchor_paths(base_raw, folder)
    elif base_raw is not None:
        raise UserError(f"{where}: base: a config file path or a mapping of train keys")
    base = {k: v for k, v in base.items() if k not in SWEEP_OWNED}

    # --- overrides: top-level train keys, then the overrides: block, then the command line ---
    top = {k: v for k, v in raw.items() if k in train_keys and k not in SWEEP_KEYS}
    _check_train_keys(top, where)
    block = raw.get("overrides") or {}
    if not isinstance(block, dict):
        raise UserError(f"{where}: overrides: a mapping of train keys")
    _check_train_keys(block, f"{where}: overrides")
    fixed = {**base, **_anchor_paths(top, folder), **_anchor_paths(block, folder)}
    cli = dict(overrides or {})
    store_text = cli.pop("store", None)
    _check_train_keys(cli, "command line")
    for key in cli:
        fixed.pop(key, None)

    # --- axes ---------------------------------------------------------------------------------
    if "grid" not in raw and "zip" not in raw:
        raise UserError(
            f"{where}: no grid: or zip: block (a sweep varies at least one key; "
            "for one run use `forgetscale train`)"
        )
    groups: list[tuple[str, dict[str, list[Any]]]] = []  # (path, {key: values}) zipped together
    if "grid" in raw:
        for key, values in _axes(raw["grid"], f"{where}: grid").items():
            groups.append((f"grid.{key}", {key: values}))
    if "zip" in raw:
        zipped = raw["zip"]
        blocks = zipped if isinstance(zipped, list) else [zipped]
        for i, zblock in enumerate(blocks):
            zwhere = "zip" if not isinstance(zipped, list) else f"zip[{i}]"
            axes = _axes(zblock, f"{where}: {zwhere}")
            lengths = {k: len(v) for k, v in axes.items()}
            if len(set(lengths.values())) > 1:
                raise UserError(
                    f"{where}: {zwhere}: axes that vary together need as many values each, got "
                    + ", ".join(f"{k}: {n}" for k, n in lengths.items())
                )
            groups.append((zwhere, axes))
    seen: dict[str, str] = {}
    for gpath, axes in groups:
        _check_train_keys(axes, f"{where}: {gpath.split('.')[0]}")
        for key in axes:
            if key in seen:
                raise UserError(f"{where}: {key} is an axis twice ({seen[key]} and {gpath})")
            seen[key] = gpath
            if key in cli:
                raise UserError(
                    f"command line: --{key} overrides the sweep axis {gpath}; "
                    "edit the axis in the sweep file instead"
                )
            if key in block or key in top:
                raise UserError(f"{where}: {key} is both an axis ({gpath}) and an override")
            fixed.pop(key, None)
    axis_names = list(seen)

    # --- every axis value on its own, so an error names its place in the file ------------------
    # (a value resolved as a path is anchored at the sweep file's folder)
    def anchored(values: dict[str, Any]) -> dict[str, Any]:
        return _anchor_paths(values, folder)

    try:
        build_config(fixed, overrides=cli, where=where)
        base_ok = True
    except UserError:
        base_ok = False  # e.g. task_data only given by an axis; checked per run below
    for gpath, axes in groups:
        for key, values in axes.items():
            for i, value in enumerate(values):
                at = f"{gpath if gpath.startswith('grid') else gpath + '.' + key}[{i}]"
                try:
                    build_config({**fixed, **anchored({key: value})}, overrides=cli)
                except UserError as exc:
                    if gpath.startswith("zip") and _fine_with_its_run(
                        fixed, anchored({k: v[i] for k, v in axes.items()}), cli
                    ):
                        continue  # e.g. replay_fraction beside its zipped replay_data
                    if base_ok or key in str(exc):
                        raise UserError(f"{where}: {at}: {exc}") from None

    # --- the sweep's own settings ------------------------------------------------------------------
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise UserError(f"{where}: name: a non-empty string")
    store_raw = (
        store_text if store_text is not None else raw.get("store", f"./{path.stem}/results.db")
    )
    if not isinstance(store_raw, str) or not store_raw.strip():
        raise UserError(f"{where}: store: a path to the sweep's results file (.db)")
    store = Path(store_raw).expanduser()
    store = (store if store.is_absolute() else Path.cwd() / store).resolve()
    if store.is_dir():
        raise UserError(f"{where}: store: {store} is a folder; give the results file's path")
    resources = _resources(raw.get("resources"), f"{where}: resources")
    default_executor, options = _executor_block(raw.get("executor"), f"{where}: executor")
    sweep_folder = store.parent

    # --- expand --------------------------------------------------------------------------------------
    runs: list[SweepRun] = []
    ids: dict[str, str] = {}
    combos = itertools.product(*[list(zip(*axes.values(), strict=True)) for _, axes in groups])
    for combo in combos:
        values: dict[str, Any] = {}
        for (_, axes), picked in zip(groups, combo, strict=True):
            values.update(zip(axes, picked, strict=True))
        label = label_of(values)
        try:
            config = build_config({**fixed, **anchored(values)}, overrides=cli)
            config.check_splits()
        except UserError as exc:
            raise UserError(f"{where}: run {label}: {exc}") from None
        rid = config.run_id
        if rid in ids:
            raise UserError(
                f"{where}: the runs {ids[rid]} and {label} are the same run (id {rid}): "
                "an axis over a key that does not change the results?"
            )
        ids[rid] = label
        run_dir = sweep_folder / RUN_FOLDER / rid
        config = dataclasses.replace(
            config,
            store=str(run_dir / folders.STORE),
            checkpoint_dir=str(run_dir / folders.CHECKPOINTS),
            output_dir=str(run_dir / folders.ADAPTER),
            reference_dir=str(sweep_folder / REFERENCE_FOLDER),
            progress=False,
            name=label if config.name is None else f"{config.name} {label}",
        )
        runs.append(SweepRun(config, values, label))
    chosen = executor or default_executor
    return Sweep(
        path=path,
        name=name,
        store=store,
        axes=axis_names,
        runs=runs,
        resources=resources,
        executor=chosen,
        executor_options=options,
        extra=extra,
    )


def _resources(raw: Any, where: str) -> Resources:
    if raw is None:
        return Resources()
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a mapping (cpus, gpus, memory_gb, time_limit_min)")
    obj = coerce_dataclass(Resources, raw, where)
    for key in ("cpus", "gpus"):
        if getattr(obj, key) < 0:
            raise UserError(f"{where}.{key} must be >= 0, got {getattr(obj, key)}")
    if obj.cpus < 1:
        raise UserError(f"{where}.cpus must be >= 1, got {obj.cpus}")
    for key in ("memory_gb", "time_limit_min"):
        v = getattr(obj, key)
        if v is not None and v <= 0:
            raise UserError(f"{where}.{key} must be positive, got {v}")
    return obj


def _executor_block(raw: Any, where: str) -> tuple[str, dict[str, dict[str, Any]]]:
    from forgetscale.sweep.executors import EXECUTORS

    if raw is None:
        return "local", {}
    if isinstance(raw, str):
        if raw not in EXECUTORS:
            raise UserError(f"{where}: unknown executor {raw!r}; one of {', '.join(EXECUTORS)}")
        return raw, {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: an executor name or a mapping (default:, local:, ray:, ...)")
    default = raw.get("default", "local")
    if default not in EXECUTORS:
        raise UserError(
            f"{where}.default: unknown executor {default!r}; one of {', '.join(EXECUTORS)}"
        )
    options: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key == "default":
            continue
        if key not in EXECUTORS:
            raise UserError(
                f"{where}.{key}: unknown executor; one of {', '.join(EXECUTORS)}"
                f"{_close(str(key), EXECUTORS)}"
            )
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise UserError(f"{where}.{key}: a mapping of the executor's options")
        options[key] = value
    return default, options
