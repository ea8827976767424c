"""Replay and the KL-to-base penalty in `forgetscale train` on tiny random models: exact replay
counts, the KL penalty against an independent float64 computation, p = 0 and lambda = 0 equal
to the plain run, the leak refusal, bad values, resume after SIGKILL, a sweep over both."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_causal_lm, tiny_config

from forgetscale.cli import main
from forgetscale.errors import UserError
from forgetscale.mitigation import replay_blocks_before, replay_count
from forgetscale.store import read_measurements
from forgetscale.training import train
from forgetscale.training.mixing import KLPenalty, ReplayMixer, UpdatePlan

COMPARED = ["finetune_loss", "forgetting_loss", "forgetting_loss_soft", "kl", "train_loss"]


@pytest.fixture
def replay_jsonl(workdir) -> Path:
    """Replay text: pydoc topics that neither the task nor the forgetting corpus holds."""
    from pydoc_data.topics import topics

    path = workdir / "replay.jsonl"
    with path.open("w") as fh:
        for key in sorted(topics)[60:80]:
            fh.write(json.dumps({"text": topics[key][:1500]}) + "\n")
    return path


# ------------------------------------------------------------------------------------------
# the share of replay blocks


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.05, 0.25, 0.3, 1 / 3, 0.5, 0.99])
@pytest.mark.parametrize("batch_size", [1, 3, 4, 8, 32])
def test_replay_blocks_per_update_are_counted_exactly(fraction, batch_size):
    p = Fraction(repr(fraction))
    total = 0
    for step in range(400):
        count = replay_count(step, fraction, batch_size)
        exact = p * batch_size
        assert math.floor(exact) <= count <= math.ceil(exact)  # never off by a block
        total += count
        # after step+1 updates: round((step+1) * p * B), half up, counted independently
        want = int((p * batch_size * (step + 1) * 2 + 1) // 2)
        assert total == want == replay_blocks_before(step + 1, fraction, batch_size)
    mixer = ReplayMixer(50, 7, batch_size, fraction, seed=3)
    for step in (0, 1, 17, 399):
        plan = mixer.plan(step)
        assert len(plan) == batch_size
        assert len(plan.replay) == replay_count(step, fraction, batch_size)
        assert all(0 <= i < 50 for i in plan.task.tolist())
        assert all(0 <= i < 7 for i in plan.replay.tolist())


def test_a_run_trains_on_exactly_its_share_of_replay_blocks(workdir, replay_jsonl):
    cfg = tiny_config(workdir, replay_data="replay.jsonl", replay_fraction=0.3)
    result = train(cfg)
    df = read_measurements(workdir / "results.db")
    # 4 blocks of 32 tokens per update, a share 0.3 replay: round(1.2 s) replay blocks
    want = [int(Fraction(12, 10) * s + Fraction(1, 2)) for s in df.step]
    assert df.replay_tokens_seen.tolist() == [32 * r for r in want]
    assert (df.task_tokens_seen + df.replay_tokens_seen == df.tokens_seen).all()
    assert df.tokens_seen.tolist() == [128 * s for s in df.step]
    costs = result.mitigation_costs()
    assert costs["replay_tokens_per_update"] == 32 * want[-1] / 12
    # the replay rows of a batch are the replay corpus's blocks, the rest the task's
    run_blocks = _blocks(cfg)
    plan = ReplayMixer(*run_blocks["sizes"], 4, 0.3, cfg.seed).plan(1)  # round(2.4) - round(1.2)
    assert len(plan.replay) == 1
    from forgetscale.training.mixing import MixedBatches

    batches = MixedBatches(run_blocks["task"], run_blocks["replay"], torch.device("cpu"))
    ids, labels, mask = batches.get(plan)
    assert mask is None and torch.equal(ids, labels)
    assert torch.equal(ids[-1], run_blocks["replay"].input_ids[plan.replay[0]])
    assert torch.equal(ids[:-1], run_blocks["task"].input_ids[plan.task])


def _blocks(cfg):
    from forgetscale.finetune_data import RecordFields, load_task_data
    from forgetscale.models import load_model
    from forgetscale.training.mitigations import load_replay

    tokenizer = load_model(cfg.model).tokenizer
    data = load_task_data(
        cfg.task_data, tokenizer, block_size=cfg.block_size, fields=RecordFields()
    )
    replay = load_replay(cfg, tokenizer)
    return {"task": data.train, "replay": replay, "sizes": (len(data.train), len(replay))}


# ------------------------------------------------------------------------------------------
# the KL penalty against an independent float64 computation


def _lumped_kl_float64(base_logits, logits, k):
    """KL(base || model) over the base's top-k tokens + one lumped tail, all in float64."""
    logp = torch.log_softmax(base_logits.double(), -1)
    logq = torch.log_softmax(logits.double(), -1)
    top = logp.topk(k, -1).indices
    p_top, q_top = logp.gather(-1, top).exp(), logq.gather(-1, top).exp()
    p_tail, q_tail = 1 - p_top.sum(-1), 1 - q_top.sum(-1)
    return (p_top * (p_top.log() - q_top.log())).sum(-1) + p_tail * (p_tail.log() - q_tail.log())


