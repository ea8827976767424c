"""Running suites on a model beside its base: the base side cached, every rate with n and an interval.

The base side of a suite (the base model's per-item records) is computed once per
base model and suite and cached as JSON under a fingerprint (model config, a hash
of the tokenizer and chat template, a sample of the base's weights, dtype, the
suite's items and settings, library versions), like the L_f reference: a file is
used only when its fingerprint matches, and it is written atomically.

With a PEFT adapter, one model is in memory: the base side runs with the adapter
disabled. Two entry points:

- :func:`evaluate` (``forgetscale evaluate``): a model spec (+ adapter, or a base
  spec for a fully fine-tuned model), suites by name; returns a
  :class:`SuiteResult` per suite (base and tuned rates, paired change, records).
- :func:`run_suites` (inside training runs): a live model at one step; returns
  long-format :class:`SuiteMeasurement` rows (suite, metric, value, n, interval).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forgetscale.downstream.registry import Record, Suite, SuiteOptions, get_suite
from forgetscale.downstream.stats import Change, Rate, paired_change
from forgetscale.errors import UserError

CACHE_FORMAT = "forgetscale.downstream-base/1"


@dataclass(frozen=True)
class SuiteMeasurement:
    """One rate of one suite for one model: the long-format row the results store keeps."""

    suite: str
    metric: str
    value: float
    n: int
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class MetricComparison:
    """A metric for the base and the tuned model on the same items, and the paired change."""

    metric: str
    base: Rate
    tuned: Rate
    change: Change

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "base": asdict(self.base),
            "tuned": asdict(self.tuned),
            "change": {**asdict(self.change), "significant": self.change.significant},
        }


@dataclass
class SuiteResult:
    """A suite's outcome for one model beside its base."""

    suite: Suite
    metrics: list[MetricComparison]
    base_records: list[Record]
    tuned_records: list[Record]
    base_cached: bool = False
    compared: bool = True
    """False when no base was given: ``tuned`` is the model alone, ``base`` repeats it."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.suite.spec

    def measurements(self, side: str = "tuned") -> list[SuiteMeasurement]:
        rows = []
        for m in self.metrics:
            rate = m.tuned if side == "tuned" else m.base
            rows.append(
                SuiteMeasurement(self.name, m.metric, rate.value, rate.n, rate.ci_low, rate.ci_high)
            )
        return rows

    def side_by_side(self) -> list[dict[str, Any]]:
        fn = getattr(self.suite, "side_by_side", None)
        return fn(self.tuned_records, self.base_records) if fn else []

    def as_dict(self) -> dict[str, Any]:
        return {
            "suite": self.name,
            "kind": self.suite.kind,
            "description": self.suite.describe(),
            "compared": self.compared,
            "base_cached": self.base_cached,
            "metrics": [m.as_dict() for m in self.metrics],
        }


# ---------------------------------------------------------------------------
# the base-side cache


def default_cache_dir() -> Path:
    from forgetscale.assets import cache_dir

    return cache_dir() / "downstream"


def _unwrap(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _is_peft(model: nn.Module) -> bool:
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


def weights_fingerprint(model: nn.Module) -> str:
    """A cheap hash of the base weights: per tensor its name, shape, dtype, float64 sum and
    up to 1,024 evenly spaced values. Adapter weights are skipped, and PEFT's renaming
    (``base_model.model.``, ``.base_layer``) undone, so a base and base + adapter agree."""
    h = hashlib.sha256()
    for name, param in _unwrap(model).named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        name = name.replace(".base_layer", "")
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // 1024)
        sample = flat[::step][:1024].float().cpu().numpy().tobytes()
        total = float(flat.double().sum())
        h.update(f"{name}|{tuple(param.shape)}|{param.dtype}|{total!r}|".encode())
        h.update(sample)
    return h.hexdigest()


def base_fingerprint(model: nn.Module, tokenizer: Any) -> dict[str, Any]:
    """What identifies the base model (the part of the cache key that is not the suite)."""
    from forgetscale.downstream.generation import template_id
    from forgetscale.models import tokenizer_fingerprint

    base = _unwrap(model)
    config = getattr(base, "config", None)
    config_text = (
        config.to_json_string(use_diff=False) if config is not None else type(base).__name__
    )
    return {
        "model": getattr(config, "_name_or_path", None),
        "model_config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "weights_sha256": weights_fingerprint(model),
        "dtype": str(next(base.parameters()).dtype).removeprefix("torch."),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "chat_template": template_id(tokenizer),
    }


def _versions() -> dict[str, str]:
    import transformers

    from forgetscale import __version__

    return {
        "forgetscale": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _cache_path(cache_dir: Path, suite: Suite, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", suite.spec)[-60:]
    return cache_dir / f"{safe}-{digest}.json"


def load_base_records(cache_dir: Path, suite: Suite, key: dict[str, Any]) -> list[Record] | None:
    path = _cache_path(cache_dir, suite, key)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a damaged cache file is recomputed and replaced
    if payload.get("format") != CACHE_FORMAT or payload.get("fingerprint") != key:
        return None
    records = payload.get("records")
    return records if isinstance(records, list) else None


def save_base_records(
    cache_dir: Path, suite: Suite, key: dict[str, Any], records: list[Record]
) -> Path:
    """Write atomically (temporary file + rename)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = _cache_path(cache_dir, suite, key)
    payload = {
        "format": CACHE_FORMAT,
        "suite": suite.spec,
        "fingerprint": key,
        "versions": _versions(),
        "records": records,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=cache_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# ---------------------------------------------------------------------------
# comparing


def compare(suite: Suite, tuned: list[Record], base: list[Record]) -> list[MetricComparison]:
    """Each metric's rate for base and tuned (Wilson) and the paired change (bootstrap)."""
    tuned_out = suite.outcomes(tuned, base)
    base_out = suite.outcomes(base, base)
    rows = []
    for metric in [m for m in suite.metrics if m in tuned_out] + [
        m for m in tuned_out if m not in suite.metrics
    ]:
        t, b = tuned_out[metric], base_out[metric]
        if t.size == 0:
            continue
        rows.append(MetricComparison(metric, Rate.of(b), Rate.of(t), paired_change(b, t)))
    return rows


@contextlib.contextmanager
def _base_view(model: nn.Module) -> Iterator[nn.Module]:
    """The model with its PEFT adapter switched off (the base), or the model itself."""
    if _is_peft(model):
        with model.disable_adapter():
            yield model
    else:
        yield model


def _base_side(
    suite: Suite,
    model: nn.Module,
    tokenizer: Any,
    key: dict[str, Any],
    *,
    cache_dir: Path | None,
    device: torch.device,
    batch_size: int,
    progress: bool,
) -> tuple[list[Record], bool]:
    if cache_dir is not None:
        cached = load_base_records(cache_dir, suite, key)
        if cached is not None:
            return cached, True
    with _base_view(model) as base:
        records = suite.run(
            base, tokenizer, device=device, batch_size=batch_size, progress=progress
        )
    if cache_dir is not None:
        save_base_records(cache_dir, suite, key, records)
    return records, False


def _suite_key(suite: Suite, base_key: dict[str, Any]) -> dict[str, Any]:
    return {"suite": suite.spec, "suite_fingerprint": suite.fingerprint(), "base": base_key}


def _model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    from forgetscale.models import resolve_device

    if device is None:
        return next(model.parameters()).device
    return resolve_device(device)


def run_suites(
    model: nn.Module,
    tokenizer: Any,
    suite_names: Sequence[str],
    *,
    base_cache_dir: str | os.PathLike[str] | None,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    options: SuiteOptions | None = None,
    base_key: dict[str, Any] | None = None,
    progress: bool = False,
) -> list[SuiteMeasurement]:
    """Run suites on ``model`` as it is now (a training run calls this at its scheduled steps).

    Returns long-format rows ``(suite, metric, value, n, ci_low, ci_high)`` for ``model``
    (rates with 95% Wilson intervals). Agreement-style metrics compare with the base's
    records, taken from ``base_cache_dir`` or computed once and cached there: with a PEFT
    adapter the base is the model with the adapter disabled. A plain model is its own base
    unless ``base_key`` (:func:`base_fingerprint` of the base, taken at step 0) names
    another: full fine-tuning passes the step-0 key at every step, and the base side must
    have been cached at step 0. The model's train/eval mode and
    the global random generators are left as they were.
    """
    options = options or SuiteOptions()
    suites = [get_suite(name, options) for name in suite_names]
    device = _model_device(model, device)
    cache_dir = Path(base_cache_dir) if base_cache_dir is not None else None
    if base_key is None:
        key, own_key = base_fingerprint(model, tokenizer), True
    else:  # a plain model whose weights are still the base's is its own base (step 0)
        key = base_key
        own_key = not _is_peft(model) and base_fingerprint(model, tokenizer) == base_key
    rows: list[SuiteMeasurement] = []
    for suite in suites:
        suite_key = _suite_key(suite, key)
        base = load_base_records(cache_dir, suite, suite_key) if cache_dir is not None else None
        if base is None:
            if not own_key and not _is_peft(model):
                raise UserError(
                    f"no cached base-side results for suite {suite.spec} under this base key in "
                    f"{cache_dir}; run the suites on the base (step 0) first"
                )
            base, _ = _base_side(
                suite, model, tokenizer, suite_key,
                cache_dir=cache_dir, device=device, batch_size=batch_size, progress=progress,
            )  # fmt: skip
        if own_key and not _is_peft(model):
            tuned = base  # the model is its own base
        else:
            tuned = suite.run(
                model, tokenizer, device=device, batch_size=batch_size, progress=progress
            )
        for m in compare(suite, tuned, base):
            rows.append(
                SuiteMeasurement(
                    suite.spec, m.metric, m.tuned.value, m.tuned.n, m.tuned.ci_low, m.tuned.ci_high
                )
            )
    return rows


def evaluate(
    model: str = "smollm2-135m",
    suites: Sequence[str] = ("probe",),
    *,
    adapter: str | None = None,
    base: str | None = None,
    options: SuiteOptions | None = None,
    dtype: str = "float32",
    device: str = "auto",
    batch_size: int = 8,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> list[SuiteResult]:
    """Evaluate a model on suites beside its base (``forgetscale evaluate`` from Python).

    Args:
        model: embedded default name, local folder, ``.gguf`` file or hub id.
        suites: suite specs (``probe``, ``mc:FILE.jsonl``, ``lm-eval:TASK``, ``refusal``,
            ``generations``, ...; see :func:`forgetscale.downstream.suite_entries`).
        adapter: a PEFT adapter on ``model``; the base is ``model`` without it.
        base: for a fully fine-tuned ``model``, the base model spec to compare with.
            Without ``adapter`` or ``base`` the model is evaluated alone.
        cache_dir: where base-side results are cached (default: the user cache);
            ``use_cache=False`` recomputes them and writes nothing.
    """
    from forgetscale.models import load_model

    if adapter is not None and base is not None:
        raise UserError("give either an adapter (its base is --model) or --base, not both")
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    options = options or SuiteOptions()
    built = [get_suite(spec, options) for spec in suites]  # bad suites fail before any loading
    if not built:
        raise UserError("no suite given")
    cache = (
        (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if use_cache else None
    )
    base_records: dict[str, tuple[list[Record], bool]] = {}
    if base is not None:  # a separate base model: its side first, then free it
        from forgetscale.models import load_tokenizer, resolve_model_source, tokenizer_fingerprint

        tuned_tokenizer = load_tokenizer(
            resolve_model_source(model), trust_remote_code=trust_remote_code
        )
        loaded_base = load_model(
            base, dtype=dtype, device=device, trust_remote_code=trust_remote_code
        )
        if tokenizer_fingerprint(tuned_tokenizer) != tokenizer_fingerprint(loaded_base.tokenizer):
            raise UserError(
                f"{model} and its base {base} have different tokenizers; compare models of one family"
            )
        dev = next(loaded_base.model.parameters()).device
        key = base_fingerprint(loaded_base.model, loaded_base.tokenizer)
        for suite in built:
            base_records[suite.spec] = _base_side(
                suite, loaded_base.model, loaded_base.tokenizer, _suite_key(suite, key),
                cache_dir=cache, device=dev, batch_size=batch_size, progress=progress,
            )  # fmt: skip
        del loaded_base
    loaded = load_model(
        model, adapter=adapter, dtype=dtype, device=device, trust_remote_code=trust_remote_code
    )
    dev = next(loaded.model.parameters()).device
    results = []
    for suite in built:
        if base is not None:
            records, cached = base_records[suite.spec]
            tuned = suite.run(
                loaded.model, loaded.tokenizer, device=dev, batch_size=batch_size, progress=progress
            )
            compared = True
        elif adapter is not None:
            key = base_fingerprint(loaded.model, loaded.tokenizer)
            records, cached = _base_side(
                suite, loaded.model, loaded.tokenizer, _suite_key(suite, key),
                cache_dir=cache, device=dev, batch_size=batch_size, progress=progress,
            )  # fmt: skip
            tuned = suite.run(
                loaded.model, loaded.tokenizer, device=dev, batch_size=batch_size, progress=progress
            )
            compared = True
        else:
            key = base_fingerprint(loaded.model, loaded.tokenizer)
            records, cached = _base_side(
                suite, loaded.model, loaded.tokenizer, _suite_key(suite, key),
                cache_dir=cache, device=dev, batch_size=batch_size, progress=progress,
            )  # fmt: skip
            tuned, compared = records, False
        results.append(
            SuiteResult(suite, compare(suite, tuned, records), records, tuned, cached, compared)
        )
    return results
