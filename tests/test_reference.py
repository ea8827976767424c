"""Reference files: what a damaged one is refused for, and a killed writer's leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from forgetscale.errors import UserError
from forgetscale.reference import FORMAT, TENSOR_NAMES, ReferenceCache
from forgetscale.topk import base_statistics

VOCAB, BLOCKS, BLOCK, K = 50, 3, 12, 8


def synthetic_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of a reference, from random logits (no model needed)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(BLOCKS, BLOCK - 1, VOCAB, generator=gen) * 3
    stats = base_statistics(logits, K)
    input_ids = torch.randint(0, VOCAB, (BLOCKS, BLOCK), generator=gen, dtype=torch.int32)
    return {"input_ids": input_ids, **stats}


def fingerprint(**changes):
    fp = {"model": "synthetic", "vocab_size": VOCAB, "block_size": BLOCK, "top_k": K,
          "n_blocks": BLOCKS, "dtype": "float32", "tokenizer": {"vocab_size": VOCAB}}  # fmt: skip
    fp.update(changes)
    return fp


def write(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    if metadata is None:
        metadata = {"format": FORMAT, "fingerprint": json.dumps(fingerprint())}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def test_a_sound_reference_roundtrips(tmp_path):
    tensors = synthetic_tensors()
    path = ReferenceCache(**tensors, fingerprint=fingerprint()).save(tmp_path / "r.safetensors")
    ref = ReferenceCache.load(path)
    assert ref.n_blocks == BLOCKS and ref.block_size == BLOCK and ref.top_k == K
    for name in TENSOR_NAMES:
        assert torch.equal(getattr(ref, name), tensors[name]), name
    assert os.listdir(tmp_path) == ["r.safetensors"]


def test_int64_and_float64_tensors_are_accepted_and_narrowed(tmp_path):
    tensors = synthetic_tensors()
    wide = {k: v.long() if k.endswith("ids") else v.double() for k, v in tensors.items()}
    ref = ReferenceCache.load(write(tmp_path / "wide.safetensors", wide))
    assert ref.topk_ids.dtype == torch.int32 and ref.entropy.dtype == torch.float32
    assert torch.equal(ref.topk_ids, tensors["topk_ids"])


def _set(name, index, value):
    def change(t):
        t = {k: v.clone() for k, v in t.items()}
        t[name].view(-1)[index] = value
        return t

    return change


def _replace(name, make):
    return lambda t: {**t, name: make(t[name])}


def _drop(name):
    return lambda t: {k: v for k, v in t.items() if k != name}


DAMAGED_TENSORS = [
    ("target id beyond the vocabulary", _set("target_ids", 5, VOCAB), "target_ids holds token id 50, outside [0, 50)"),
    ("negative top-k id", _set("topk_ids", 7, -3), "topk_ids holds token id -3"),
    ("input id beyond the vocabulary", _set("input_ids", 0, 10_000), "input_ids holds token id 10000"),
    ("negative tail mass", _set("tail_mass", 2, -0.25), "tail_mass holds -0.25, outside [0, 1]"),
    ("tail mass above 1", _set("tail_mass", 2, 1.5), "tail_mass holds 1.5, outside [0, 1]"),
    ("NaN log-prob", _set("target_logprob", 1, float("nan")), "target_logprob holds NaN or infinite"),
    ("-inf top-k log-prob", _set("topk_logprobs", 3, float("-inf")), "topk_logprobs holds NaN or infinite"),
    ("positive log-prob", _set("topk_logprobs", 3, 0.5), "topk_logprobs holds a log-probability of 0.5"),
    ("negative entropy", _set("entropy", 0, -2.0), "entropy holds -2"),
    ("NaN entropy", _set("entropy", 0, float("nan")), "entropy holds NaN"),
    ("short target_ids", _replace("target_ids", lambda t: t[:, :-1]), "target_ids has shape [3, 10], expected [3, 11]"),
    ("flat top-k ids", _replace("topk_ids", lambda t: t[..., 0]), "topk_ids has shape [3, 11]"),
    ("top-k logprobs of another K", _replace("topk_logprobs", lambda t: t[..., :4]), "differ in shape"),
    ("1-d input ids", _replace("input_ids", lambda t: t.reshape(-1)), "input_ids has shape [36]"),
    ("int64 id beyond int32", _replace("target_ids", lambda t: t.long() + 2**32), "target_ids holds token id 4294967"),
    ("float token ids", _replace("topk_ids", lambda t: t.float()), "topk_ids holds float32, not integer"),
    ("integer log-probs", _replace("entropy", lambda t: t.int()), "entropy holds int32, not float32"),
    ("half-precision log-probs", _replace("topk_logprobs", lambda t: t.half()), "topk_logprobs holds float16"),
    ("missing tensor", _drop("tail_mass"), "lacks the tensor(s) tail_mass"),
]  # fmt: skip


@pytest.mark.parametrize(
    "change, message", [c[1:] for c in DAMAGED_TENSORS], ids=[c[0] for c in DAMAGED_TENSORS]
)
def test_damaged_tensors_are_refused_on_load(tmp_path, change, message):
    path = write(tmp_path / "bad.safetensors", change(synthetic_tensors()))
    with pytest.raises(UserError, match="bad.safetensors") as info:
        ReferenceCache.load(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


BAD_HEADERS = [
    ("no format", {"fingerprint": json.dumps(fingerprint())}, "is not a forgetscale reference"),
    ("no metadata at all", None, "is not a forgetscale reference"),
    ("no fingerprint", {"format": FORMAT}, "has no fingerprint in its header"),
    ("fingerprint not JSON", {"format": FORMAT, "fingerprint": "{model: x"}, "fingerprint that is not JSON"),
    ("fingerprint a list", {"format": FORMAT, "fingerprint": "[1, 2]"}, "not a JSON object"),
    ("no vocab size", {"format": FORMAT, "fingerprint": json.dumps(fingerprint(vocab_size=None))}, "no valid vocab_size"),
    ("vocab size a string", {"format": FORMAT, "fingerprint": json.dumps(fingerprint(vocab_size="50"))}, "no valid vocab_size"),
    ("block size disagrees", {"format": FORMAT, "fingerprint": json.dumps(fingerprint(block_size=64))}, "says block_size 64, the tensors have 12"),
    ("K beyond the vocabulary", {"format": FORMAT, "fingerprint": json.dumps(fingerprint(vocab_size=4, tokenizer={}))}, "top-8 exceeds its vocabulary of 4"),
]  # fmt: skip


@pytest.mark.parametrize(
    "metadata, message", [c[1:] for c in BAD_HEADERS], ids=[c[0] for c in BAD_HEADERS]
)
def test_malformed_headers_are_one_line(tmp_path, metadata, message):
    path = tmp_path / "bad.safetensors"
    tensors = {k: v.contiguous() for k, v in synthetic_tensors().items()}
    if metadata is None:
        save_file(tensors, str(path))
    else:
        save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(UserError) as info:
        ReferenceCache.load(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_truncated_file_is_one_line(tmp_path):
    path = write(tmp_path / "r.safetensors", synthetic_tensors())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="could not read reference") as info:
        ReferenceCache.load(path)
    assert "\n" not in str(info.value)


def test_build_reference_refuses_a_batch_size_below_one(tiny_model_dir):
    """A batch size <= 0 used to skip the loop and save the tensors as allocated."""
    from forgetscale.models import load_model
    from forgetscale.reference import build_reference

    loaded = load_model(str(tiny_model_dir))
    blocks = torch.randint(0, 300, (2, 8))
    for size in (0, -4):
        with pytest.raises(UserError, match="batch size must be a positive integer"):
            build_reference(loaded.model, loaded.tokenizer, blocks, top_k=4, batch_size=size)


SLOW_SAVE = """
import sys, time
import forgetscale.reference as reference
real = reference.save_file
def slow_save(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    print("SAVING", filename, flush=True)
    time.sleep(120)
reference.save_file = slow_save
from forgetscale.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_reference_leaves_a_temporary_file_the_next_run_removes(
    tiny_model_dir, general_jsonl, tmp_path
):
    """SIGKILL mid-write (the file written, not yet renamed), then run again."""
    out = tmp_path / "r.safetensors"
    argv = ["reference", "--model", str(tiny_model_dir), "--data", str(general_jsonl),
            "--block-size", "32", "--top-k", "4", "--max-blocks", "2", "--no-progress",
            "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and not line.startswith("SAVING"):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"reference ended before saving: {proc.stderr.read()}")
        tmp = Path(line.split(maxsplit=1)[1].strip())
        assert tmp.parent == tmp_path and tmp.is_file() and not out.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert tmp.exists()  # the killed writer's leftover

    from forgetscale.cli import main

    assert main(argv) == 0
    assert not tmp.exists()
    assert os.listdir(tmp_path) == ["r.safetensors"]
    assert ReferenceCache.load(out).n_blocks == 2
