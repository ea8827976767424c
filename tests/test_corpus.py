"""Corpus loading and packing exactly as docs/design.md defines them."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forgetscale.corpus import corpus_hash, load_documents, pack_documents
from forgetscale.errors import UserError
from forgetscale.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def test_packing_follows_the_definition(tokenizer):
    docs = ["def f(x):\n    return x", "import os", "class A: pass"]
    ids = []
    for doc in docs:  # independent: one document at a time, EOS after each
        ids += tokenizer.encode(doc, add_special_tokens=False) + [tokenizer.eos_token_id]
    blocks = pack_documents(docs, tokenizer, 5)
    n = len(ids) // 5
    assert blocks.shape == (n, 5)
    assert blocks.flatten().tolist() == ids[: n * 5]  # the partial block is dropped


def test_corpus_shorter_than_one_block_is_refused(tokenizer):
    with pytest.raises(UserError, match="shorter than one block"):
        pack_documents(["tiny"], tokenizer, 512)


def test_file_formats(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    sub = tmp_path / "folder"
    sub.mkdir()
    (sub / "2.txt").write_text("second")
    (sub / "1.txt").write_text("first")
    (sub / "skip.md").write_text("not text corpus")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"body": "x1"}) + "\n\n" + json.dumps({"body": "x2"}) + "\n")
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["p1", "", "p2"]}), parquet)

    assert load_documents(str(tmp_path / "a.txt")) == ["first document"]
    assert load_documents(str(sub)) == ["first", "second"]
    assert load_documents(str(jsonl), text_field="body") == ["x1", "x2"]
    assert load_documents(str(parquet)) == ["p1", "p2"]
    with pytest.raises(UserError, match="no field 'text'"):
        load_documents(str(jsonl))


@pytest.mark.parametrize(
    "content, message",
    [("", "empty"), ("   \n", "empty"), ('{"text": "ok"}\nnot json\n', "not valid JSON")],
)
def test_bad_jsonl(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_documents(str(path))


def test_embedded_pydoc_corpus_is_stable():
    docs = load_documents("pydoc")
    assert len(docs) > 50
    assert corpus_hash(docs) == corpus_hash(load_documents("pydoc"))
    assert corpus_hash(docs) != corpus_hash(docs[::-1])


def test_unknown_source_lists_the_embedded_corpora():
    with pytest.raises(UserError, match="pydoc, shakespeare"):
        load_documents("no-such-corpus.txt")
