"""The config reference is rendered from the schema: the README table and `metadino config` cannot drift from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from metadino.cli import main
from metadino.config import Config, GuideConfig, config_to_dict
from metadino.config.reference import entries, markdown_table, readme_block, text_reference
from metadino.errors import UserError

README = Path(__file__).resolve().parents[2] / "README.md"


def _leaves(plain: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in plain.items():
        if isinstance(value, dict) and key != "rows":  # data.rows is a mapping value, not a section
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_readme_block_is_the_generated_table():
    # On failure: python -m metadino.config.reference --write-readme
    assert readme_block(README.read_text()) == markdown_table()


def test_reference_lists_every_key_with_its_default_as_yaml():
    defaults = _leaves(config_to_dict(Config()))
    rows = {e.key: e for e in entries() if not e.is_section}
    assert set(defaults) <= set(rows)
    for key, value in defaults.items():
        assert yaml.safe_load(rows[key].default) == value, key
    # A list of sections documents the fields of one item, with the item's defaults.
    guide = {f"guidance.guides[].{k}": v for k, v in config_to_dict(GuideConfig()).items()}
    assert {k for k in rows if k.startswith("guidance.guides[].")} == set(guide)
    assert all(yaml.safe_load(rows[k].default) == v for k, v in guide.items())


def test_markdown_escapes_pipes_in_cells():
    row = next(line for line in markdown_table().splitlines() if line.startswith("| `guidance.guides[].separator`"))
    assert row.count(" | ") == 3 and "`'\\|'`" in row


def test_cli_config_prints_the_reference(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert out == text_reference()
    for e in entries():
        assert f"\n{e.key}  " in f"\n{out}", e.key


def test_cli_config_of_one_section_and_an_unknown_key(capsys):
    assert main(["config", "ssl.gram"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ssl.gram  (section)") and "ssl.gram.clip_negatives  none | both | teacher" in out
    assert "ssl.sigreg" not in out
    assert main(["config", "ssl.gramm"]) == 2
    assert "Did you mean 'ssl.gram'?" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown config key 'nothing'"):
        text_reference("nothing")
