"""The runnable examples stay runnable (library use without the CLI)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_library_quickstart_trains_guided_steps_and_embeds(tmp_path, capsys):
    accuracy = _load("library_quickstart").main(tmp_path, steps=3)
    printed = capsys.readouterr().out
    assert "guide/antibody" in printed and "guide/plate" in printed  # both guides trained
    assert 0.0 <= accuracy <= 1.0 and not math.isnan(accuracy)
    assert "embeddings (24, 64)" in printed
