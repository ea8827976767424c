"""Corpora to documents, documents to token blocks (docs/design.md, "Exact definitions").

A corpus *source* is one of:

- an embedded corpus name (``pydoc``, ``shakespeare``; see :mod:`forgetscale.embedded_corpora`),
- a ``.txt`` file (one document), a folder of ``.txt`` files (one document per
  file, sorted by path), a ``.jsonl`` or ``.parquet`` file (one document per
  record, from field ``text`` unless ``text_field`` names another),
- ``hf:NAME`` or ``hf:NAME:CONFIG``: a Hugging Face dataset (needs ``datasets``
  and a network), field ``text_field`` of split ``split``.

Packing: each document is tokenized without special tokens and followed by the
EOS token; documents are concatenated and cut into non-overlapping blocks of
``block_size`` tokens; a final partial block is dropped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forgetscale.embedded_corpora import EMBEDDED_CORPORA
from forgetscale.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class Corpus:
    """Documents plus where they came from (recorded in reference fingerprints)."""

    source: str
    documents: list[str]

    @property
    def sha256(self) -> str:
        return corpus_hash(self.documents)


def corpus_hash(documents: list[str]) -> str:
    """SHA-256 over the documents, each prefixed by its length (order matters)."""
    h = hashlib.sha256()
    for doc in documents:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def load_documents(
    source: str,
    *,
    text_field: str = "text",
    split: str = "train",
    max_documents: int | None = None,
) -> list[str]:
    """Read the documents of a corpus source (see module docs). Empty documents are dropped."""
    check_split(source, split)
    if source in EMBEDDED_CORPORA:
        docs = EMBEDDED_CORPORA[source].load()
    elif source.startswith("hf:"):
        docs = _load_hf(source[3:], text_field, split)
    else:
        docs = _load_path(Path(source).expanduser(), text_field)
    docs = [d for d in docs if d and d.strip()]
    if max_documents is not None:
        docs = docs[:max_documents]
    if not docs:
        raise UserError(f"corpus {source} is empty (no non-empty documents)")
    return docs


def load_corpus(source: str, **kwargs: Any) -> Corpus:
    return Corpus(source, load_documents(source, **kwargs))


def _load_path(path: Path, text_field: str) -> list[str]:
    if not path.exists():
        names = ", ".join(EMBEDDED_CORPORA)
        raise UserError(
            f"corpus not found: {path} (not a file, folder or embedded corpus: {names})"
        )
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"corpus folder {path} has no .txt files")
        return [_read_text(p) for p in files]
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [_read_text(path)]
    if suffix in (".jsonl", ".parquet"):
        return _record_texts(path, text_field)
    raise UserError(f"unsupported corpus file {path}: use .txt, .jsonl, .parquet or a folder")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``.jsonl`` (one JSON object per line) or ``.parquet`` file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = []
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:  # line by line, so an error names the line (a BOM on line 1 is fine)
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise UserError(
                        f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start} "
                        "of the line); JSONL files are UTF-8"
                    ) from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path}:{lineno}: expected a JSON object per line")
                records.append(record)
        return records
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises ArrowInvalid and friends
            raise UserError(f"could not read parquet file {path}: {exc}") from None
    raise UserError(f"records must come from a .jsonl or .parquet file, got {path}")


def _record_texts(path: Path, text_field: str) -> list[str]:
    texts = []
    for number, record in enumerate(read_records(path), 1):
        if text_field not in record:
            raise UserError(
                f"{path}: record {number} has no field {text_field!r} (choose with --text-field)"
            )
        value = record[text_field]
        if value is None:
            continue
        if not isinstance(value, str):
            raise UserError(
                f"{path}: record {number}: field {text_field!r} holds a value of type "
                f"{type(value).__name__} ({_short(value)}), not a string of text"
            )
        texts.append(value)
    return texts


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def check_split(source: str, split: str | None, *, option: str = "split") -> None:
    """A split other than ``train`` is for an ``hf:`` data set; a local file or an embedded
    corpus has none, and silently reading all of it would be wrong: refused naming ``option``."""
    if split in (None, "train") or source.startswith("hf:"):
        return
    raise UserError(
        f"{option} {split!r} given for {source}, which has no splits (only hf: data sets "
        "do); leave it out or point at the file that holds that split"
    )


def _hf_dataset(name: str, split: str) -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise UserError("hf: corpora need the datasets package: pip install datasets") from exc
    from forgetscale.hub import go_offline, hub_unreachable

    dataset, _, config = name.partition(":")
    unreachable = hub_unreachable()
    if unreachable:  # read the cache at once rather than after half a minute of retries
        go_offline()
    try:
        return datasets.load_dataset(dataset, config or None, split=split)
    except Exception as exc:  # network, missing dataset, bad split ...
        if unreachable:
            raise UserError(
                f"data set {name} (split {split}) is not in the local cache and the Hugging "
                f"Face hub cannot be reached ({unreachable})"
            ) from exc
        raise UserError(f"could not load dataset {name} split {split}: {exc}") from exc


def read_source_records(source: str, *, split: str = "train") -> list[dict[str, Any]]:
    """The records of a ``.jsonl``/``.parquet`` file or of split ``split`` of ``hf:NAME``."""
    if source.startswith("hf:"):
        return _hf_dataset(source[3:], split).to_list()
    check_split(source, split)
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"data not found: {source}")
    return read_records(path)


def _load_hf(name: str, text_field: str, split: str) -> list[str]:
    ds = _hf_dataset(name, split)
    if text_field not in ds.column_names:
        raise UserError(
            f"dataset {name} has no column {text_field!r} (columns: {', '.join(ds.column_names)})"
        )
    return [str(v) for v in ds[text_field]]


def tokenize_documents(documents: list[str], tokenizer: Any) -> list[int]:
    """Token ids of the documents, each without special tokens and followed by EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the tokenizer has no EOS token, needed to join documents")
    ids: list[int] = []
    for encoded in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(eos)
    return ids


