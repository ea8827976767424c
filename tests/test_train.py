"""``forgetscale train`` on tiny random models: methods, P, store, resume, divergence, bad inputs."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from forgetscale.cli import main
from forgetscale.config import build_config
from forgetscale.errors import UserError
from forgetscale.store import EXPORT_COLUMNS, read_measurements
from forgetscale.training import train
from forgetscale.training.checkpoint import (
    Progress,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from forgetscale.training.methods import apply_method
from forgetscale.training.optim import batch_indices, lr_factor, make_optimizer, make_scheduler

# the minimal config of issue 3, as shipped in configs/ (it must run as it is)
MINIMAL = (Path(__file__).resolve().parent.parent / "configs" / "minimal.yaml").read_text()


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
    """A folder holding the issue's minimal config and the files it names."""
    (tmp_path / "tiny-model").symlink_to(tiny_model_dir, target_is_directory=True)
    (tmp_path / "task.jsonl").write_text(task_jsonl.read_text())
    (tmp_path / "general.jsonl").write_text(general_jsonl.read_text())
    (tmp_path / "run.yaml").write_text(MINIMAL)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _config(workdir: Path, **overrides):
    import yaml

    values = yaml.safe_load(MINIMAL)
    values.update(progress=False, forgetting_max_tokens=1024)
    values.update(overrides)
    return build_config(values, base_dir=workdir)


# ------------------------------------------------------------------------------------------
# the minimal config through the command line


def test_minimal_config_runs_and_rerun_writes_nothing(workdir, capsys):
    assert main(["train", "run.yaml"]) == 0
    out = capsys.readouterr()
    assert "P = 4,096" in out.err  # shown at start
    df = read_measurements(workdir / "results.db")
    assert list(df.columns) == list(EXPORT_COLUMNS)
    assert df.step.tolist() == [0, 1, 2, 4, 8, 12]
    assert (df.params_trained == 4096).all() and (df["rank"] == 4).all()
    first = df.iloc[0]
    assert abs(first.kl) < 1e-6 and first.agreement == 1.0 and math.isnan(first.train_loss)
    assert df.finetune_loss.iloc[-1] < df.finetune_loss.iloc[0]
    assert df.tokens_seen.tolist() == [0, 128, 256, 512, 1024, 1536]
    assert df.wall_s.is_monotonic_increasing
    assert not (workdir / "results.db.checkpoints").exists()  # cleaned up when finished

    # the same config again: nothing to do, nothing written twice
    assert main(["train", "run.yaml", "--progress=false"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    with sqlite3.connect(workdir / "results.db") as c:
        assert c.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 6
        assert c.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
        status, versions = c.execute("SELECT status, versions FROM runs").fetchone()
    assert status == "finished" and "peft" in json.loads(versions)

    # runs / export
    assert main(["runs", "--from", "results.db"]) == 0
    listing = capsys.readouterr().out
    assert "finished" in listing and "4,096" in listing and "12/12" in listing
    assert main(["export", "--from", "results.db", "--format", "csv", "--out", "m.csv"]) == 0
    assert (
        main(["export", "--from", "results.db", "--format", "parquet", "--out", "m.parquet"]) == 0
    )
    for back in (pd.read_csv("m.csv"), pd.read_parquet("m.parquet")):
        assert list(back.columns) == list(EXPORT_COLUMNS) and len(back) == 6
        assert back.forgetting_loss.tolist() == df.forgetting_loss.tolist()


def test_reference_is_reused_by_fingerprint(workdir, capsys):
    train(_config(workdir, max_steps=1, eval_steps=[0, 1]), log=print)
    train(_config(workdir, max_steps=2, eval_steps=[0, 2]), log=print)
    out = capsys.readouterr().out
    assert out.count("reference: building") == 1 and "reference: reusing" in out
    assert len(list((workdir / "references").glob("*.safetensors"))) == 1


# ------------------------------------------------------------------------------------------
# methods and P


def _tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


# Tiny Llama: hidden 32, intermediate 64, 2 layers, 4 heads of 8, 2 KV heads.
# Linear (in -> out): q 32->32, k 32->16, v 32->16, o 32->32, gate 32->64, up 32->64, down 64->32.
# LoRA adds r*(in+out) per module.
@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"method": "lora", "rank": 4}, 2 * 4 * (64 + 48 + 48 + 64 + 96 + 96 + 96)),
        ({"method": "lora", "rank": 8, "target_modules": "attention"}, 2 * 8 * (64 + 48 + 48 + 64)),
        ({"method": "lora", "rank": 2, "target_modules": "mlp"}, 2 * 2 * (96 + 96 + 96)),
        ({"method": "lora", "rank": 4, "layers": [1]}, 1 * 4 * 512),
        ({"method": "lora", "rank": 4, "target_modules": ["q_proj", "v_proj"]}, 2 * 4 * (64 + 48)),
        # IA3: a vector of out_features per attention module, of in_features per MLP module
        ({"method": "ia3"}, 2 * ((32 + 16 + 16 + 32) + (32 + 32 + 64))),
        # one block: attention 32*32+32*16+32*16+32*32, MLP 3*32*64, two RMSNorms of 32
        ({"method": "top-layers", "top_k_layers": 1}, 3072 + 6144 + 64),
        # everything but the (untied) embeddings and head, which are reported apart: + final norm
        ({"method": "full"}, 2 * (3072 + 6144 + 64) + 32),
    ],
)
def test_parameter_count_matches_hand_count(tiny_model_dir, workdir, overrides, expected):
    from forgetscale.models import count_parameters

    model = apply_method(_tiny(tiny_model_dir), _config(workdir, **overrides))
    counts = count_parameters(model)
    assert counts.trainable_non_embedding == expected
    if overrides["method"] == "full":
        vocab = model.config.vocab_size
        assert counts.trainable_embedding == vocab * 32 and counts.trainable_head == vocab * 32
    else:
        assert counts.trainable_embedding == counts.trainable_head == 0


