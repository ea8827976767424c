"""Typed option blocks of a sweep file (``resources:``, ``executor: {NAME: {...}}``) and the
executor's options from the file and the command line."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

from forgetscale.errors import UserError


def _close(key: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _coerce(where: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        errors = []
        for arg in args:
            try:
                return _coerce(where, value, arg)
            except UserError as exc:
                errors.append(exc)
        raise errors[0]
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise UserError(f"{where} must be a list, got {value!r}")
        items = [_coerce(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "yes",
            "on",
            "1",
            "false",
            "no",
            "off",
            "0",
        ):
            return value.lower() in ("true", "yes", "on", "1")
        raise UserError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise UserError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError(f"{where} must be a finite number, got {value!r}")
            return float(value)
        if isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(out):
                    return out
        raise UserError(f"{where} must be a finite number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where} must be a string, got {value!r}")
    return value


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
        kwargs[key] = _coerce(f"{where}.{key}", value, hints[key])
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