def pack_documents(documents: list[str], tokenizer: Any, block_size: int) -> torch.Tensor:
    """Pack documents into a ``[n_blocks, block_size]`` LongTensor (partial block dropped)."""
    import torch

    if block_size < 2:
        raise UserError(f"block size must be at least 2 tokens, got {block_size}")
    ids = tokenize_documents(documents, tokenizer)
    n_blocks = len(ids) // block_size
    if n_blocks == 0:
        raise UserError(
            f"corpus has {len(ids)} tokens, shorter than one block of {block_size}; "
            "use a smaller --block-size or more text"
        )
    return torch.tensor(ids[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)


def evaluation_block_index(n_blocks: int, block_size: int, max_tokens: int | None) -> torch.Tensor:
    """Which of a packed corpus's ``n_blocks`` blocks an evaluation with a budget of
    ``max_tokens`` uses: ``max_tokens // block_size`` evenly spaced blocks (at least one, all of
    them when the budget covers the corpus or is None)."""
    import torch

    if max_tokens is None:
        return torch.arange(n_blocks)
    n = max(1, min(n_blocks, max_tokens // block_size))
    if n == n_blocks:
        return torch.arange(n_blocks)
    return torch.linspace(0, n_blocks - 1, n).round().long().unique()


def document_ends(documents: list[str], tokenizer: Any) -> torch.Tensor:
    """Where each document ends (exclusive, its EOS included) in the packed token stream of
    :func:`pack_documents`."""
    import torch

    lengths = [len(e) + 1 for e in tokenizer(documents, add_special_tokens=False)["input_ids"]]
    return torch.tensor(lengths, dtype=torch.long).cumsum(0)


def documents_in_blocks(ends: torch.Tensor, block_size: int, block_index: torch.Tensor) -> set[int]:
    """Indices of the documents (ending at ``ends``, :func:`document_ends`) that have at least
    one token in the packed blocks ``block_index``."""
    import torch

    starts = torch.cat([torch.zeros(1, dtype=torch.long), ends[:-1]])
    used: set[int] = set()
    for b in block_index.tolist():
        lo, hi = b * block_size, (b + 1) * block_size
        used.update(torch.nonzero((starts < hi) & (ends > lo)).flatten().tolist())
    return used
