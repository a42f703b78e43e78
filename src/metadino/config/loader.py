"""Strict loading: plain data (YAML, dotted overrides) -> dataclasses, and back.

The machinery is generic over dataclasses: :func:`from_plain` checks every value against the field's annotation
(int, float, bool, str, Literal, unions with None, list, tuple, dict, nested dataclasses) and rejects unknown keys
with the closest known one as a hint. A field's YAML key is its name unless ``metadata["key"]`` says otherwise.
The ``config_*``/``*_config`` functions apply it to :class:`~metadino.config.schema.Config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml

from metadino.config.schema import Config
from metadino.config.validate import validate
from metadino.errors import UserError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_T = TypeVar("_T", bound="DataclassInstance")

# Keys that may change when a run is resumed; anything else must match the saved config.
RESUMABLE_CHANGES = frozenset(
    {"train.steps", "train.num_workers", "train.device", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every"}
)

# Keys added after runs had been saved, at the value that reproduces the behaviour from before they existed: a saved
# config without them (an older run being resumed) does not differ from one holding that value.
NEUTRAL_NEW_KEYS: dict[str, Any] = {
    "ssl.gram.weight": 0.0,
    "ssl.gram.clip_negatives": "none",
    "guidance.balance_momentum": 0.0,
    "guidance.lambda.start": "step0",
}

_UNION_ORIGINS = (typing.Union, types.UnionType)
_SCALARS = (bool, int, float, str)


# ----------------------------------------------------------------------------------------------
# Plain data -> dataclasses


def type_name(tp: Any) -> str:
    """How an annotation reads in an error message ('an integer', 'one of ...', 'a number or null')."""
    origin = typing.get_origin(tp)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in _UNION_ORIGINS:
        return " or ".join(type_name(a) if a is not type(None) else "null" for a in typing.get_args(tp))
    return str(tp)


def _convert_scalar(value: Any, tp: type, bad: UserError) -> Any:
    # bool is a subclass of int in Python, but `steps: true` is a mistake, not 1.
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise bad
    return float(value) if tp is float else value


def _convert_union(value: Any, tp: Any, key: str, bad: UserError) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return convert(value, arg, key)
        except UserError:
            continue
    raise bad


def _convert_container(value: Any, tp: Any, key: str, bad: UserError) -> Any:
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)
        return [convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"config key '{key}': expected a list of {len(args)} values, got {value!r}.")
        return tuple(convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if not isinstance(value, dict):
        raise bad
    return dict(value)


def convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (lists -> tuples, ints -> floats, ...)."""
    origin = typing.get_origin(tp)
    bad = UserError(f"config key '{key}': expected {type_name(tp)}, got {value!r}.")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return from_plain(tp, value, key)
    if origin in _UNION_ORIGINS:
        return _convert_union(value, tp, key, bad)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if tp in _SCALARS:
        return _convert_scalar(value, tp, bad)
    if tp is Any:
        return value
    if origin in (list, tuple, dict):
        return _convert_container(value, tp, key, bad)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def field_key(f: dataclasses.Field[Any]) -> str:
    """The YAML key of a field (`lambda` is a Python keyword, so its field is `lambda_`)."""
    key: str = f.metadata.get("key", f.name)
    return key


def _unknown_key(cls: type, name: str, prefix: str) -> UserError:
    known = [field_key(f) for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else f" Known keys here: {', '.join(known)}."
    return UserError(f"unknown config key '{prefix}{name}'.{hint}")


def from_plain(cls: type[_T], data: dict[str, Any], prefix: str = "") -> _T:
    """Build the dataclass `cls` from nested plain data; `prefix` is the dotted path of `data` in messages."""
    hints = typing.get_type_hints(cls)
    by_key = {field_key(f): f.name for f in dataclasses.fields(cls)}
    dot = f"{prefix}." if prefix else ""
    kwargs = {}
    for name, value in data.items():
        if not isinstance(name, str) or name not in by_key:
            raise _unknown_key(cls, str(name), dot)
        kwargs[by_key[name]] = convert(value, hints[by_key[name]], f"{dot}{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field (no default) is missing
        raise UserError(f"config section '{prefix or '(top level)'}' is incomplete: {e}.") from None


def to_plain(v: Any) -> Any:
    """`v` as plain data for YAML: dataclasses become dicts (by YAML key), tuples lists; other values stay."""
    if dataclasses.is_dataclass(v):
        return {field_key(f): to_plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [to_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: to_plain(x) for k, x in v.items()}
    return v


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML; works for any dataclass."""
    out: dict[str, Any] = to_plain(cfg)
    return out


# ----------------------------------------------------------------------------------------------
# Text -> plain data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], parsed value). The value is parsed as YAML (so 3 is an int)."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key.sub=value (e.g. train.steps=200).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{text}' has an empty key; write it as key.sub=value.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise UserError(f"override '{text}': the value '{raw}' is not valid YAML.") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to nested plain data. Key existence is checked when the config is built."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"override '{text}': '{'.'.join(path[: i + 1])}' is a value, not a section.")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is an empty mapping)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{p}' does not exist.")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"config file '{p}' is not valid YAML{where}.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config file '{p}' cannot be read: {e}.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{p}' must hold a mapping of sections, not {type(data).__name__}.")
    return data


# ----------------------------------------------------------------------------------------------
# The run config


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from nested plain data (as read from YAML)."""
    if not isinstance(data, dict):
        raise UserError("the config must be a mapping of sections (data, model, ssl, crops, optim, train).")
    # `_run` holds provenance in saved configs; a saved config can be used as-is.
    cfg = from_plain(Config, {k: v for k, v in data.items() if k != "_run"}, "")
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """YAML file (or defaults when None) + dotted overrides -> validated config.

    A relative `data.table` in the YAML file is resolved against the file's folder, so configs
    can travel with their data.
    """
    data = read_yaml(path) if path is not None else {}
    table = (data.get("data") or {}).get("table") if isinstance(data.get("data"), dict) else None
    if path is not None and isinstance(table, str) and table and not Path(table).is_absolute():
        data["data"]["table"] = str((Path(path).parent / table).resolve())
    data = apply_overrides(data, list(overrides))
    table = data.get("data", {}).get("table") if isinstance(data.get("data"), dict) else None
    if isinstance(table, str) and table:  # overrides are relative to the working directory
        data["data"]["table"] = str(Path(table).resolve())
    return config_from_dict(data)


def save_config(cfg: Config, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the resolved config (plus provenance under `_run`) as YAML."""
    data = config_to_dict(cfg)
    if extra:
        data["_run"] = extra
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def _neutral(path: str, value: Any, neutral: dict[str, Any]) -> bool:
    if isinstance(value, dict):
        return all(_neutral(f"{path}.{k}", v, neutral) for k, v in value.items())
    return path in neutral and neutral[path] == value


def diff_configs(
    a: dict[str, Any], b: dict[str, Any], prefix: str = "", neutral: dict[str, Any] = NEUTRAL_NEW_KEYS
) -> list[str]:
    """Dotted keys whose values differ between two plain config dicts (a key of `neutral`, by default
    :data:`NEUTRAL_NEW_KEYS`, missing on one side counts as its neutral value)."""
    out = []
    for key in sorted(set(a) | set(b)):
        if key.startswith("_"):
            continue
        va, vb = a.get(key), b.get(key)
        path = f"{prefix}{key}"
        if (key not in a and _neutral(path, vb, neutral)) or (key not in b and _neutral(path, va, neutral)):
            continue
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, f"{path}.", neutral)
        elif va != vb:
            out.append(path)
    return out
