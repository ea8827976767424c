"""Fine-tuning data: chat and prompt/response examples, response-only loss."""

from __future__ import annotations

import json

import pytest
from helpers import tiny_config

from forgetscale.errors import UserError
from forgetscale.training import train

# ------------------------------------------------------------------------------------------
# chat / instruction data


def test_prompt_response_trains_on_response_tokens_only(workdir, tiny_model_dir):
    from forgetscale.finetune_data import IGNORE_INDEX, encode_conversation, load_task_data
    from forgetscale.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    ids, labels = encode_conversation(
        tok,
        [
            {"role": "user", "content": "What is a list?"},
            {"role": "assistant", "content": "A mutable sequence."},
        ],
    )
    targets = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX])
    assert "mutable sequence." in targets and "What is" not in targets
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id

    with (workdir / "chat.jsonl").open("w") as fh, (workdir / "msgs.jsonl").open("w") as fm:
        for i in range(20):
            fh.write(
                json.dumps({"prompt": f"Question {i}?", "response": f"Answer number {i}."}) + "\n"
            )
            fm.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": "Be brief."},
                            {"role": "user", "content": f"Say {i}"},
                            {"role": "assistant", "content": f"I say {i}"},
                            {"role": "user", "content": "Again"},
                            {"role": "assistant", "content": f"Again {i}"},
                        ]
                    }
                )
                + "\n"
            )
    data = load_task_data(str(workdir / "msgs.jsonl"), tok, block_size=64)
    assert data.format == "messages"
    example = data.train.input_ids[0][data.train.labels[0] != IGNORE_INDEX]
    assert "I say" in tok.decode(example) and "Again" in tok.decode(example)
    assert "Be brief" not in tok.decode(example) and "Say" not in tok.decode(example)
    data = load_task_data(str(workdir / "chat.jsonl"), tok, block_size=32)
    assert data.format == "prompt_response" and len(data.train) + len(data.heldout) == 20
    assert data.train.attention_mask is not None
    masked = (data.train.labels == IGNORE_INDEX).sum()
    assert 0 < masked < data.train.labels.numel()
    result = train(
        tiny_config(
            workdir,
            task_data="chat.jsonl",
            task_format="prompt_response",
            max_steps=2,
            eval_steps=[0, 2],
        )
    )
    assert result.status == "finished"


def test_prompt_and_response_fields_can_be_named(workdir, tiny_model_dir):
    """Instruction sets name their fields differently (OpenOrca: question/response)."""
    from transformers import AutoTokenizer

    from forgetscale.finetune_data import RecordFields, load_task_data

    rows = [{"question": f"What is {i} + {i}?", "response": f"It is {2 * i}."} for i in range(20)]
    (workdir / "orca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    fields = RecordFields(prompt="question", response="response")
    data = load_task_data(str(workdir / "orca.jsonl"), tok, block_size=32, fields=fields)
    assert data.format == "prompt_response" and len(data.train) + len(data.heldout) == 20
    with pytest.raises(UserError, match="'prompt'\\+'response'"):
        load_task_data(str(workdir / "orca.jsonl"), tok, block_size=32)


def test_keys_added_later_keep_earlier_run_ids(workdir):
    """A run id includes a later key only when it is set to another value than its default."""
    plain = tiny_config(workdir)
    assert "forgetting_split" not in plain.result_dict()
    assert tiny_config(workdir, forgetting_split="train").run_id == plain.run_id
    assert tiny_config(workdir, forgetting_split="test").run_id != plain.run_id
    assert tiny_config(workdir, prompt_field="question").run_id != plain.run_id