def test_kl_penalty_equals_an_independent_float64_computation(tiny_model_dir):
    from transformers import AutoTokenizer

    from forgetscale.reference import build_reference

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = tiny_causal_lm(tiny_model_dir)
    torch.manual_seed(0)
    blocks = torch.randint(0, len(tokenizer), (6, 24))
    k = 8
    reference = build_reference(base, tokenizer, blocks, top_k=k, batch_size=4, progress=False)
    model = tiny_causal_lm(tiny_model_dir)  # the "fine-tuned" model: the base, moved
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    # task blocks 1, 4, 5 of the run are in the reference (rows 0..2); targets: all but the
    # first two positions of block 4 (as a response-only example would mask its prompt)
    rows = torch.tensor([1, 4, 5])
    targets = torch.ones(6, 23, dtype=torch.bool)
    targets[4, :2] = False
    ref_rows = type(reference)(
        **{n: getattr(reference, n)[rows] for n in ("input_ids", "target_ids", "target_logprob",
                                                     "topk_ids", "topk_logprobs", "tail_mass",
                                                     "entropy")},
        fingerprint=reference.fingerprint,
    )  # fmt: skip
    penalty = KLPenalty(0.7, "task", ref_rows, rows, 6, targets, torch.device("cpu"))
    plan = UpdatePlan(torch.tensor([4, 1, 5]), torch.zeros(0, dtype=torch.long))
    with torch.no_grad():
        logits = model(input_ids=blocks[plan.task]).logits
    logits.requires_grad_(True)
    ours = penalty.kl_sum(logits, plan) / penalty.positions(plan)
    ours.backward()
    with torch.no_grad():
        base_logits = base(input_ids=blocks[plan.task]).logits[:, :-1]
    exact_logits = logits.detach().double().requires_grad_(True)
    per_position = _lumped_kl_float64(base_logits, exact_logits[:, :-1], k)
    mask = targets[plan.task]
    exact = per_position[mask].sum() / mask.sum()
    exact.backward()
    assert penalty.positions(plan) == 3 * 23 - 2
    assert float(exact.detach()) > 1e-3  # the model did move: the comparison is not 0 against 0
    ours, exact = float(ours.detach()), float(exact.detach())
    assert abs(ours - exact) <= 1e-5 * exact
    grad_err = (logits.grad.double() - exact_logits.grad).abs().max()
    assert float(grad_err) <= 1e-5 * float(exact_logits.grad.abs().max())


def test_the_kl_penalty_is_in_the_update_and_recorded(workdir):
    plain = train(tiny_config(workdir, store="plain.db", eval_steps=[0, 4, 12]))
    kl = train(tiny_config(workdir, store="kl.db", kl_weight=5.0, eval_steps=[0, 4, 12]))
    p, q = read_measurements(workdir / "plain.db"), read_measurements(workdir / "kl.db")
    assert p.train_kl.isna().all() and q.train_kl.iloc[1:].gt(0).all()
    # the penalty keeps the model closer to the base on the task data, and it changes training
    assert q.train_loss.iloc[-1] != p.train_loss.iloc[-1]
    assert plain.mitigation_costs()["kl_positions_per_update"] == 0
    assert kl.mitigation_costs()["kl_positions_per_update"] == 4 * 31
    assert kl.kl_term_s > 0 and kl.timings()["mitigation_setup"] > 0


