"""The config reference (key, type, default, help), rendered from the schema.

The README's config table is :func:`markdown_table` and ``metadino config [KEY]`` prints :func:`text_reference`;
both come from the help texts in :mod:`metadino.config.schema`, so they cannot drift from the code. After editing a
help text, regenerate the README block with::

    python -m metadino.config.reference --write-readme [README.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from metadino.config.loader import field_key, to_plain
from metadino.config.schema import Config
from metadino.errors import UserError

README_START = "<!-- config-reference:start -->"
README_END = "<!-- config-reference:end -->"
# src/metadino/config/reference.py -> the repository root (an editable install or a checkout).
DEFAULT_README = Path(__file__).resolve().parents[3] / "README.md"


@dataclass(frozen=True)
class Entry:
    """One row of the reference: a key or a section."""

    key: str  # dotted YAML path; items of a list of sections read `guidance.guides[].column`
    type: str
    default: str  # as written in YAML ("" for sections)
    help: str
    is_section: bool


def type_text(tp: Any) -> str:
    """A short spelling of an annotation: int, float | null, list[str], [float, float], natural | none."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return "section"
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_text(a) for a in args)
    if origin is list:
        return f"list[{'mapping' if dataclasses.is_dataclass(args[0]) else type_text(args[0])}]"
    if origin is tuple:
        return "[" + ", ".join(type_text(a) for a in args) + "]"
    if origin is dict:
        return "mapping"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def yaml_text(value: Any) -> str:
    """`value` as it would be written in a config file (it loads back as the same value)."""
    text: str = yaml.safe_dump(to_plain(value), default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").strip()


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"config field '{f.name}' has no default")


def entries(cls: type = Config, prefix: str = "") -> list[Entry]:
    """Every key and section below the dataclass `cls`, depth first in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{field_key(f)}"
        help_text = " ".join(f.metadata.get("help", "").split())
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.append(Entry(key, "section", "", help_text, True))
            out += entries(tp, f"{key}.")
            continue
        out.append(Entry(key, type_text(tp), yaml_text(_default(f)), help_text, False))
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if isinstance(item, type) and dataclasses.is_dataclass(item):  # a list of sections: document the fields of one item
            out += entries(item, f"{key}[].")
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(cls: type = Config) -> str:
    """The reference as a Markdown table (the README's config-reference block)."""
    lines = ["| key | type | default | help |", "|---|---|---|---|"]
    for e in entries(cls):
        key = f"**`{e.key}`**" if e.is_section else f"`{e.key}`"
        default = f"`{_cell(e.default)}`" if e.default else ""
        lines.append(f"| {key} | {_cell(e.type)} | {default} | {_cell(e.help)} |")
    return "\n".join(lines) + "\n"


def select(key: str | None, cls: type = Config) -> list[Entry]:
    """The entries of `key` and everything below it (all when None); UserError naming the closest key if none."""
    rows = entries(cls)
    if not key:
        return rows
    picked = [e for e in rows if e.key == key or e.key.startswith((f"{key}.", f"{key}[]"))]
    if not picked:
        close = difflib.get_close_matches(key, [e.key for e in rows], n=1)
        hint = f" Did you mean '{close[0]}'?" if close else " Run 'metadino config' for the list of keys."
        raise UserError(f"unknown config key '{key}'.{hint}")
    return picked


def text_reference(key: str | None = None, cls: type = Config, width: int = 100) -> str:
    """The reference as terminal text: one block per key (its type and default, then the wrapped help)."""
    blocks = []
    for e in select(key, cls):
        head = f"{e.key}  ({e.type})" if e.is_section else f"{e.key}  {e.type}, default: {e.default}"
        body = textwrap.fill(e.help, width=width, initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False)
        blocks.append(f"{head}\n{body}" if e.help else head)
    return "\n".join(blocks) + "\n"


def readme_block(readme: str) -> str:
    """The text between the config-reference markers of a README (ValueError when they are missing)."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {README_START} ... {README_END} block")
    return readme[start + len(README_START) : end].strip("\n") + "\n"


def write_readme(path: Path = DEFAULT_README) -> bool:
    """Replace the README's config-reference block with :func:`markdown_table`; True when the file changed."""
    readme = path.read_text()
    old = readme_block(readme)
    new = markdown_table()
    if old == new:
        return False
    start, end = readme.find(README_START) + len(README_START), readme.find(README_END)
    path.write_text(f"{readme[:start]}\n{new}{readme[end:]}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metadino.config.reference", description=__doc__.split("\n")[0])
    parser.add_argument("--write-readme", nargs="?", const=DEFAULT_README, type=Path, metavar="README",
                        help=f"rewrite the config-reference block of README (default: {DEFAULT_README})")
    args = parser.parse_args(argv)
    if args.write_readme is None:
        print(markdown_table(), end="")
        return 0
    changed = write_readme(args.write_readme)
    print(f"{args.write_readme}: {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
