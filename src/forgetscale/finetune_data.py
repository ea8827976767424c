"""Task data for a fine-tuning run: plain text blocks or chat examples, and the held-out split.

Plain text (``{"text": ...}`` JSONL, .txt, parquet, a folder, an embedded corpus)
is packed into blocks exactly as the forgetting corpus is (docs/design.md: each
document without special tokens + EOS, concatenated, cut into blocks of T tokens,
the final partial block dropped); every token is a target.

Instruction / chat data (``{"prompt", "response"}`` or ``{"messages": [...]}``
records, JSONL or parquet) becomes one example per record: the conversation is
rendered with the tokenizer's chat template (or a plain ``role: content`` layout
when the tokenizer has none), truncated/padded to T tokens, and by default only
the assistant's tokens are targets (labels elsewhere are -100).

Both end as :class:`Examples`: ``input_ids``/``labels``/``attention_mask`` tensors of
shape ``[n, T]``. The held-out part (for L_ft) is a separate file, or a fixed
fraction of the blocks/examples chosen by a permutation that does not depend on
the run's seed, so runs with different seeds are measured on the same held-out data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from forgetscale.corpus import read_source_records
from forgetscale.errors import UserError

IGNORE_INDEX = -100
SPLIT_SEED = 1234  # fixed: the held-out split must not depend on the run's seed


@dataclass
class Examples:
    """Training or held-out examples, all of length T."""

    input_ids: torch.Tensor  # [n, T] long
    labels: torch.Tensor  # [n, T] long, -100 = not a target
    attention_mask: torch.Tensor | None  # [n, T] long, None = all ones (packed text)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, index: torch.Tensor | slice) -> Examples:
        return Examples(
            self.input_ids[index],
            self.labels[index],
            None if self.attention_mask is None else self.attention_mask[index],
        )

    def limit_tokens(self, max_tokens: int | None) -> Examples:
        """The first examples holding at most ``max_tokens`` tokens (at least one example)."""
        if max_tokens is None:
            return self
        n = max(1, max_tokens // self.input_ids.shape[1])
        return self.select(slice(0, n))


@dataclass
class TaskData:
    train: Examples
    heldout: Examples
    format: str  # text | prompt_response | messages


# --------------------------------------------------------------------------------------
# reading records


@dataclass(frozen=True)
class RecordFields:
    """Which fields of a record hold what (instruction data sets name them differently:
    OpenOrca has ``question``/``response``)."""

    text: str = "text"
    prompt: str = "prompt"
    response: str = "response"


def _is_record_source(source: str) -> bool:
    path = Path(source).expanduser()
    return source.startswith("hf:") or (
        path.is_file() and path.suffix.lower() in (".jsonl", ".parquet")
    )


def detect_format(
    source: str, fields: RecordFields = RecordFields(), *, split: str = "train"
) -> str:
    """``text``, ``prompt_response`` or ``messages``, from the first record of a JSONL/parquet
    file or an ``hf:`` dataset (anything else is plain text)."""
    if not _is_record_source(source):
        return "text"
    records = read_source_records(source, split=split)
    if not records:
        raise UserError(f"task data {source} is empty (no records)")
    first = records[0]
    if "messages" in first:
        return "messages"
    if fields.prompt in first and fields.response in first:
        return "prompt_response"
    if fields.text in first:
        return "text"
    raise UserError(
        f"{source}: first record has none of the expected fields: {fields.text!r} (plain text), "
        f"{fields.prompt!r}+{fields.response!r} or 'messages' (chat); it has: "
        f"{', '.join(map(str, first)) or 'none'}"
    )


def _conversations(
    source: str, fmt: str, fields: RecordFields, split: str
) -> list[list[dict[str, str]]]:
    records = read_source_records(source, split=split)
    if not records:
        raise UserError(f"task data {source} is empty (no records)")
    out = []
    for i, rec in enumerate(records, 1):
        if fmt == "prompt_response":
            if fields.prompt not in rec or fields.response not in rec:
                raise UserError(
                    f"{source}: record {i} lacks {fields.prompt!r} and/or {fields.response!r} "
                    f"(has: {', '.join(map(str, rec)) or 'nothing'})"
                )
            for key in (fields.prompt, fields.response):
                _check_text(source, i, key, rec[key])
            out.append(
                [
                    {"role": "user", "content": rec[fields.prompt]},
                    {"role": "assistant", "content": rec[fields.response]},
                ]
            )
        else:
            msgs = rec.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise UserError(f"{source}: record {i} has no non-empty 'messages' list")
            conv = []
            for m in msgs:
                if not isinstance(m, dict) or "role" not in m or "content" not in m:
                    raise UserError(
                        f"{source}: record {i}: each message needs 'role' and 'content'"
                    )
                _check_text(source, i, "messages[].role", m["role"])
                _check_text(source, i, "messages[].content", m["content"])
                conv.append({"role": m["role"], "content": m["content"]})
            if not any(m["role"] == "assistant" for m in conv):
                raise UserError(f"{source}: record {i} has no assistant message to learn from")
            out.append(conv)
    return out


def _check_text(source: str, number: int, key: str, value: Any) -> None:
    """A record's text is a string: a number or a list is refused, never stringified."""
    if not isinstance(value, str):
        raise UserError(
            f"{source}: record {number}: field {key!r} holds a value of type "
            f"{type(value).__name__}, not a string of text"
        )


