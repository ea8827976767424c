"""Shared fixtures: tiny random models built from a config, with a real tokenizer, offline.

The tokenizer is a byte-level BPE trained in a fraction of a second on CPython's
documentation topics, so every test has real text -> ids behaviour without the
network. Models are a 2-layer Llama with hidden size 32.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

TINY_CONTEXT = 128

# pytest captures log records at every level; torch.compile's structured trace logger would
# then serialise each compiled graph into the capture (minutes in the compiled-run tests)
logging.getLogger("torch.__trace").setLevel(logging.WARNING)


def train_tiny_tokenizer(vocab_size: int = 320, seed_text_topics: int = 40):
    """A byte-level BPE tokenizer trained on pydoc topics, wrapped for transformers."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [topics[k] for k in sorted(topics)[:seed_text_topics]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def make_tiny_model(vocab_size: int, *, hidden: int = 32, layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_CONTEXT,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def save_tiny_model_dir(
    path: Path, *, vocab_size: int = 320, hidden: int = 32, seed: int = 0
) -> Path:
    tokenizer = train_tiny_tokenizer(vocab_size)
    model = make_tiny_model(len(tokenizer), hidden=hidden, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_lora_adapter(base_dir: Path, out: Path, *, rank: int = 4, seed: int = 1) -> Path:
    """A LoRA on all linear layers with random (non-zero) B, so it changes the model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A local model folder: tiny random Llama (hidden 32, 2 layers, context 128) + BPE tokenizer."""
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory) -> Path:
    """A second tiny model with a different tokenizer (vocab 300) and hidden size 48."""
    return save_tiny_model_dir(tmp_path_factory.mktemp("other-model"), vocab_size=300, hidden=48)


@pytest.fixture(scope="session")
def tiny_lora_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter (r=4, all linear layers, random B) for ``tiny_model_dir``."""
    return save_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("tiny-lora"))


@pytest.fixture(scope="session")
def general_jsonl(tmp_path_factory) -> Path:
    """A small general-text corpus as .jsonl ({"text": ...} per line): pydoc topics."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "general.jsonl"
    with path.open("w") as fh:
        for key in sorted(topics)[40:52]:
            fh.write(json.dumps({"text": topics[key][:1500]}) + "\n")
    return path


@pytest.fixture(scope="session")
def task_jsonl(tmp_path_factory) -> Path:
    """Task text, {"text": ...} per line: pydoc topics other than the general corpus's."""
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("task") / "task.jsonl"
    with path.open("w") as fh:
        for key in sorted(topics)[:30]:
            fh.write(json.dumps({"text": topics[key][:1200]}) + "\n")
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_model_dir, task_jsonl, general_jsonl) -> Path:
    """A folder holding the shipped minimal config and the files it names (the cwd)."""
    from helpers import MINIMAL

    (tmp_path / "tiny-model").symlink_to(tiny_model_dir, target_is_directory=True)
    (tmp_path / "task.jsonl").write_text(task_jsonl.read_text())
    (tmp_path / "general.jsonl").write_text(general_jsonl.read_text())
    (tmp_path / "run.yaml").write_text(MINIMAL)
    monkeypatch.chdir(tmp_path)
    return tmp_path
