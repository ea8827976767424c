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

import collections.abc
import copy
import dataclasses
import difflib
import json
import math
import numbers
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


def check_bounds(name: str, value: Any, meta: Mapping[str, Any], *, symbols: bool = False) -> None:
    """Numbers must be finite and inside the field's bounds (each item of a list).

    The error says the bound in words (``at least 0``, ``positive``), as a config file's keys
    are told, or with ``symbols`` as a command-line option's are (``>= 0``)."""
    items = value if isinstance(value, list | tuple) else [value]
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if not math.isfinite(v):
            raise UserError(f"{name} must be a finite number, got {v}")
        for key, ok, words, sign in (
            ("gt", lambda a, b: a > b, "greater than", ">"),
            ("ge", lambda a, b: a >= b, "at least", ">="),
            ("lt", lambda a, b: a < b, "less than", "<"),
            ("le", lambda a, b: a <= b, "at most", "<="),
        ):
            if key in meta and not ok(v, meta[key]):
                positive = (key, meta[key]) in (("gt", 0), ("ge", 1))
                if symbols:
                    need = f"{sign} {_number(meta[key])}"
                else:
                    need = "positive" if positive else f"{words} {_number(meta[key])}"
                raise UserError(f"{name} must be {need}, got {_number(v)}")


def _number(v: float) -> str:
    """An integer as written (100000, not 1e+05), a float in its short form."""
    return str(v) if isinstance(v, int) else f"{v:g}"


def check_field_values(obj: Any, where: str | None = None, *, symbols: bool = False) -> None:
    """Every field of the config dataclass ``obj``: its ``choices`` and numeric bounds.

    An error names the field as ``where.name`` when ``where`` (a block of a file, such as
    ``analysis``) is given, by its bare name when ``where`` is ``""`` (the caller says where
    the value came from), else by the field's ``flag`` metadata (``--min-step (min_step)``)
    when it has one, else by its name. ``symbols``: see :func:`check_bounds`."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = field_name(f, where)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"{name}={value!r} is not one of: {', '.join(map(str, choices))}")
        check_bounds(name, value, f.metadata, symbols=symbols)


def check_fields(obj: Any, where: str | None = None, *, symbols: bool = False) -> None:
    """Check every field of the config dataclass ``obj`` as it was given to its constructor
    (the Python API: nothing is parsed from text here): its type (:func:`check_type`; the
    checked value replaces the given one, so a numpy integer becomes an ``int``), a
    ``nonempty`` string where the field says so, then its choices and bounds
    (:func:`check_field_values`, which also says how an error names the field). Call it from
    ``__post_init__``; every problem is one :class:`UserError`."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        name = field_name(f, where)
        value = check_type(name, getattr(obj, f.name), hints[f.name])
        if f.metadata.get("nonempty") and isinstance(value, str) and not value.strip():
            raise UserError(f"{name} must be a non-empty string, got {value!r}")
        object.__setattr__(obj, f.name, value)
    check_field_values(obj, where, symbols=symbols)


def check_type(name: str, value: Any, tp: Any) -> Any:
    """``value`` checked against the annotation ``tp`` without parsing text (a string is not a
    number here: :func:`coerce_value` reads text). A numpy number or a whole float for an
    ``int`` is accepted as the plain number; a bool is not a number. Annotations other than
    ``int``, ``float``, ``str``, ``bool``, lists, tuples, dicts and unions of them (a class
    of its own, ``Any``) are left to the config's own checks. Returns the checked value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if not all(_checkable(a) for a in options):
            return value
        errors = []
        for arg in options:
            try:
                return check_type(name, value, arg)
            except UserError as exc:
                errors.append(exc)
        if len(options) == 1:
            raise errors[0]
        kinds = list(dict.fromkeys(_KINDS.get(typing.get_origin(a) or a, str(a)) for a in options))
        if "a number" in kinds and "an integer" in kinds:
            kinds.remove("an integer")
        kinds = ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]
        raise UserError(f"{name} must be {kinds}, got {value!r}")
    if origin in (list, tuple, collections.abc.Sequence):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise UserError(f"{name} must be a list, got {value!r}")
        item = next((a for a in typing.get_args(tp) if a is not Ellipsis), Any)
        items = [check_type(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"{name} must be a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        return {
            check_type(name, k, key_tp): check_type(f"{name}.{k}", v, value_tp)
            for k, v in value.items()
        }
    boolean = isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's too
    if tp is bool:
        if boolean:
            return bool(value)
        raise UserError(f"{name} must be true or false, got {value!r}")
    if tp is int or tp is float:
        kind = "an integer" if tp is int else "a number"
        if boolean or not isinstance(value, numbers.Real):
            raise UserError(f"{name} must be {kind}, got {value!r}")
        if not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value}")
        if type(value) not in (int, float):  # a numpy number
            value = int(value) if isinstance(value, numbers.Integral) else float(value)
        if tp is int:
            if value != int(value):
                raise UserError(f"{name} must be an integer, got {value}")
            return int(value)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{name} must be a string, got {value!r}")
        return value
    return value


_KINDS = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
    tuple: "a list",
    collections.abc.Sequence: "a list",
    dict: "a mapping",
}


def _checkable(tp: Any) -> bool:
    """Whether :func:`check_type` knows the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return all(_checkable(a) for a in typing.get_args(tp) if a is not type(None))
    return tp in (int, float, str, bool, dict) or origin in (
        list,
        tuple,
        dict,
        collections.abc.Sequence,
    )


def field_name(f: dataclasses.Field, where: str | None = None) -> str:
    """How an error names the field ``f``: ``where.name``, ``name`` (``where`` is ``""``),
    ``--flag (name)`` or ``name``."""
    if where is not None:
        return f"{where}.{f.name}" if where else f.name
    flag = f.metadata.get("flag")
    return f"{flag} ({f.name})" if flag else f.name


def config_from_mapping(cls: type, values: Any, where: str) -> Any:
    """The config dataclass ``cls`` from a mapping read from a file (a block ``where`` of it):
    an unknown key is refused naming the closest known ones, each value is typed by its
    field (:func:`coerce_value`; a list field takes a YAML list, not a string), then the
    class checks itself. Every problem is one :class:`UserError` naming ``where.key``."""
    if values is None:
        values = {}
    check_mapping_keys(cls, values, where)
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


def check_mapping_keys(cls: type, values: Any, where: str) -> None:
    """``values`` (a block ``where`` of a file) is a mapping of keys of the config dataclass
    ``cls``: else one :class:`UserError`, naming the known keys and the closest ones."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    if not isinstance(values, Mapping):
        raise UserError(f"{where}: give a mapping of keys ({', '.join(names)}), got {values!r}")
    unknown = [str(k) for k in values if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(names)}{hint}"
        )


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


def option_help(cls: type, name: str) -> str:
    """The ``--help`` line of the command-line option that sets field ``name`` of the config
    dataclass ``cls``: its help text and its bounds (``>= 1, <= 10000``), ready for argparse
    (``%`` escaped; the command appends its own default)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    bounds = [f"{sign} {_number(f.metadata[k])}" for k, sign in signs.items() if k in f.metadata]
    text = f.metadata.get("help", "") + (f"; {', '.join(bounds)}" if bounds else "")
    return text.replace("%", "%%")
