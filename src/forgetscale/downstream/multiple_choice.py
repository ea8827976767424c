"""Multiple-choice suites scored by log-likelihood, as lm-eval scores ARC.

Each item is a question with two or more choices and, optionally, the index of
the right one. The context is ``"Question: {question}\\nAnswer:"`` and each
choice is scored as the continuation ``" {choice}"`` (ARC's template in
lm-evaluation-harness). Metrics:

- ``acc``: the highest summed log-likelihood picks the right choice (ties: first);
- ``acc_norm``: the same after dividing each score by the choice's length in characters;
- ``agreement``: the model picks the choice the *base* model picks (``acc``'s rule);
  needs no gold labels, so it works on any question set.

A user's questions come from a JSONL file (``mc:FILE.jsonl``), one object per line
with ``question`` (string), ``choices`` (list of at least two strings) and optional
``answer`` (index into ``choices``, or the text of the right choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from forgetscale.downstream.registry import (
    Record,
    Suite,
    SuiteOptions,
    content_hash,
    register_suite,
)
from forgetscale.downstream.scoring import encode_pair, loglikelihoods
from forgetscale.errors import UserError

CONTEXT_TEMPLATE = "Question: {question}\nAnswer:"
CHOICE_DELIMITER = " "


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question."""

    question: str
    choices: tuple[str, ...]
    answer: int | None = None
    template: str = CONTEXT_TEMPLATE
    """How the question becomes the context (``{question}`` is replaced)."""

    @property
    def context(self) -> str:
        return self.template.format(question=self.question)

    def as_dict(self) -> dict[str, Any]:
        record = {"question": self.question, "choices": list(self.choices), "answer": self.answer}
        if self.template != CONTEXT_TEMPLATE:
            record["template"] = self.template
        return record


def check_item(item: MCItem, where: str) -> MCItem:
    if not item.question.strip():
        raise UserError(f"{where}: empty question")
    if len(item.choices) < 2:
        raise UserError(f"{where}: a question needs at least two choices, got {len(item.choices)}")
    if any(not c.strip() for c in item.choices):
        raise UserError(f"{where}: empty choice")
    if item.answer is not None and not 0 <= item.answer < len(item.choices):
        raise UserError(
            f"{where}: answer {item.answer} is not an index into its {len(item.choices)} choices"
        )
    return item


def items_hash(items: list[MCItem]) -> str:
    """SHA-256 of the items (questions, choices, answers, in order)."""
    return content_hash([item.as_dict() for item in items])


def read_mc_jsonl(path: str | Path) -> list[MCItem]:
    """Questions from a JSONL file (see the module docs); bad lines are refused with their number."""
    from forgetscale.corpus import read_records

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"question file not found: {path}")
    if path.suffix.lower() != ".jsonl":
        raise UserError(f"questions must come from a .jsonl file, got {path}")
    items = []
    for number, record in enumerate(read_records(path), 1):
        where = f"{path}: record {number}"
        question, choices, answer = (
            record.get("question"),
            record.get("choices"),
            record.get("answer"),
        )
        if not isinstance(question, str):
            raise UserError(f"{where}: needs a string field 'question'")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise UserError(f"{where}: needs 'choices', a list of strings")
        if isinstance(answer, str):
            if answer not in choices:
                raise UserError(f"{where}: answer {answer!r} is not one of its choices")
            answer = choices.index(answer)
        elif answer is not None and (isinstance(answer, bool) or not isinstance(answer, int)):
            raise UserError(f"{where}: answer must be a choice index or the choice's text")
        items.append(check_item(MCItem(question, tuple(choices), answer), where))
    if not items:
        raise UserError(f"{path} holds no questions")
    return items


