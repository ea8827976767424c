"""A plan (:func:`~forgetscale.laws.planning.make_plan`) in words, and its choice as a
configuration: a ``peft.LoraConfig`` (+ TRL ``SFTConfig``) snippet or a forgetscale
train YAML built from the pilot run nearest in rank."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from forgetscale.errors import UserError
from forgetscale.laws.registry import TARGETS


def _g(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def _sym(target: str) -> str:
    """L_f for forgetting_loss ...; a downstream metric (``SUITE:METRIC``) as itself."""
    return TARGETS[target].symbol if target in TARGETS else target


def _end(budgets: list[dict[str, Any]]) -> str:
    ops = {b.get("op", "<=") for b in budgets}
    if ops == {">="}:
        return "lower end"
    return "upper end" if ops == {"<="} else "budget's end (upper for <=, lower for >=)"


def _pred(c: dict[str, Any]) -> str:
    if c["lo"] is None:
        return _g(c["value"])
    return f"{_g(c['value'])} [{_g(c['lo'])}, {_g(c['hi'])}]"


def format_plan(plan: dict[str, Any]) -> str:
    """The candidates table, the choice and the notes, for the terminal."""
    budgets = plan["budgets"]
    targets = list(dict.fromkeys(b["target"] for b in budgets))
    lines = [
        "plan: the lowest predicted L_ft with "
        + " and ".join(
            f"{b['text']} (limit {_g(b['limit'])}"
            + (f", base {_g(b['base'])})" if b["relative"] else ")")
            for b in budgets
        )
        + f" at the {_end(budgets)} of the {plan['coverage']:.0%} interval for a new run",
        "laws: " + "; ".join(f"{TARGETS[t].symbol}: {law}" for t, law in plan["law"].items()),
        "",
    ]
    ranked = "rank" in (plan["candidates"][0] if plan["candidates"] else {})
    head = (f"{'rank':>5} " if ranked else "") + f"{'P':>10} {'N':>7}  {'L_ft':<26}"
    head += "".join(f"{_sym(t):<26}" for t in targets) + "ok   why"
    lines.append(head)
    for c in plan["candidates"]:
        row = (f"{c['rank']:>5} " if ranked else "") + f"{_g(c['params_trained']):>10} "
        row += f"{_g(c['step'], 6):>7}  {_pred(c['finetune_loss']):<26}"
        row += "".join(f"{_pred(c[t]):<26}" for t in targets)
        flag = " [beyond tested]" if c["beyond_tested"] else ""
        row += f"{'yes' if c['feasible'] else 'no':<5}{c['why']}{flag}"
        lines.append(row)
    lines.append("")
    ch = plan["choice"]
    if ch is None:
        lines.append("choice: none")
    else:
        where = (f"rank {ch['rank']} (P {_g(ch['params_trained'])})" if "rank" in ch
                 else f"P {_g(ch['params_trained'])}")  # fmt: skip
        lines.append(
            f"choice: {where}, N {_g(ch['step'], 6)}: L_ft {_pred(ch['finetune_loss'])}; "
            + "; ".join(
                f"{_sym(t)} {_pred(ch[t])} {ch[t]['op']} {_g(ch[t]['limit'])}" for t in targets
            )  # fmt: skip
        )
    for t, kind in plan["intervals"].items():
        lines.append(f"interval {_sym(t)}: {kind}")
    for t, h in plan["held_out"].items():
        tests = ", ".join(
            f"{name}: error {_g(h['ratios'].get(name), 2)}x in-sample"
            + (
                ", inside 80%/95%: "
                + "/".join(f"{100 * v:.0f}%" for v in h["coverage"][name].values())
                if h["coverage"].get(name)
                else ""
            )
            for name in h["ratios"]
        )
        reach = ", ".join(f"{'N' if v == 'step' else 'P'} {f:.2g}x" for v, f in h["tested"].items())
        lines.append(
            f"held out {TARGETS[t].symbol}: " + (tests or "no held-out test")
            + (f"; tested up to {reach} beyond the fitted range" if reach else "")
        )  # fmt: skip
    beyond = sorted({b for c in plan["candidates"] for b in c["beyond_tested"]})
    if beyond:
        what = ("the held-out tests checked, or the L_f range a downstream relation was "
                "measured on" if plan.get("downstream") else "the held-out tests checked")  # fmt: skip
        lines.append(f"{sum(1 for c in plan['candidates'] if c['beyond_tested'])} candidate(s) "
                     f"lie beyond what {what}")  # fmt: skip
    check = plan.get("check")
    if check:
        for t, c in check["targets"].items():
            verdict = {True: "inside", False: "OUTSIDE", None: "not measured"}[c["inside"]]
            lines.append(
                f"check ({', '.join(check['runs'])}, P {_g(check['params_trained'])}, N "
                f"{_g(check['step'], 6)}): {TARGETS[t].symbol} observed {_g(c['observed'])}, "
                f"predicted {_pred(c['predicted'])}: {verdict}"
            )
        v = check.get("verify")
        if v:
            line = (f"verify: planned run {v['run_id']} ({v['store']}) took {_minutes(v['seconds'])};"
                    f" the pilot took {_minutes(v['pilot_seconds'])} ({v['pilot_runs']} runs)")  # fmt: skip
            if "grid_seconds" in v:
                line += (f", a grid of all {v['grid_runs']} candidates at their planned size "
                         f"about {_minutes(v['grid_seconds'])}")  # fmt: skip
            lines.append(line)
    lines.extend(f"note: {n}" for n in plan["notes"])
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _nearest_lora_config(store: Path, rank: int) -> tuple[str, dict[str, Any]]:
    from forgetscale.store import open_store

    with open_store(store, create=False) as st:
        runs = [r for r in st.list_runs() if r.method == "lora" and r.rank and r.config]
    if not runs:
        raise UserError(f"--emit: {store} holds no LoRA run with a configuration to start from")
    best = min(runs, key=lambda r: (abs(math.log(r.rank / rank)), r.rank))
    return best.id, dict(best.config)


def emit_snippet(fmt: str, store: Path, choice: dict[str, Any]) -> str:
    """The chosen rank and steps as ``peft``/``trl`` Python or a ``forgetscale`` YAML, from
    the configuration of the pilot run nearest in rank (its alpha, rsLoRA, target modules,
    learning rate and batch size)."""
    rank, steps = int(choice["rank"]), int(math.ceil(choice["step"]))
    source, cfg = _nearest_lora_config(store, rank)
    from forgetscale.config.train import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    get = lambda key: cfg.get(key, fields[key].default)  # noqa: E731
    header = (f"# planned by forgetscale plan: rank {rank}, {steps} steps; the rest from "
              f"pilot run {source}\n")  # fmt: skip
    if fmt == "forgetscale":
        import yaml

        # where the pilot wrote stays the pilot's: the planned run gets its own store, folders
        # and name (its references are the pilot's: the same corpus, the same base pass)
        mine = ("store", "checkpoint_dir", "output_dir", "name", "progress", "keep_checkpoint")
        out = {k: v for k, v in cfg.items() if k in fields and k not in mine}
        if out.get("reference_dir") is None and out.get("reference") is None:
            out["reference_dir"] = str(store.resolve().parent / "references")
        out.update(rank=rank, max_steps=steps)
        if isinstance(out.get("eval_steps"), list):
            out["eval_steps"] = sorted({s for s in out["eval_steps"] if s <= steps} | {steps})
        return header + yaml.safe_dump(out, sort_keys=False)
    modules = get("target_modules")
    lines = [
        header.rstrip(),
        "from peft import LoraConfig",
        "",
        "lora_config = LoraConfig(",
        f"    r={rank},",
        f"    lora_alpha={float(get('alpha'))!r},",
        f"    use_rslora={bool(get('rslora'))!r},",
        f"    lora_dropout={float(get('dropout'))!r},",
        f"    target_modules={modules!r},"
        + (
            "  # forgetscale shorthand: name the modules of your model"
            if modules in ("attention", "mlp")
            else ""
        ),  # fmt: skip
        '    bias="none",',
        '    task_type="CAUSAL_LM",',
        ")",
    ]
    if fmt == "trl":
        accumulation = max(1, int(get("grad_accumulation")))
        lines[2:2] = ["from trl import SFTConfig"]
        lines += [
            "",
            "sft_config = SFTConfig(",
            '    output_dir="planned-run",',
            f"    max_steps={steps},",
            f"    learning_rate={float(get('learning_rate'))!r},",
            f"    per_device_train_batch_size={int(get('batch_size')) // accumulation},",
            f"    gradient_accumulation_steps={accumulation},",
            f"    warmup_steps={int(get('warmup_steps'))},",
            f"    weight_decay={float(get('weight_decay'))!r},",
            f"    seed={int(get('seed'))},",
            (
                "    bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),"
                "  # the pilot trained in bfloat16"
                if get("dtype") == "bfloat16"
                else "    bf16=False,"
            ),
            ")",
        ]
        if get("dtype") == "bfloat16":
            lines[2:2] = ["import torch"]
    return "\n".join(lines) + "\n"