@pytest.mark.parametrize("method, lr", [("full", 1e-2), ("ia3", 0.5)])  # IA3 moves little
def test_the_kl_penalty_of_a_run_with_another_method_equals_float64(workdir, method, lr):
    """The KL a run of ``method`` trains against (the base's cached top-K, taken before the
    method is put on the model) equals the float64 lumped KL between the base and the
    weights after update 1, on the blocks of update 2 (as the run recorded it in train_kl)."""
    from safetensors.torch import load_file

    from forgetscale.finetune_data import RecordFields, load_task_data
    from forgetscale.models import load_model
    from forgetscale.training.checkpoint import latest_checkpoint
    from forgetscale.training.methods import apply_method
    from forgetscale.training.mixing import MixedBatches
    from forgetscale.training.outputs import checkpoint_dir

    cfg = tiny_config(workdir, method=method, kl_weight=2.0, max_steps=2, eval_steps=[0, 1, 2],
                      learning_rate=lr, keep_checkpoint=True)  # fmt: skip
    assert train(cfg).status == "finished"
    df = read_measurements(workdir / "results.db")
    # update 1 starts from the base itself: its KL to the base's cached top-K is 0
    assert abs(df.train_kl.iloc[1]) < 1e-6
    ck = latest_checkpoint(checkpoint_dir(cfg), cfg.run_id)
    assert ck is not None and ck.name == "step-000001"
    tokenizer = load_model(cfg.model).tokenizer
    data = load_task_data(cfg.task_data, tokenizer, block_size=cfg.block_size,
                          fields=RecordFields())  # fmt: skip
    base = tiny_causal_lm(workdir / "tiny-model")
    moved = apply_method(tiny_causal_lm(workdir / "tiny-model"), cfg)
    params = dict(moved.named_parameters())
    weights = load_file(str(ck / "trainable.safetensors"))
    assert weights and set(weights) <= set(params)
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
        plan = ReplayMixer(len(data.train), 0, cfg.batch_size, 0.0, cfg.seed).plan(1)
        ids, _, mask = MixedBatches(data.train, None, torch.device("cpu")).get(plan)
        assert mask is None
        base_logits = base(input_ids=ids).logits[:, :-1]
        logits = moved(input_ids=ids).logits[:, :-1]
    exact = float(_lumped_kl_float64(base_logits, logits, cfg.reference_top_k).mean())
    ours = float(df.train_kl.iloc[2])
    print(f"{method}: KL after update 1, ours {ours:.9g}, float64 {exact:.9g}")
    assert exact > 1e-5  # the model did move
    # the run's KL is float32: log-probabilities of size ~5 round by ~3e-7 per position,
    # which the mean over 124 positions brings far below the 1e-8 allowed on top
    assert abs(ours - exact) <= 1e-5 * exact + 1e-8


