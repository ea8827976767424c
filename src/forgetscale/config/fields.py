"""The config machinery every config of forgetscale shares: fields with help and bounds,
typed coercion of YAML and command-line values, ``--key=value`` overrides, YAML files.

A config is a dataclass whose fields are made by :func:`config_field` (the PEFT style: the
help text and the bounds live on the field), so ``--help``, the error messages and the
docs come from one place. :func:`check_field_values` checks every field's choices and
bounds; :func:`coerce_value` types one value; :func:`check_known` refuses an unknown key
with the closest known ones; :func:`read_yaml_file` reads a YAML mapping, refusing
duplicate keys rather than silently taking the last.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from forgetscale.errors import UserError


def config_field(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its help text; ``kw`` may hold ``choices`` and numeric bounds
    (``gt``, ``ge``, ``lt``, ``le``) that every value (each item of a list) must meet."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, **kw})
    if isinstance(default, dict):
        return field(
            default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help, **kw}
        )
    return field(default=default, metadata={"help": help, **kw})


def check_bounds(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    """Numbers must be finite and inside the field's bounds (each item of a list)."""
    items = value if isinstance(value, list) else [value]
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if not math.isfinite(v):
            raise UserError(f"{name} must be a finite number, got {v}")
        for key, ok, words in (
            ("gt", lambda a, b: a > b, "greater than"),
            ("ge", lambda a, b: a >= b, "at least"),
            ("lt", lambda a, b: a < b, "less than"),
            ("le", lambda a, b: a <= b, "at most"),
        ):
            if key in meta and not ok(v, meta[key]):
                positive = (key, meta[key]) in (("gt", 0), ("ge", 1))
                need = "positive" if positive else f"{words} {_number(meta[key])}"
                raise UserError(f"{name} must be {need}, got {_number(v)}")


def _number(v: float) -> str:
    """An integer as written (100000, not 1e+05), a float in its short form."""
    return str(v) if isinstance(v, int) else f"{v:g}"


def check_field_values(obj: Any, where: str | None = None) -> None:
    """Every field of the config dataclass ``obj``: its ``choices`` and numeric bounds.

    An error names the field as ``where.name`` when ``where`` (a block of a file, such as
    ``analysis``) is given, else by the field's ``flag`` metadata (``--min-step (min_step)``)
    when it has one, else by its name."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = field_name(f, where)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"{name}={value!r} is not one of: {', '.join(map(str, choices))}")
        check_bounds(name, value, f.metadata)


def field_name(f: dataclasses.Field, where: str | None = None) -> str:
    """How an error names the field ``f``: ``where.name``, ``--flag (name)`` or ``name``."""
    if where:
        return f"{where}.{f.name}"
    flag = f.metadata.get("flag")
    return f"{flag} ({f.name})" if flag else f.name


def config_from_mapping(cls: type, values: Any, where: str) -> Any:
    """The config dataclass ``cls`` from a mapping read from a file (a block ``where`` of it):
    an unknown key is refused naming the closest known ones, each value is typed by its
    field (:func:`coerce_value`; a list field takes a YAML list, not a string), then the
    class checks itself. Every problem is one :class:`UserError` naming ``where.key``."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise UserError(f"{where}: give a mapping of keys ({', '.join(names)}), got {values!r}")
    unknown = [str(k) for k in values if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(names)}{hint}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        tp = hints[key]
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        options = typing.get_args(tp) if union else (tp,)
        listy = any(typing.get_origin(a) in (list, tuple) for a in options)
        if isinstance(value, str) and listy and str not in options:
            raise UserError(f"{where}.{key} must be a list, got {value!r}")
        kwargs[key] = coerce_value(f"{where}.{key}", value, tp)
    return cls(**kwargs)


def coerce_value(where: str, value: Any, tp: Any) -> Any:
    """``value`` (from YAML or a parsed command-line string) as the type ``tp``; a value of the
    wrong type is one :class:`UserError` naming ``where`` (a key, ``grid.rank[1]``)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        errors = []
        for arg in args:
            try:
                return coerce_value(where, value, arg)
            except UserError as exc:
                errors.append(exc)
        raise errors[0]
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise UserError(f"{where} must be a list, got {value!r}")
        items = [coerce_value(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
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


def check_known(keys: Iterable[str], known: Iterable[str], where: str) -> None:
    """Refuse a key that is not in ``known``, naming the closest known keys."""
    known = list(known)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"unknown config key {key!r} in {where}{hint}")


def parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: typing.Sequence[str]) -> dict[str, Any]:
    """Parse ``--key=value`` / ``key=value`` strings (values read as YAML scalars or lists).

    ``--key value`` pairs are accepted too. Dashes in keys become underscores.
    """
    out: dict[str, Any] = {}
    i = 0
    items = list(items)
    while i < len(items):
        item = items[i]
        if not item.startswith("--") and "=" not in item:
            raise UserError(f"expected --key=value, got {item!r}")
        body = item[2:] if item.startswith("--") else item
        if "=" in body:
            key, text = body.split("=", 1)
        else:
            if i + 1 >= len(items) or items[i + 1].startswith("--"):
                # a bare flag: --gradient_checkpointing means true
                key, text = body, "true"
            else:
                key, text = body, items[i + 1]
                i += 1
        key = key.strip().replace("-", "_")
        if not key:
            raise UserError(f"empty key in override {item!r}")
        out[key] = parse_scalar(text)
        i += 1
    return out


def read_yaml_file(path: str | Path, *, what: str = "config file") -> Any:
    """The YAML document in ``path`` (``what`` names it in errors: ``sweep file``); a missing
    file, a folder, a file that is not text, invalid YAML or a key given twice in one mapping
    is one :class:`UserError`. Every YAML file forgetscale reads is read here."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{path} is a folder; give the {what}'s path")
    if not p.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text (YAML) file: it is not UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader that refuses duplicate keys
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = getattr(mark, "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        problem = getattr(exc, "problem", None) or ""
        if problem.startswith("duplicate key"):
            raise UserError(f"{path}: {problem}{at}") from None
        raise UserError(f"{path} is not valid YAML{at}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping key given twice."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        seen: list[Any] = []
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.append(key)
        return super().construct_mapping(node, deep=deep)


def stable_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, floats in repr form."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fields_help(cls: type) -> str:
    """Every field of the config dataclass ``cls`` with its type, default and help text."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tp = str(hints[f.name]).replace("typing.", "").replace("<class '", "").replace("'>", "")
        lines.append(f"  {f.name} ({tp}, default {default!r})\n      {f.metadata['help']}")
    return "\n".join(lines)


def fields_help_dict(cls: type) -> dict[str, str]:
    """Each field of the config dataclass ``cls`` and its help line."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
