"""The built-in cloze probe: does the model still know its general text?

Built deterministically from the embedded forgetting corpus ``pydoc`` (CPython's
documentation topics), which no run fine-tunes on:

1. Split each topic into paragraphs and drop indented ones (code, grammar, tables);
   split the prose into sentences; keep plain sentences of 8-30 words that start
   with a capital letter, end with a full stop and hold only letters, spaces and
   ``,;'-``.
2. The blank is the sentence's last word when it is lower-case, at least 4
   letters and not a stop word; the context is the sentence before it.
3. Three distractors are whole lower-case words of the same corpus, of the right word's length
   +-1, that occur at least 5 times in the corpus and not in the sentence,
   drawn with a random generator seeded by the sentence's SHA-256; the four
   choices are sorted alphabetically.
4. Sentences are taken in corpus order, deduplicated, up to 300 items (278 on
   Python 3.11's corpus).

Each item is scored like an lm-eval multiple-choice question whose context is the
sentence prefix (no "Question:" template): the summed log-likelihood of
``" word"`` after the prefix. ``acc`` is the share of sentences completed with
the documentation's own word; ``agreement`` the share where the fine-tuned model
picks what the base picks.

``pydoc_data.topics`` changes between Python releases, so the items built on the
release that made them ship as ``data/probe_pydoc.jsonl`` (with the corpus hash
they came from); the suite reads that file, and a test checks its hash and that
building again on the same corpus gives the same items.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from importlib import resources
from typing import Any

from forgetscale.downstream.multiple_choice import MCItem, MultipleChoiceSuite
from forgetscale.downstream.registry import SuiteOptions, register_suite

PROBE_FILE = "probe_pydoc.jsonl"
PROBE_TEMPLATE = "{question}"
MAX_ITEMS = 300
N_DISTRACTORS = 3
MIN_WORD_COUNT = 5

STOP_WORDS = frozenset(
    """also been does done each either else even from have here into just like made make
    many more most much must only other same some such than that their them then there
    these they this those used very were what when where which while will with would your
    about above after again against before being below between both could during further
    itself should through under until upon whom whose why""".split()
)

_PLAIN = re.compile(r"[A-Z][A-Za-z ,;'\-]+\.")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_TOKEN = re.compile(r"[A-Za-z0-9_\\]+")


def _prose_sentences(documents: list[str]) -> list[str]:
    sentences = []
    for doc in documents:
        for para in re.split(r"\n\s*\n", doc):
            if para.startswith(" ") or "\n  " in para:
                continue
            sentences.extend(_SENTENCE_SPLIT.split(" ".join(para.split())))
    return sentences


def build_cloze_probe(documents: list[str], *, max_items: int = MAX_ITEMS) -> list[MCItem]:
    """Cloze items from ``documents`` by the rules in the module docs (deterministic)."""
    counts = Counter(
        w for doc in documents for w in _TOKEN.findall(doc) if w.isalpha() and w.islower()
    )
    vocabulary = sorted(w for w, c in counts.items() if c >= MIN_WORD_COUNT and len(w) >= 3)
    by_length: dict[int, list[str]] = {}
    for word in vocabulary:
        by_length.setdefault(len(word), []).append(word)
    items: list[MCItem] = []
    seen: set[str] = set()
    for sentence in _prose_sentences(documents):
        if sentence in seen or not _PLAIN.fullmatch(sentence):
            continue
        words = sentence[:-1].split()
        if not 8 <= len(words) <= 30:
            continue
        target = words[-1]
        if not (target.isalpha() and target.islower() and len(target) >= 4) or target in STOP_WORDS:
            continue
        seen.add(sentence)
        in_sentence = {w.lower().strip(",;'-") for w in words}
        pool = [
            w
            for n in (len(target) - 1, len(target), len(target) + 1)
            for w in by_length.get(n, [])
            if w not in in_sentence and w not in STOP_WORDS
        ]
        if len(pool) < N_DISTRACTORS:
            continue
        seed = int.from_bytes(hashlib.sha256(sentence.encode("utf-8")).digest()[:8], "little")
        distractors = random.Random(seed).sample(pool, N_DISTRACTORS)
        choices = tuple(sorted([target, *distractors]))
        prefix = " ".join(words[:-1])
        items.append(MCItem(prefix, choices, choices.index(target), template=PROBE_TEMPLATE))
        if len(items) >= max_items:
            break
    return items


def build_pydoc_probe() -> tuple[list[MCItem], str]:
    """The probe built from this Python's ``pydoc`` corpus, with that corpus's hash."""
    from forgetscale.corpus import corpus_hash, load_documents

    documents = load_documents("pydoc")
    return build_cloze_probe(documents), corpus_hash(documents)


def load_probe() -> tuple[list[MCItem], dict[str, Any]]:
    """The shipped probe items and their provenance header."""
    text = resources.files("forgetscale.downstream").joinpath("data", PROBE_FILE).read_text("utf-8")
    lines = text.splitlines()
    header = json.loads(lines[0])["probe"]
    items = []
    for line in lines[1:]:
        record = json.loads(line)
        items.append(
            MCItem(
                record["question"],
                tuple(record["choices"]),
                record["answer"],
                template=PROBE_TEMPLATE,
            )
        )
    return items, header


def _probe_suite(arg: str | None, options: SuiteOptions) -> MultipleChoiceSuite:
    items, header = load_probe()
    return MultipleChoiceSuite(
        "probe",
        items,
        f"the built-in pydoc cloze probe (corpus sha {header['corpus_sha256'][:12]})",
        options,
    )


register_suite(
    "probe",
    _probe_suite,
    help="built-in cloze probe: 278 sentences of CPython's documentation, last word vs 3 "
    "distractors from the same corpus (offline)",
)