def test_train_reports_what_a_mitigation_cost_per_update(workdir, replay_jsonl, capsys):
    # a plain run: timings hold its per-update baseline, its summary says nothing new
    assert main(["train", "run.yaml", "--progress=false", "--max_steps=4",
                 "--eval_steps=[0, 4]"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "per update" not in out and "mitigation setup" not in out
    plain = train(tiny_config(workdir, max_steps=4, eval_steps=[0, 4], store="plain.db"))
    per_update = plain.timings()["per_update"]
    assert per_update == plain.mitigation_costs()
    assert per_update["task_tokens_per_update"] == 128 and per_update["updates"] == 4
    assert per_update["replay_tokens_per_update"] == per_update["kl_positions_per_update"] == 0
    # replay 0.25 and the KL penalty on the replay blocks: one replay block of 32 per update
    args = ["--replay_data=replay.jsonl", "--replay_fraction=0.25", "--kl_weight=1",
            "--kl_data=replay"]  # fmt: skip
    assert main(["train", "run.yaml", "--progress=false", "--max_steps=4",
                 "--eval_steps=[0, 4]", "--store=mitigated.db", *args]) == 0  # fmt: skip
    line = capsys.readouterr().out.strip()
    assert "per update: 96 task + 32 replay tokens, KL on 31 positions " in line, line
    assert " ms, step " in line and "mitigation setup " in line
    kl_only = train(tiny_config(workdir, max_steps=4, eval_steps=[0, 4], store="kl.db",
                                kl_weight=1.0))  # fmt: skip
    text = kl_only.summary()
    assert "per update: 128 task tokens, KL on 124 positions " in text and "replay" not in text
    costs = kl_only.timings()["per_update"]
    assert costs["kl_positions_per_update"] == 124 and costs["kl_term_s_per_update"] > 0
    assert costs["mitigation_setup_s"] == kl_only.timings()["mitigation_setup"] > 0


# ------------------------------------------------------------------------------------------
# off means the plain run, exactly


def test_replay_fraction_0_and_kl_weight_0_are_the_plain_run(workdir, replay_jsonl):
    train(tiny_config(workdir, store="plain.db"))
    off = tiny_config(workdir, store="off.db", replay_data="replay.jsonl", replay_fraction=0.0,
                      kl_weight=0.0, kl_data="task")  # fmt: skip
    assert off.run_id != tiny_config(workdir).run_id  # replay_data is set: another run id
    train(off)
    a, b = read_measurements(workdir / "plain.db"), read_measurements(workdir / "off.db")
    for col in [*COMPARED, "tokens_seen", "task_tokens_seen"]:
        assert a[col].fillna(-1).tolist() == b[col].fillna(-1).tolist(), col  # bitwise
    assert (b.replay_tokens_seen == 0).all() and b.train_kl.isna().all()
    # the keys left at their defaults do not change a run id given before they existed
    assert tiny_config(workdir, kl_data="task", kl_weight=0.0).run_id == tiny_config(workdir).run_id


# ------------------------------------------------------------------------------------------
# no leak into the measurement, and bad values


def test_replay_or_kl_data_holding_evaluation_documents_is_refused(workdir, capsys):
    before = sorted(p.name for p in workdir.iterdir())
    # the forgetting corpus itself as replay
    assert main(["train", "run.yaml", "--replay_data=general.jsonl", "--replay_fraction=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shares" in err and "forgetting evaluation" in err
    # a file that holds evaluation documents inside longer texts
    from pydoc_data.topics import topics

    joined = "\n".join(topics[k] for k in sorted(topics)[38:54])
    (workdir / "big.txt").write_text(joined)
    assert main(["train", "run.yaml", "--replay_data=big.txt", "--replay_fraction=0.1"]) == 2
    assert "shares" in capsys.readouterr().err
    # the KL penalty on task data that is the forgetting corpus
    code = main(["train", "run.yaml", "--task_data=general.jsonl", "--kl_weight=0.1"])
    assert code == 2 and "task_data (kl_data: task)" in capsys.readouterr().err
    _assert_nothing_done(workdir, before + ["big.txt"])


def _assert_nothing_done(workdir, before):
    """No run recorded, no reference built: an empty store file at most, as any refusal."""
    after = [p.name for p in workdir.iterdir() if not p.name.startswith("results.db")]
    assert sorted(after) == sorted(before)
    assert not (workdir / "results.db").exists() or read_measurements("results.db").empty


def test_pydoc_replay_holds_exactly_the_documents_the_evaluation_never_reads(tiny_model_dir):
    from transformers import AutoTokenizer

    from forgetscale.corpus import load_documents
    from forgetscale.mitigation import check_no_leak, evaluation_documents, replay_documents

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    docs = load_documents("pydoc")
    evaluated = evaluation_documents("pydoc", tokenizer, block_size=32, max_tokens=1024)
    rest = replay_documents(
        "pydoc-replay", tokenizer, forgetting_block_size=32, forgetting_max_tokens=1024
    )
    assert 0 < len(evaluated) < len(docs) and len(rest) + len(evaluated) == len(docs)
    assert set(rest).isdisjoint(evaluated) and set(rest) | set(evaluated) == set(docs)
    assert rest == [d for d in docs if d not in set(evaluated)]  # the corpus's order
    check_no_leak("replay_data", "pydoc-replay", rest, evaluated)  # accepted
    with pytest.raises(UserError, match="shares"):
        check_no_leak("replay_data", "pydoc", docs, evaluated)
    # independently: the evaluation blocks' tokens are all inside the evaluated documents
    from forgetscale.corpus import evaluation_block_index, pack_documents

    blocks = pack_documents(docs, tokenizer, 32)
    index = evaluation_block_index(blocks.shape[0], 32, 1024)
    stream = blocks[index].flatten().tolist()
    eval_text = tokenizer.decode(stream)
    assert any(tokenizer.decode(tokenizer(d)["input_ids"][:5]) in eval_text for d in evaluated)


def test_pydoc_replay_runs_against_the_pydoc_evaluation(workdir):
    cfg = tiny_config(
        workdir, forgetting_data="pydoc", replay_data="pydoc-replay", replay_fraction=0.25,
        max_steps=4, eval_steps=[0, 4],
    )  # fmt: skip
    assert train(cfg).status == "finished"
    assert read_measurements(workdir / "results.db").replay_tokens_seen.tolist() == [0, 4 * 32]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--replay_data=replay.jsonl", "--replay_fraction=-0.1"], "at least 0"),
        (["--replay_data=replay.jsonl", "--replay_fraction=1"], "less than 1"),
        (["--replay_data=replay.jsonl", "--replay_fraction=nan"], "finite"),
        (["--kl_weight=-1"], "at least 0"),
        (["--kl_weight=nan"], "finite"),
        (["--kl_weight=1", "--kl_data=prompts"], "not one of"),
        (["--kl_weight=1", "--kl_data=replay"], "needs replay_data"),
        (["--replay_fraction=0.1"], "needs replay_data"),
        (["--replay_data=empty.jsonl", "--replay_fraction=0.1"], "empty"),
        (["--replay_data=missing.jsonl", "--replay_fraction=0.1"], "not found"),
    ],
)
def test_bad_mitigation_values_are_one_line_exit_2(workdir, replay_jsonl, capsys, args, message):
    (workdir / "empty.jsonl").write_text('{"text": ""}\n')
    before = [p.name for p in workdir.iterdir()]
    assert main(["train", "run.yaml", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    _assert_nothing_done(workdir, before)


def test_a_refused_run_leaves_no_store_and_no_folder_behind(workdir, capsys):
    """A run refused before it starts (a missing replay corpus) writes nothing: not the
    store it would have created, nor the folders made for it; a store that was there stays."""
    store = workdir / "new" / "deeper" / "results.db"
    args = ["--replay_data=missing.jsonl", "--replay_fraction=0.1"]
    assert main(["train", "run.yaml", *args, f"--store={store}"]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (workdir / "new").exists()
    kept = workdir / "kept.db"
    from forgetscale.store import open_store

    with open_store(kept):
        pass
    assert main(["train", "run.yaml", *args, f"--store={kept}"]) == 2
    assert kept.is_file()


# ------------------------------------------------------------------------------------------
# resume after SIGKILL


def test_a_mitigated_run_resumed_after_sigkill_equals_an_uninterrupted_one(tmp_path):
    from pydoc_data.topics import topics

    from conftest import save_tiny_model_dir

    model_dir = save_tiny_model_dir(tmp_path / "model", hidden=96)
    keys = sorted(topics)
    for name, chosen, size in (("task", keys[:30], 3000), ("general", keys[-10:], 2000),
                               ("replay", keys[35:65], 2000)):  # fmt: skip
        with (tmp_path / f"{name}.jsonl").open("w") as fh:
            for k in chosen:
                fh.write(json.dumps({"text": topics[k][:size]}) + "\n")
    base = {
        "model": str(model_dir), "task_data": "task.jsonl", "forgetting_data": "general.jsonl",
        "replay_data": "replay.jsonl", "replay_fraction": 0.3, "kl_weight": 0.5,
        "kl_data": "replay", "rank": 4, "block_size": 64, "batch_size": 8,
        "learning_rate": 2e-3, "max_steps": 80, "eval_steps": [0, 1, 5, 10, 20, 40, 60, 80],
        "forgetting_max_tokens": 2048, "dropout": 0.1, "seed": 7,
    }  # fmt: skip
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(
            "\n".join(f"{k}: {json.dumps(v)}" for k, v in {**base, "store": f"{name}.db"}.items())
        )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(name):
        return [sys.executable, "-m", "forgetscale", "train", f"{name}.yaml", "--progress=false"]

    first = subprocess.run(cmd("a"), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    ck_root = tmp_path / "b.db.checkpoints"
    proc = subprocess.Popen(cmd("b"), cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if [p for p in ck_root.glob("*/step-*") if int(p.name[5:]) >= 10]:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(tmp_path / "b.db") as c:
        assert c.execute("SELECT status FROM runs").fetchone()[0] == "running"
    resumed = subprocess.run(cmd("b"), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from the checkpoint at step" in resumed.stderr
    assert "reference: reusing" in resumed.stderr  # the KL reference too: built once
    a, b = read_measurements(tmp_path / "a.db"), read_measurements(tmp_path / "b.db")
    assert a.step.tolist() == b.step.tolist() == base["eval_steps"]
    cols = [*COMPARED, "train_kl", "tokens_seen", "task_tokens_seen", "replay_tokens_seen"]
    diff = (a[cols].fillna(0) - b[cols].fillna(0)).abs().to_numpy().max()
    print(f"mitigated run resumed vs uninterrupted: max abs difference {diff}")
    assert diff <= 1e-5
    assert (a.replay_tokens_seen > 0).iloc[1:].all()
    assert abs(a.train_kl.iloc[1]) < 1e-5 and (a.train_kl.iloc[2:] > 0).all()  # LoRA B starts at 0


# ------------------------------------------------------------------------------------------
# a sweep over both


def test_a_sweep_over_replay_fraction_and_kl_weight_on_local_workers(workdir, replay_jsonl, capsys):
    (workdir / "sweep.yaml").write_text(
        "base: ./run.yaml\nstore: ./sweep/results.db\n"
        "replay_data: ./replay.jsonl\nmax_steps: 6\neval_steps: [0, 3, 6]\n"
        "grid:\n  replay_fraction: [0.0, 0.25]\n  kl_weight: [0.0, 1.0]\n"
    )
    assert main(["sweep", "sweep.yaml", "--workers", "2", "--no-progress"]) == 0
    assert "4 runs: 4 finished" in capsys.readouterr().out
    df = read_measurements(workdir / "sweep" / "results.db")
    last = df[df.step == 6]
    assert sorted(last.replay_tokens_seen.tolist()) == [0, 0, 6 * 32, 6 * 32]
    assert last.train_kl.notna().sum() == 2
    # each equals the same config trained alone
    alone = train(tiny_config(workdir, store="alone.db", replay_data="replay.jsonl",
                              replay_fraction=0.25, kl_weight=1.0, max_steps=6,
                              eval_steps=[0, 3, 6], forgetting_max_tokens=4096))  # fmt: skip
    mine = df[df.run_id == alone.run_id].sort_values("step")
    ref = read_measurements(workdir / "alone.db")
    for col in COMPARED:
        diff = np.abs(mine[col].fillna(0).to_numpy() - ref[col].fillna(0).to_numpy()).max()
        assert diff <= 1e-6, (col, diff)
    # each run folder's status records what an update cost (and the study sums only seconds)
    from forgetscale.sweep.folders import RunFolder

    for run_id in df.run_id.unique():
        folder = RunFolder(workdir / "sweep" / "runs" / run_id)
        costs, timings = folder.costs(), folder.timings()
        config = json.loads(folder.spec_path.read_text())["config"]
        replay = 32 if config["replay_fraction"] else 0
        assert costs["updates"] == 6 and costs["replay_tokens_per_update"] == replay
        assert costs["task_tokens_per_update"] == 128 - replay
        task_blocks = 4 - replay // 32  # the KL penalty is on the task blocks (the default)
        assert costs["kl_positions_per_update"] == (31 * task_blocks if config["kl_weight"] else 0)
        assert (costs["kl_term_s_per_update"] > 0) == bool(config["kl_weight"])
        assert "per_update" not in timings and timings["steps"] > 0
