"""lm-evaluation-harness tasks as suites: ``lm-eval:TASK`` or ``lm-eval:path/to/task.yaml``.

lm-eval builds the task's requests (its prompt templates, few-shot examples,
choices and gold labels) and computes each document's ``acc`` and ``acc_norm``
with its own code; the model it calls is ours (:func:`make_lm`, the loaded
model with its PEFT adapter, if any), whose log-likelihoods come from the batched,
prefix-sharing scorer of :mod:`.scoring` — the same rule lm-eval's HF model
applies, so the numbers agree (``benchmarks/bench_evaluate.py`` checks this).
``agreement`` with the base's choice is added per document.

lm-eval is an optional extra: ``pip install "forgetscale[lm-eval]"``. Only
``multiple_choice`` tasks are supported (ARC, HellaSwag, MMLU, PIQA, ...); a group
name (``mmlu``) pools its subtasks' documents. Extra task folders come from
``SuiteOptions.lm_eval_include`` (``--lm-eval-include``), or name a YAML file directly.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from forgetscale.downstream.multiple_choice import mc_outcomes
from forgetscale.downstream.registry import (
    Record,
    Suite,
    SuiteOptions,
    content_hash,
    register_suite,
)
from forgetscale.downstream.scoring import loglikelihoods
from forgetscale.errors import UserError

INSTALL_HINT = 'pip install "forgetscale[lm-eval]"'
_TASK_MANAGERS: dict[tuple[tuple[str, ...], bool], Any] = {}


def _require_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as exc:
        raise UserError(
            f"lm-eval suites need lm-evaluation-harness, which is not installed: {INSTALL_HINT}"
        ) from exc
    return lm_eval


def task_manager(include: tuple[str, ...] = (), *, defaults: bool = True) -> Any:
    """An lm-eval TaskManager over its own tasks (if ``defaults``) and the ``include`` folders."""
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    key = (tuple(sorted(include)), defaults)
    if key not in _TASK_MANAGERS:
        for folder in include:
            if not Path(folder).is_dir():
                raise UserError(f"lm-eval include path is not a folder: {folder}")
        _TASK_MANAGERS[key] = TaskManager(
            include_path=list(include) or None, include_defaults=defaults
        )
    return _TASK_MANAGERS[key]


def _leaf_tasks(task_dict: Any) -> Iterator[tuple[str, Any]]:
    from lm_eval.api.task import Task

    for key, value in task_dict.items():
        if isinstance(value, Task):
            yield (str(key), value)
        elif isinstance(value, dict):
            yield from _leaf_tasks(value)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No 'Generating test split' bars on stderr while lm-eval loads a task's data."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - lm-eval depends on datasets
        yield
        return
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def load_tasks(task: str, include: tuple[str, ...] = ()) -> tuple[Any, list[tuple[str, Any]]]:
    """The TaskManager and (name, lm-eval Task) pairs for ``task`` (a name, group or YAML
    path), refusing unusable ones."""
    _require_lm_eval()
    from lm_eval.tasks import get_task_dict

    is_file = task.endswith((".yaml", ".yml"))
    if is_file:
        path = Path(task).expanduser()
        if not path.is_file():
            raise UserError(f"lm-eval task file not found: {task}")
        candidates = [((str(path.parent.resolve()), *include), False)]
        spec = str(path.resolve())
    else:  # the user's folders alone first (fast), then with lm-eval's ~14k task files
        candidates = ([(include, False)] if include else []) + [(include, True)]
        spec = task
    for number, (folders, defaults) in enumerate(candidates, 1):
        manager = task_manager(folders, defaults=defaults)
        try:
            with _quiet_datasets():
                if hasattr(manager, "load"):  # lm-eval >= 0.4.10: a flat dict of leaf tasks
                    leaves = list(manager.load([spec])["tasks"].items())
                else:
                    leaves = list(_leaf_tasks(get_task_dict([spec], manager)))
            break
        except KeyError:
            if number < len(candidates):
                continue
            raise UserError(
                f"lm-eval has no task {task!r} (see `lm-eval ls tasks`; local YAML folders go in "
                "--lm-eval-include)"
            ) from None
        except Exception as exc:  # datasets/network/YAML errors come in many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"lm-eval could not load task {task!r}: {first}") from exc
    if not leaves:
        raise UserError(f"lm-eval task {task!r} holds no tasks")
    for name, obj in leaves:
        if obj.OUTPUT_TYPE != "multiple_choice":
            raise UserError(
                f"lm-eval task {name!r} is a {obj.OUTPUT_TYPE} task; forgetscale scores "
                "multiple_choice tasks only"
            )
    return manager, leaves


def make_lm(
    model: nn.Module, tokenizer: Any, *, batch_size: int = 8, device: torch.device | None = None
) -> Any:
    """Our model as an lm-eval language model: log-likelihoods from our batched scorer."""
    _require_lm_eval()
    from lm_eval.api.model import TemplateLM

    class _ForgetscaleLM(TemplateLM):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.tokenizer = model, tokenizer
            self.batch_size = batch_size
            self._device = device or next(model.parameters()).device

        @property
        def eot_token_id(self) -> int:
            return self.tokenizer.eos_token_id

        @property
        def prefix_token_id(self) -> int:  # as lm-eval's HF model: BOS if there is one, else EOS
            bos = self.tokenizer.bos_token_id
            return bos if bos is not None else self.tokenizer.eos_token_id

        def tok_encode(
            self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
        ) -> list[int]:
            if add_special_tokens is None:
                return self.tokenizer.encode(string)
            return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

        def _loglikelihood_tokens(self, requests, **kwargs: Any) -> list[tuple[float, bool]]:
            pairs = [(ctx, cont) for _, ctx, cont in requests]
            return loglikelihoods(
                self.model, pairs, batch_size=self.batch_size, device=self._device
            )

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise UserError("forgetscale's lm-eval bridge scores multiple-choice tasks only")

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise UserError("forgetscale's lm-eval bridge scores multiple-choice tasks only")

    return _ForgetscaleLM()


class LmEvalSuite(Suite):
    """An lm-eval multiple-choice task (or group) scored through our model."""

    kind = "multiple_choice"
    metrics = ("acc", "acc_norm", "agreement")

    def __init__(self, spec: str, task: str, options: SuiteOptions) -> None:
        super().__init__(spec)
        self.task = task
        self.include = options.lm_eval_include
        self.limit = options.limit
        self.manager, self.tasks = load_tasks(task, self.include)

    def describe(self) -> str:
        names = ", ".join(name for name, _ in self.tasks[:5]) + (
            " ..." if len(self.tasks) > 5 else ""
        )
        return f"lm-eval {names}: its prompts, choices and acc/acc_norm; our log-likelihood scorer"

    def fingerprint(self) -> dict[str, Any]:
        import lm_eval

        tasks = {}
        for name, obj in self.tasks:
            docs = list(obj.eval_docs)
            if self.limit:
                docs = docs[: self.limit]
            tasks[name] = {
                "config_sha256": content_hash(
                    json.loads(json.dumps(obj.dump_config(), default=str))
                ),
                "docs_sha256": content_hash(json.loads(json.dumps(docs, default=str))),
                "n": len(docs),
            }
        return {
            "kind": "lm-eval",
            "task": self.task,
            "lm_eval": lm_eval.__version__,
            "tasks": tasks,
        }

    def run(self, model, tokenizer, *, device, batch_size, progress=False) -> list[Record]:
        import lm_eval

        lm = make_lm(model, tokenizer, batch_size=batch_size, device=device)
        states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
        try:  # lm-eval seeds the global generators; a training run must not notice
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=[obj for _, obj in self.tasks],
                task_manager=self.manager,  # else lm-eval indexes its ~14k YAML files again
                limit=self.limit,
                log_samples=True,
                bootstrap_iters=0,
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
            )
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.random.set_rng_state(states[2])
        records: list[Record] = []
        for name, _ in self.tasks:
            for sample in sorted(out["samples"][name], key=lambda s: s["doc_id"]):
                lls = [float(resp[0]) for resp in sample["filtered_resps"]]
                record: Record = {
                    "task": name,
                    "doc_id": sample["doc_id"],
                    "ll": lls,
                    "pred": int(np.argmax(lls)),
                }
                for metric in ("acc", "acc_norm"):
                    if metric in sample:
                        record[metric] = float(sample[metric])
                records.append(record)
        return records

    def outcomes(self, records: list[Record], base: list[Record]) -> dict[str, np.ndarray]:
        out = mc_outcomes(records, base)
        if records and "acc_norm" not in records[0]:
            out.pop("acc_norm", None)
        return out


def _lm_eval_suite(arg: str | None, options: SuiteOptions) -> Suite:
    assert arg is not None
    return LmEvalSuite(f"lm-eval:{arg}", arg, options)


register_suite(
    "lm-eval",
    _lm_eval_suite,
    help="an lm-evaluation-harness multiple-choice task or group by name, or a task YAML "
    f"(needs {INSTALL_HINT})",
    argument="required",
    example="lm-eval:TASK",
)