def choice_record(
    lls: list[float], choices: tuple[str, ...] | list[str], answer: int | None
) -> Record:
    """Per-item record from the choices' log-likelihoods (lm-eval's argmax rules)."""
    scores = np.asarray(lls, dtype=np.float64)
    lengths = np.asarray([float(len(c)) for c in choices])
    pred = int(np.argmax(scores))
    pred_norm = int(np.argmax(scores / lengths))
    record: Record = {"ll": [float(x) for x in lls], "pred": pred, "pred_norm": pred_norm}
    if answer is not None:
        record["acc"] = float(pred == answer)
        record["acc_norm"] = float(pred_norm == answer)
    return record


def mc_outcomes(records: list[Record], base: list[Record]) -> dict[str, np.ndarray]:
    """acc and acc_norm over the labelled items, agreement with the base's choice over all."""
    if len(records) != len(base):
        raise ValueError("base and model records cover different items")
    out: dict[str, np.ndarray] = {}
    labelled = [r for r in records if "acc" in r]
    if labelled:
        out["acc"] = np.array([r["acc"] for r in labelled])
        out["acc_norm"] = np.array([r["acc_norm"] for r in labelled])
    out["agreement"] = np.array(
        [float(r["pred"] == b["pred"]) for r, b in zip(records, base, strict=True)]
    )
    return out


class MultipleChoiceSuite(Suite):
    """Questions with choices, scored by our batched log-likelihood engine."""

    kind = "multiple_choice"
    metrics = ("acc", "acc_norm", "agreement")

    def __init__(self, spec: str, items: list[MCItem], source: str, options: SuiteOptions) -> None:
        super().__init__(spec)
        if options.limit is not None:
            items = items[: options.limit]
        self.items = items
        self.source = source

    def describe(self) -> str:
        labelled = sum(item.answer is not None for item in self.items)
        templates = {item.template for item in self.items}
        context = (
            "the sentence before it" if templates == {"{question}"} else "'Question: ...\\nAnswer:'"
        )
        return (
            f"{len(self.items)} questions from {self.source} ({labelled} with answers); "
            f"log-likelihood of ' choice' after {context}"
        )

    def fingerprint(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "items_sha256": items_hash(self.items),
            "n": len(self.items),
            "delimiter": CHOICE_DELIMITER,
        }

    def run(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        device: torch.device,
        batch_size: int,
        progress: bool = False,
    ) -> list[Record]:
        pairs, owners = [], []
        for i, item in enumerate(self.items):
            for choice in item.choices:
                pairs.append(encode_pair(tokenizer, item.context, CHOICE_DELIMITER + choice))
                owners.append(i)
        scores = loglikelihoods(
            model, pairs, batch_size=batch_size, device=device, progress=progress
        )
        lls: list[list[float]] = [[] for _ in self.items]
        for owner, (ll, _) in zip(owners, scores, strict=True):
            lls[owner].append(ll)
        return [
            choice_record(ll, item.choices, item.answer)
            for ll, item in zip(lls, self.items, strict=True)
        ]

    def outcomes(self, records: list[Record], base: list[Record]) -> dict[str, np.ndarray]:
        return mc_outcomes(records, base)

    def examples(self, records: list[Record], base: list[Record], n: int) -> list[dict[str, Any]]:
        shown = []
        for item, r, b in zip(self.items, records, base, strict=True):
            if r["pred"] != b["pred"]:
                shown.append(
                    {
                        "question": item.question,
                        "base": item.choices[b["pred"]],
                        "tuned": item.choices[r["pred"]],
                        "answer": None if item.answer is None else item.choices[item.answer],
                    }
                )
            if len(shown) >= n:
                break
        return shown


def _jsonl_suite(arg: str | None, options: SuiteOptions) -> Suite:
    assert arg is not None
    return MultipleChoiceSuite(f"mc:{arg}", read_mc_jsonl(arg), arg, options)


register_suite(
    "mc",
    _jsonl_suite,
    help="your multiple-choice questions: JSONL with question, choices and optional answer",
    argument="required",
    example="mc:FILE.jsonl",
)
