"""Strict loading: plain data (YAML, dotted overrides) -> dataclasses, and back.

The machinery is generic over dataclasses: :func:`from_plain` checks every value against the field's annotation
(int, float, bool, str, Literal, unions with None, list, tuple, dict, nested dataclasses) and rejects unknown keys
with the closest known one as a hint. A field's YAML key is its name unless ``metadata["key"]`` says otherwise.
The ``config_*``/``*_config`` functions apply it to :class:`~metadino.config.schema.Config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
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
# Keys a resumed run may change: none of them changes what the run computes. train.steps is not among them (every
# schedule is a function of the total, so a new total would bend the rest of the LR / EMA / temperature curves).
RESUMABLE_CHANGES = frozenset(
    {"train.num_workers", "train.device", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
     "train.on_nonfinite", "train.max_skipped_steps", "train.compile", "train.log_to"}
)

# Keys added after runs had been saved, at the value that reproduces the behaviour from before they existed: a saved
# config without them (an older run being resumed) does not differ from one holding that value.
NEUTRAL_NEW_KEYS: dict[str, Any] = {
    "ssl.gram.weight": 0.0,
    "ssl.gram.clip_negatives": "none",
    "guidance.balance_momentum": 0.0,
    "guidance.lambda.start": "step0",
    "train.on_nonfinite": "stop",
    "train.max_skipped_steps": 10,
    "data.bad_images": "strict",
    "data.max_bad_fraction": 0.0,
    "data.image_template": None,
    "data.channels": None,
    "data.channel_columns": None,
    "data.index_column": None,
    "data.tile_columns": {},
    "data.read.series": 0,
    "data.read.level": 0,
    "data.read.z": None,
    "data.read.t": None,
    "data.read.max_pixels": 1_000_000_000,
    "data.read.nodata": "error",
    "data.read.nodata_value": None,
    "data.read.fill_value": 0.0,
    "data.read.voi_window": False,
    "train.compile": False,
    "train.parallel": "ddp",
    "train.fsdp_reshard_after_forward": True,
    "train.log_to": ["jsonl"],
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


class DuplicateKeyError(yaml.YAMLError):  # type: ignore[misc]  # PyYAML ships no type stubs
    """A mapping holds the same key twice (lines are 1-based)."""

    def __init__(self, key: Any, first_line: int, line: int) -> None:
        super().__init__(f"duplicate key {key!r} (lines {first_line} and {line})")
        self.key, self.first_line, self.line = key, first_line, line


class StrictLoader(yaml.SafeLoader):  # type: ignore[misc]
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (PyYAML keeps the last one silently: a second
    ``train:`` section would replace the first) and reads scientific notation without a dot (``1e-4``, ``5E3``) as a
    float, as YAML 1.2 does (PyYAML follows YAML 1.1, where it is a string). Keys merged in with ``<<:`` may be
    overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, seen[key], line)
                    seen[key] = line
                except TypeError:  # an unhashable key: the base class reports it
                    continue
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml_text(text: str) -> Any:
    """`text` parsed by :class:`StrictLoader` (raises yaml.YAMLError, :class:`DuplicateKeyError` included)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], parsed value). The value is parsed as YAML (so 3 is an int)."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key.sub=value (e.g. train.steps=200).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{text}' has an empty key; write it as key.sub=value.")
    try:
        value = load_yaml_text(raw) if raw.strip() else ""
    except DuplicateKeyError as e:
        raise UserError(f"override '{text}': the key {e.key!r} is given twice.") from None
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
    """A YAML file holding a mapping (an empty file is an empty mapping), read by :class:`StrictLoader`: a key given
    twice in one section is an error naming it and its lines; ``1e-4`` is a float."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{p}' does not exist.")
    try:
        data = load_yaml_text(p.read_text())
    except DuplicateKeyError as e:
        raise UserError(f"config file '{p}' has the key '{e.key}' twice in one section (lines {e.first_line} and "
                        f"{e.line}); keep one, since the second would silently replace the first.") from None
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

    A relative `data.table` or `data.root` in the YAML file is resolved against the file's folder, so configs
    can travel with their data; given as overrides, they are relative to the working directory.
    """
    data = read_yaml(path) if path is not None else {}
    if path is not None:
        _resolve_paths(data, Path(path).parent)
    data = apply_overrides(data, list(overrides))
    _resolve_paths(data, Path.cwd())
    return config_from_dict(data)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make a relative `data.table` / `data.root` absolute against `base` (an absolute table is resolved too, an
    absolute root is kept as given)."""
    section = data.get("data")
    if not isinstance(section, dict):
        return
    for key in ("table", "root"):
        value = section.get(key)
        if not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        if not path.is_absolute():
            section[key] = str((base / path).resolve())
        elif key == "table":
            section[key] = str(path.resolve())


def save_config(cfg: Config, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the resolved config (plus provenance under `_run`) as YAML."""
    data = config_to_dict(cfg)
    if extra:
        data["_run"] = extra
    # imported here: importing the config package loads nothing of the layers below (tests/config/test_schema.py)
    from metadino.files import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(data, sort_keys=False))


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
