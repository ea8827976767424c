"""Typed option blocks of a sweep file (``resources:``, ``executor: {NAME: {...}}``) and the
executor's options from the file and the command line."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from forgetscale.config import coerce_value
from forgetscale.errors import UserError


def _close(key: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def coerce_dataclass(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build the dataclass ``cls`` from a mapping, typed by its fields; unknown keys and values
    of the wrong type are refused with ``where.key`` in the message (one :class:`UserError`)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(
                f"{where}.{key}: unknown option (known: {', '.join(fields)}){_close(str(key), fields)}"
            )
        kwargs[key] = coerce_value(f"{where}.{key}", value, hints[key])
    try:
        obj = cls(**kwargs)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return obj


def executor_options(sweep: Any, name: str, flags: dict[str, Any]) -> Any:
    """The executor's ``Options``: the sweep file's ``executor: {NAME: ...}`` block with the
    command line's flags on top; unknown keys and bad values are refused (one line)."""
    from forgetscale.sweep.executors import get_executor

    cls = get_executor(name)
    block = sweep.executor_options.get(name, {})
    coerce_dataclass(cls.Options, block, f"{sweep.path}: executor.{name}")
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}

    def flag(key: str) -> str:
        f = fields.get(key)
        return (f.metadata.get("flag") if f else None) or f"--{name}-{key.replace('_', '-')}"

    for key in flags:
        if key not in fields:
            known = ", ".join(flag(k) for k in fields)
            raise UserError(f"{flag(key)}: not an option of the {name} executor (it has: {known})")
    try:
        return coerce_dataclass(cls.Options, {**block, **flags}, f"executor {name}")
    except UserError as exc:
        text = str(exc)
        for key in flags:
            text = text.replace(f"executor {name}.{key}", flag(key))
            text = text.replace(f"executor {name}: {key} ", f"{flag(key)}: {key} ")
        raise UserError(text) from None