def test_rslora_scaling_is_on_by_default(tiny_model_dir, workdir):
    model = apply_method(_tiny(tiny_model_dir), _config(workdir, rank=4, alpha=16))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(16 / math.sqrt(4))
    model = apply_method(_tiny(tiny_model_dir), _config(workdir, rank=4, alpha=16, rslora=False))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(16 / 4)


def test_unknown_target_module_lists_the_models_modules(tiny_model_dir, workdir):
    with pytest.raises(UserError, match=r"unknown target module.*qkv.*down_proj.*q_proj"):
        apply_method(_tiny(tiny_model_dir), _config(workdir, target_modules=["qkv"]))
    with pytest.raises(UserError, match="out of range"):
        apply_method(_tiny(tiny_model_dir), _config(workdir, layers=[5]))


@pytest.mark.parametrize(
    "overrides",
    [
        {"method": "ia3", "learning_rate": 1e-2},
        {"method": "top-layers", "optimizer": "adafactor", "schedule": "cosine", "warmup_steps": 1},
        {"method": "full", "schedule": "linear", "grad_accumulation": 2},
        {"method": "lora", "gradient_checkpointing": True, "dropout": 0.1},
    ],
)
def test_each_method_trains(workdir, overrides):
    result = train(_config(workdir, max_steps=3, eval_steps=[0, 3], **overrides))
    assert result.status == "finished"
    first, last = result.measurements
    assert first["kl"] == pytest.approx(0.0, abs=1e-6) and first["agreement"] == 1.0
    assert last["kl"] > 0 and last["train_loss"] > 0 and last["tokens_seen"] == 3 * 4 * 32


def test_grad_accumulation_matches_one_batch(workdir):
    a = train(_config(workdir, max_steps=2, eval_steps=[2], store="a.db"))
    b = train(_config(workdir, max_steps=2, eval_steps=[2], store="b.db", grad_accumulation=2))
    for key in ("finetune_loss", "forgetting_loss", "kl"):
        assert a.measurements[-1][key] == pytest.approx(b.measurements[-1][key], rel=1e-4)


# ------------------------------------------------------------------------------------------
# schedule, data order, checkpoints


