"""The built-in cloze probe: the same items every time."""

from __future__ import annotations

import pytest

from forgetscale.downstream.multiple_choice import items_hash
from forgetscale.downstream.probe import (
    PROBE_TEMPLATE,
    build_cloze_probe,
    build_pydoc_probe,
    load_probe,
)

# sha256 of the shipped items (questions, choices, answers, template), in order
PROBE_ITEMS_SHA256 = "c85b424f4bc018107444a98d9f34617cef219b1301294d8b4fcc8b7f8eb44f5c"


def test_shipped_probe_hash_and_shape():
    items, header = load_probe()
    assert items_hash(items) == PROBE_ITEMS_SHA256 == header["items_sha256"]
    assert len(items) >= 200
    assert len({item.question for item in items}) == len(items)
    for item in items:
        assert item.template == PROBE_TEMPLATE
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        assert item.choices == tuple(sorted(item.choices))
        right = item.choices[item.answer]
        assert right.isalpha() and right.islower()
        for word in item.choices:
            assert abs(len(word) - len(right)) <= 1


def test_building_again_on_the_same_corpus_gives_the_shipped_items():
    items, corpus_sha = build_pydoc_probe()
    _, header = load_probe()
    if corpus_sha != header["corpus_sha256"]:
        pytest.skip("this Python's pydoc topics differ from the release the probe was built on")
    assert items_hash(items) == PROBE_ITEMS_SHA256


def test_builder_rules_on_a_small_corpus():
    filler = " ".join(["variables functions arguments operators"] * 5)  # distractor pool
    docs = [
        "The interpreter reads the file and then executes every statement.\n\n"
        "    indented code is skipped.\n\n"
        "Short one.\n\nThis sentence ends with a Capital Word.\n\n" + filler
    ]
    items = build_cloze_probe(docs)
    assert len(items) == 1
    item = items[0]
    assert item.question == "The interpreter reads the file and then executes every"
    assert item.choices[item.answer] == "statement"
    assert set(item.choices) - {"statement"} <= {"variables", "functions", "arguments", "operators"}
    assert build_cloze_probe(docs) == items  # deterministic