# --------------------------------------------------------------------------------------
# chat rendering


def _plain_render(messages: list[dict[str, str]], add_generation_prompt: bool, eos: str) -> str:
    text = ""
    for m in messages:
        text += f"{m['role']}: {m['content']}"
        text += eos if m["role"] == "assistant" else "\n"
    if add_generation_prompt:
        text += "assistant: "
    return text


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    return _plain_render(messages, add_generation_prompt, tokenizer.eos_token or "")


def encode_conversation(
    tokenizer: Any, messages: list[dict[str, str]], *, response_only: bool = True
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation (labels -100 outside assistant turns).

    The assistant spans are found as character ranges between the rendering of the
    conversation up to a turn (with the generation prompt) and through it, which
    works for any chat template that renders a conversation as a growing prefix.
    """
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    if response_only:
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = _render(tokenizer, messages[:i], add_generation_prompt=True)
            through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
            if not (full.startswith(before) and full.startswith(through)):
                raise UserError(
                    "this tokenizer's chat template does not render conversations as growing "
                    "prefixes, so response tokens cannot be located: set response_only_loss: false"
                )
            spans.append((len(before), len(through)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if not response_only:
        return ids, list(ids)
    labels = []
    for tok, (start, end) in zip(ids, enc["offset_mapping"], strict=True):
        inside = any(s <= start < e or (start < s < end) for s, e in spans)
        labels.append(tok if inside else IGNORE_INDEX)
    return ids, labels


def _chat_examples(
    convs: list[list[dict[str, str]]], tokenizer: Any, block_size: int, response_only: bool
) -> Examples:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows_ids, rows_labels, rows_mask = [], [], []
    for conv in convs:
        ids, labels = encode_conversation(tokenizer, conv, response_only=response_only)
        ids, labels = ids[:block_size], labels[:block_size]
        if sum(1 for x in labels[1:] if x != IGNORE_INDEX) == 0:
            continue  # nothing to learn within the first block_size tokens
        n = len(ids)
        rows_ids.append(ids + [pad] * (block_size - n))
        rows_labels.append(labels + [IGNORE_INDEX] * (block_size - n))
        rows_mask.append([1] * n + [0] * (block_size - n))
    if not rows_ids:
        raise UserError(
            f"no example has a response token within the first {block_size} tokens: "
            "raise block_size or shorten the prompts"
        )
    return Examples(
        torch.tensor(rows_ids, dtype=torch.long),
        torch.tensor(rows_labels, dtype=torch.long),
        torch.tensor(rows_mask, dtype=torch.long),
    )


def _text_examples(
    source: str, tokenizer: Any, block_size: int, text_field: str, split: str
) -> Examples:
    from forgetscale.corpus import load_documents, pack_documents

    docs = load_documents(source, text_field=text_field, split=split)
    blocks = pack_documents(docs, tokenizer, block_size)
    return Examples(blocks, blocks, None)


def load_examples(
    source: str,
    tokenizer: Any,
    *,
    block_size: int,
    fmt: str = "auto",
    fields: RecordFields = RecordFields(),
    split: str = "train",
    response_only: bool = True,
) -> tuple[Examples, str]:
    """Read task data into :class:`Examples`; returns them and the format used."""
    if fmt == "auto":
        fmt = detect_format(source, fields, split=split)
    if fmt == "text":
        return _text_examples(source, tokenizer, block_size, fields.text, split), fmt
    convs = _conversations(source, fmt, fields, split)
    return _chat_examples(convs, tokenizer, block_size, response_only), fmt


def split_heldout(examples: Examples, fraction: float) -> tuple[Examples, Examples]:
    """Split into (train, held-out) by a seed-independent permutation."""
    n = len(examples)
    n_held = max(1, round(n * fraction))
    if n - n_held < 1:
        raise UserError(
            f"task data has only {n} block(s)/example(s): too few to hold out a fraction "
            f"{fraction} for L_ft; add data, use a smaller block_size, or give heldout_data"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    held = perm[:n_held].sort().values
    train = perm[n_held:].sort().values
    return examples.select(train), examples.select(held)


def load_task_data(
    source: str,
    tokenizer: Any,
    *,
    block_size: int,
    fmt: str = "auto",
    fields: RecordFields = RecordFields(),
    split: str = "train",
    response_only: bool = True,
    heldout_source: str | None = None,
    heldout_fraction: float = 0.1,
) -> TaskData:
    """Training and held-out examples for a run (see the module docs)."""
    common = {"block_size": block_size, "fields": fields, "response_only": response_only}
    examples, used = load_examples(source, tokenizer, fmt=fmt, split=split, **common)
    if heldout_source:
        heldout, _ = load_examples(heldout_source, tokenizer, fmt=used, **common)
        return TaskData(examples, heldout, used)
    train, heldout = split_heldout(examples, heldout_fraction)
    return TaskData(train, heldout, used)