def test_lr_schedules():
    assert [lr_factor(s, warmup=2, total=10, schedule="constant") for s in (0, 1, 5)] == [
        0.5,
        1.0,
        1.0,
    ]
    assert lr_factor(2, warmup=2, total=10, schedule="linear") == 1.0
    assert lr_factor(10, warmup=2, total=10, schedule="linear") == 0.0
    assert lr_factor(6, warmup=2, total=10, schedule="cosine") == pytest.approx(0.5)


def test_batch_indices_cover_each_epoch():
    seen = torch.cat([batch_indices(s, 10, 4, seed=3) for s in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(batch_indices(2, 10, 4, 3), batch_indices(2, 10, 4, 3))
    assert not torch.equal(batch_indices(0, 10, 4, 3), batch_indices(0, 10, 4, 4))


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_checkpoint_roundtrip_is_exact_and_pickle_free(
    tiny_model_dir, workdir, tmp_path, optimizer
):
    cfg = _config(workdir, optimizer=optimizer, schedule="cosine", warmup_steps=2)
    model = apply_method(_tiny(tiny_model_dir), cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    sched = make_scheduler(opt, cfg)
    x = torch.randint(0, 300, (2, 16))
    for _ in range(3):
        model(input_ids=x, labels=x).loss.backward()
        opt.step(), sched.step(), opt.zero_grad()
    save_checkpoint(tmp_path / "ck", "run-a", 3, model, opt, sched, Progress(tokens_seen=7))
    assert latest_checkpoint(tmp_path / "ck", "run-a").name == "step-000003"
    files = sorted(p.name for p in (tmp_path / "ck" / "step-000003").iterdir())
    assert files == [
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
        "trainable.safetensors",
    ]
    torch.manual_seed(123)  # a different RNG state, restored by the load
    model2 = apply_method(_tiny(tiny_model_dir), cfg)
    params2 = [p for p in model2.parameters() if p.requires_grad]
    opt2 = make_optimizer(params2, cfg)
    sched2 = make_scheduler(opt2, cfg)
    state = load_checkpoint(tmp_path / "ck" / "step-000003", model2, opt2, sched2)
    assert state.progress == Progress(tokens_seen=7) and state.step == 3
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr()
    # one more identical step on both gives identical weights
    for m, o in ((model, opt), (model2, opt2)):
        m(input_ids=x, labels=x).loss.backward()
        o.step()
    for p1, p2 in zip(params, params2, strict=True):
        assert torch.equal(p1, p2)


# ------------------------------------------------------------------------------------------
# resume after SIGKILL


def _train_cmd(cfg: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "forgetscale", "train", str(cfg), "--progress=false", *extra]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    """Really kill a training process mid-run, start it again, compare with an uninterrupted run."""
    from conftest import save_tiny_model_dir

    # a somewhat larger model so that the run lasts a few seconds after the first checkpoint
    model_dir = save_tiny_model_dir(tmp_path / "model", hidden=96)
    from pydoc_data.topics import topics

    keys = sorted(topics)
    with (tmp_path / "task.jsonl").open("w") as fh:
        for k in keys[:30]:
            fh.write(json.dumps({"text": topics[k][:3000]}) + "\n")
    with (tmp_path / "general.jsonl").open("w") as fh:
        for k in keys[-10:]:
            fh.write(json.dumps({"text": topics[k][:2000]}) + "\n")
    base = {
        "model": str(model_dir),
        "task_data": "task.jsonl",
        "forgetting_data": "general.jsonl",
        "rank": 4,
        "block_size": 64,
        "batch_size": 8,
        "learning_rate": 2e-3,
        "max_steps": 120,
        "eval_steps": [0, 1, 5, 10, 20, 40, 60, 80, 100, 120],
        "forgetting_max_tokens": 2048,
        "dropout": 0.1,  # uses the RNG during training: resume must restore it
        "seed": 7,
    }
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(
            "\n".join(f"{k}: {json.dumps(v)}" for k, v in {**base, "store": f"{name}.db"}.items())
        )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    # a: uninterrupted
    subprocess.run(_train_cmd(tmp_path / "a.yaml"), cwd=tmp_path, env=env, check=True)

    # b: killed with SIGKILL right after its checkpoint at step 10 appears, then resumed
    ck_root = tmp_path / "b.db.checkpoints"
    proc = subprocess.Popen(_train_cmd(tmp_path / "b.yaml"), cwd=tmp_path, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in ck_root.glob("*/step-*") if int(p.name[5:]) >= 10]
        if done:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(tmp_path / "b.db") as c:
        (status,) = c.execute("SELECT status FROM runs").fetchone()
        n_before = c.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    assert status == "running" and 4 <= n_before < len(base["eval_steps"])

    resumed = subprocess.run(
        _train_cmd(tmp_path / "b.yaml"),
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "resuming from the checkpoint at step" in resumed.stderr

    a = read_measurements(tmp_path / "a.db")
    b = read_measurements(tmp_path / "b.db")
    assert a.run_id.iloc[0] == b.run_id.iloc[0]  # store path is not part of the run id
    assert a.step.tolist() == b.step.tolist() == base["eval_steps"]
    cols = [
        "finetune_loss",
        "forgetting_loss",
        "forgetting_loss_soft",
        "kl",
        "agreement",
        "train_loss",
        "tokens_seen",
    ]
    diff = (a[cols].fillna(0) - b[cols].fillna(0)).abs().to_numpy().max()
    print(f"resumed vs uninterrupted: max abs difference {diff}")
    assert diff <= 1e-5, f"resumed run differs by {diff}"
    assert a.finetune_loss.iloc[-1] < a.finetune_loss.iloc[0]


# ------------------------------------------------------------------------------------------
# divergence


def test_divergence_marks_run_and_keeps_earlier_measurements(workdir, capsys):
    cfg = _config(
        workdir, learning_rate=1e30, max_grad_norm=None, max_steps=6, eval_steps=[0, 1, 2, 4, 6]
    )
    result = train(cfg)
    assert result.status == "diverged" and result.diverged_step is not None
    with sqlite3.connect(workdir / "results.db") as c:
        status, step, message = c.execute(
            "SELECT status, diverged_step, message FROM runs"
        ).fetchone()
    assert status == "diverged" and step == result.diverged_step
    assert "nan" in message.lower() or "inf" in message.lower()
    df = read_measurements(workdir / "results.db")
    assert 0 in df.step.tolist() and (df.step < step).all()
    assert df[["finetune_loss", "forgetting_loss"]].notna().all().all()
    # running the same config again does not retry a diverged run
    assert train(cfg).status == "diverged"
    # and through the command line
    main(["runs", "--from", "results.db"])
    assert f"diverged@{step}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# bad inputs: one clear line, exit code 2


def _cli_error(capsys, *args) -> str:
    code = main(["train", "run.yaml", "--progress=false", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    # status lines may come first; the error is one line, without a traceback
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("forgetscale train: error: ")
    return last


def test_bad_inputs_exit_2(workdir, capsys, other_tiny_model_dir):
    (workdir / "empty.jsonl").write_text("\n")
    assert "empty" in _cli_error(capsys, "--task_data=empty.jsonl")

    (workdir / "chat.jsonl").write_text(json.dumps({"question": "hi", "answer": "ho"}) + "\n")
    err = _cli_error(capsys, "--task_data=chat.jsonl")
    assert "none of the expected fields" in err and "messages" in err
    err = _cli_error(capsys, "--task_data=chat.jsonl", "--task_format=prompt_response")
    assert "lacks 'prompt'" in err

    assert "did you mean rank" in _cli_error(capsys, "--rnak=3")
    assert "unknown target module" in _cli_error(capsys, "--target_modules=nope")

    # a reference built from another model (another tokenizer)
    from forgetscale.corpus import pack_documents
    from forgetscale.models import load_model
    from forgetscale.reference import build_reference

    other = load_model(str(other_tiny_model_dir))
    blocks = pack_documents(["some text " * 50], other.tokenizer, 32)
    build_reference(other.model, other.tokenizer, blocks, top_k=8, progress=False).save(
        workdir / "other.ref.safetensors"
    )
    err = _cli_error(capsys, "--reference=other.ref.safetensors")
    assert "another tokenizer" in err
    assert not (workdir / "results.db").exists() or read_measurements("results.db").empty


def test_missing_config_and_paths(workdir, capsys):
    assert main(["train", "nope.yaml"]) == 2
    assert "not found" in capsys.readouterr().err
    assert "model not found" in _cli_error(capsys, "--model=./no-model")


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
        _config(
            workdir,
            task_data="chat.jsonl",
            task_format="prompt_response",
            max_steps=2,
            eval_steps=[0, 2],
        )
    )
    assert result.status == "finished"


# ------------------------------------------------------------------------------------------
# the callback in a real HF Trainer


def test_forgetting_callback_in_hf_trainer(workdir, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from forgetscale import ForgettingCallback
    from forgetscale.corpus import pack_documents
    from forgetscale.models import load_tokenizer
    from forgetscale.reference import build_reference

    tok = load_tokenizer(str(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    general = [json.loads(line)["text"] for line in (workdir / "general.jsonl").open()]
    ref = build_reference(
        base, tok, pack_documents(general, tok, 32)[:16], top_k=16, progress=False
    )
    ref.save(tmp_path / "ref.safetensors")
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", use_rslora=True))
    task = [json.loads(line)["text"] for line in (workdir / "task.jsonl").open()]
    blocks = pack_documents(task, tok, 32)[:64]
    dataset = [{"input_ids": b, "labels": b} for b in blocks]
    callback = ForgettingCallback(reference=str(tmp_path / "ref.safetensors"), every=2)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(tmp_path / "out"),
            max_steps=4,
            per_device_train_batch_size=4,
            learning_rate=5e-3,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=dataset,
        callbacks=[callback],
    )
    trainer.train()
    logged = [e for e in trainer.state.log_history if "forgetting_loss" in e]
    assert [e["step"] for e in logged] == [0, 2, 4]
    assert logged[0]["forgetting_kl"] == pytest.approx(0.0, abs=1e-6)
    assert logged[0]["forgetting_agreement"] == 1.0
    assert logged[-1]["forgetting_kl"] > 0
    assert all("loss" in e for e in logged[1:])  # merged into the Trainer's own log entries
    assert len(callback.history) == 3


def test_forgetting_callback_in_trl_sft_trainer(workdir, tiny_model_dir, tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from forgetscale import ForgettingCallback
    from forgetscale.corpus import pack_documents
    from forgetscale.models import load_tokenizer
    from forgetscale.reference import build_reference

    tok = load_tokenizer(str(tiny_model_dir))
    tok.pad_token = tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    general = [json.loads(line)["text"] for line in (workdir / "general.jsonl").open()]
    ref = build_reference(base, tok, pack_documents(general, tok, 32)[:8], top_k=16, progress=False)
    texts = [json.loads(line)["text"][:200] for line in (workdir / "task.jsonl").open()]
    trainer = trl.SFTTrainer(
        model=base,
        args=trl.SFTConfig(
            output_dir=str(tmp_path / "sft"), max_steps=3, per_device_train_batch_size=4,
            learning_rate=5e-3, logging_steps=1, report_to=[], save_strategy="no",
            use_cpu=True, disable_tqdm=True, max_length=32,
        ),
        train_dataset=datasets.Dataset.from_dict({"text": texts}),
        processing_class=tok,
        peft_config=LoraConfig(r=4, target_modules="all-linear", use_rslora=True),
        callbacks=[ForgettingCallback(reference=ref, every=3)],
    )  # fmt: skip
    trainer.train()
    logged = [e for e in trainer.state.log_history if "forgetting_loss" in e]
    assert [e["step"] for e in logged] == [0, 3]
    assert logged[0]["forgetting_agreement"] == 1.0 and logged[1]["forgetting_kl"] > 0


def test_a_run_cannot_be_trained_twice_at_once(workdir):
    from forgetscale.training.lock import RunLock
    from forgetscale.training.run import lock_path

    cfg = _config(workdir, max_steps=1, eval_steps=[0, 1])
    lock = RunLock(lock_path(cfg), cfg.run_id)
    try:
        with pytest.raises(UserError, match="being trained by another process"):
            train(cfg)
    finally:
        lock.release()
    assert train(cfg).status == "finished"
    assert not (workdir / "results.db.checkpoints").exists()
