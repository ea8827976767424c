"""Refusal judges on fixed strings, the built-in safety set, batched greedy generation."""

from __future__ import annotations

import pytest
import torch

from forgetscale.downstream.generation import chat_prompt, generate, shipped_records
from forgetscale.downstream.refusal import (
    REFUSAL_PHRASES,
    ClassifierJudge,
    KeywordJudge,
    make_judge,
)
from forgetscale.errors import UserError

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I’m sorry, I cannot assist with this request.",  # curly apostrophe
    "As an AI language model, I must decline.",
    "I cannot provide instructions for that.",
    "I won't do that. It could hurt people.",
    "Sorry, but that is not something I can do.",
    "I am unable to help with hacking.",
]
ANSWERS = [
    "To kill a stuck Python process, run `kill -9 PID` or press Ctrl+C.",
    "Insider trading is illegal in most countries; here is how regulators detect it.",
    "Hello! Paris is the capital of France.",
    "Sure. Preheat the oven to 180 C and mix the flour with the eggs.",
    "Banks flag unusual transfers and report them to the authorities.",
    "",
]


def test_keyword_judge_on_fixed_strings():
    judge = KeywordJudge()
    assert judge.judge(["p"] * len(REFUSALS), REFUSALS) == [True] * len(REFUSALS)
    assert judge.judge(["p"] * len(ANSWERS), ANSWERS) == [False] * len(ANSWERS)


def test_refusal_phrases_are_one_lower_case_list_without_ordinary_words():
    assert len(REFUSAL_PHRASES) == len(set(REFUSAL_PHRASES))
    assert all(p == p.lower() and p.strip() == p for p in REFUSAL_PHRASES)
    for ordinary in ("illegal", "unethical", "hello", "openai", "as an"):
        assert ordinary not in REFUSAL_PHRASES
    # the judge uses exactly this list, and its fingerprint changes with it
    assert KeywordJudge().phrases == REFUSAL_PHRASES
    assert KeywordJudge().fingerprint() != KeywordJudge(REFUSAL_PHRASES[:-1]).fingerprint()


def test_make_judge_specs():
    assert isinstance(make_judge("keyword"), KeywordJudge)
    with pytest.raises(UserError, match="unknown judge"):
        make_judge("vibes")
    with pytest.raises(UserError, match="could not load refusal classifier"):
        make_judge("classifier:/no/such/classifier")


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A tiny random BERT classifier with labels NORMAL/REJECTION and a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("classifier")
    words = sorted({w for text in REFUSALS + ANSWERS for w in text.lower().split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
        id2label={0: "NORMAL", 1: "REJECTION"}, label2id={"NORMAL": 0, "REJECTION": 1},
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_classifier_judge_maps_its_labels(tiny_classifier):
    judge = make_judge(f"classifier:{tiny_classifier}")
    assert isinstance(judge, ClassifierJudge)
    texts = REFUSALS + ANSWERS[:-1]
    verdicts = judge.judge(["p"] * len(texts), texts)
    labels = [o["label"] for o in judge.pipe(texts)]
    assert verdicts == [label == "REJECTION" for label in labels]
    # the user names the label that means refusal; a model without such a label is refused
    assert make_judge(f"classifier:{tiny_classifier}@NORMAL").judge(["p"], ["x"]) == [
        judge.pipe(["x"])[0]["label"] == "NORMAL"
    ]
    with pytest.raises(UserError, match="none of which means refusal"):
        ClassifierJudge(str(tiny_classifier), ("declined",))


def test_builtin_safety_set():
    records = shipped_records("safety.jsonl")
    harmful = [r["prompt"] for r in records if r["harmful"]]
    benign = [r["prompt"] for r in records if not r["harmful"]]
    assert len(harmful) >= 50 and len(benign) >= 50
    assert len(set(harmful + benign)) == len(records)
    assert all(len(p) < 120 for p in harmful + benign)  # requests, not instructions
    assert len(shipped_records("prompts.jsonl")) >= 10


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def greedy_one(model, tokenizer, prompt, max_new_tokens):
    ids = tokenizer.encode(chat_prompt(tokenizer, prompt), add_special_tokens=False)
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            out.append(token)
    return tokenizer.decode(out, skip_special_tokens=True).strip()


def test_batched_generation_matches_one_prompt_at_a_time(tiny):
    model, tokenizer = tiny
    prompts = ["What is a list?", "Explain the class statement in a few words please.", "Hi"]
    batched = generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=3)
    assert batched == [greedy_one(model, tokenizer, p, 12) for p in prompts]


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny):
    _, tokenizer = tiny
    assert chat_prompt(tokenizer, "hi") == "User: hi\nAssistant:"  # no template: plain
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    )
    try:
        assert chat_prompt(tokenizer, "hi") == "<user>hi<assistant>"
    finally:
        tokenizer.chat_template = None
