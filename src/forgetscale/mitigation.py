"""Forgetting less: replay data mixed into the updates, and a KL-to-base penalty.

The pieces both ways of training use (``forgetscale train`` and a user's own ``Trainer``,
:mod:`forgetscale.trainer_mitigation`):

- :func:`replay_blocks_before` / :func:`replay_count`: how many of an update's blocks are
  replay blocks. With fraction p and B blocks per update, update s (0-based) holds
  ``round((s+1)·p·B) − round(s·p·B)`` of them (half rounded up, p taken as the decimal it
  is written as, in exact rational arithmetic): after s updates exactly ``round(s·p·B)``
  replay blocks have been used, so the long-run share is p and no update is off by more
  than one block.
- :func:`replay_documents`: a replay corpus's documents; ``pydoc-replay`` is the part of the
  embedded ``pydoc`` corpus that the forgetting evaluation never touches.
- :func:`evaluation_documents` and :func:`check_no_leak`: replay (or KL) data that holds a
  document of the forgetting evaluation's blocks is refused, so no evaluation text is trained on.

The KL term itself is :func:`forgetscale.metrics.kl_to_base` (the lumped top-K KL of the
definitions), against a reference of the blocks it is taken on.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

from forgetscale.errors import UserError

REPLAY_PARTS: dict[str, str] = {"pydoc-replay": "pydoc"}
"""Replay parts of embedded corpora: name -> the corpus whose never-evaluated documents it holds."""


def _exact(fraction: float) -> Fraction:
    return Fraction(repr(float(fraction)))


def replay_blocks_before(step: int, fraction: float, batch_size: int) -> int:
    """Replay blocks in updates ``0 .. step-1``: ``round(step · p · B)``, half up, exactly."""
    return math.floor(_exact(fraction) * batch_size * step + Fraction(1, 2))


def replay_count(step: int, fraction: float, batch_size: int) -> int:
    """Replay blocks in update ``step`` (0-based) out of its ``batch_size`` blocks."""
    return replay_blocks_before(step + 1, fraction, batch_size) - replay_blocks_before(
        step, fraction, batch_size
    )


# ------------------------------------------------------------------------------------------
# which documents the forgetting evaluation reads, and replay corpora that avoid them


def evaluation_documents(
    source: str,
    tokenizer: Any,
    *,
    block_size: int,
    max_tokens: int | None,
    text_field: str = "text",
    split: str = "train",
) -> list[str]:
    """The documents of corpus ``source`` that the forgetting evaluation's blocks touch (the
    blocks :meth:`~forgetscale.reference.ReferenceCache.find_or_build` keeps)."""
    docs = _documents(source, text_field=text_field, split=split)
    return [docs[i] for i in sorted(_evaluated(docs, tokenizer, block_size, max_tokens))]


def _documents(source: str, **kwargs: Any) -> list[str]:
    from forgetscale.corpus import load_documents

    return load_documents(source, **kwargs)


def _evaluated(
    docs: list[str], tokenizer: Any, block_size: int, max_tokens: int | None
) -> set[int]:
    from forgetscale.corpus import document_ends, documents_in_blocks, evaluation_block_index

    ends = document_ends(docs, tokenizer)
    index = evaluation_block_index(int(ends[-1]) // block_size, block_size, max_tokens)
    return documents_in_blocks(ends, block_size, index)


def replay_documents(
    source: str,
    tokenizer: Any,
    *,
    forgetting_block_size: int,
    forgetting_max_tokens: int | None,
    text_field: str = "text",
    split: str = "train",
) -> list[str]:
    """The documents of replay corpus ``source``. A name in :data:`REPLAY_PARTS` (such as
    ``pydoc-replay``) is every document of its corpus that has no token in the evaluation
    blocks of that corpus at this block size and token budget, in the corpus's order."""
    if source in REPLAY_PARTS:
        docs = _documents(REPLAY_PARTS[source])
        used = _evaluated(docs, tokenizer, forgetting_block_size, forgetting_max_tokens)
        rest = [d for i, d in enumerate(docs) if i not in used]
        if not rest:
            raise UserError(f"replay corpus {source} is empty: the evaluation reads every document")
        return rest
    return _documents(source, text_field=text_field, split=split)


_SPACE = re.compile(r"\s+")
CONTAINMENT_MIN_CHARS = 200
"""Evaluation documents at least this long are also refused inside a longer training text (a
file that concatenates them); shorter ones only when a training document equals them."""


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def check_no_leak(what: str, source: str, documents: list[str], evaluated: list[str]) -> None:
    """Refuse training ``documents`` (from ``source``, used as ``what``) that hold a document
    the forgetting evaluation reads: equal to one (whitespace aside), or, for evaluation
    documents of :data:`CONTAINMENT_MIN_CHARS` or more, containing one."""
    wanted = {_normal(d) for d in evaluated}
    wanted.discard("")
    mine = [_normal(d) for d in documents]
    shared = wanted & set(mine)
    if not shared:
        joined = "\x00".join(mine)
        shared = {d for d in wanted if len(d) >= CONTAINMENT_MIN_CHARS and d in joined}
    if shared:
        example = min(shared, key=len)[:60]
        raise UserError(
            f"{what} {source} shares {len(shared)} document(s) with the forgetting evaluation "
            f"blocks (e.g. {example!r}...): training on them would leak the evaluation; use "
            "data the evaluation never reads (pydoc-replay for the pydoc corpus)"
        )
