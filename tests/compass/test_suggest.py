"""The suggestion follows the measured effects (constructed results, no training)."""

from __future__ import annotations

import math

import pytest
import yaml

from metadino.compass.suggest import Effect, guidance_yaml, interval, paired_effect, suggest
from metadino.config import config_from_dict
from testkit import tiny_config

GUIDES = {
    ("antibody", "encouraged"): {"column": "antibody", "role": "informative", "head": "prototypical", "weight": 0.1},
    ("antibody", "suppressed"): {"column": "antibody", "role": "spurious", "head": "classification", "weight": 0.1},
    ("cell_line", "encouraged"): {"column": "cell_line", "role": "informative", "head": "classification",
                                  "weight": 0.1},
    ("cell_line", "suppressed"): {"column": "cell_line", "role": "spurious", "head": "classification", "weight": 0.1},
    ("plate", "encouraged"): {"column": "plate", "role": "informative", "head": "classification", "weight": 0.1},
    ("plate", "suppressed"): {"column": "plate", "role": "spurious", "head": "classification", "weight": 0.1},
    ("focus", "encouraged"): {"column": "focus", "role": "informative", "head": "regression", "weight": 0.05},
    ("focus", "suppressed"): {"column": "focus", "role": "spurious", "head": "regression", "weight": 0.05},
}
COLUMNS = ["antibody", "cell_line", "plate", "focus"]


def effect(*diffs):
    return paired_effect({i: d for i, d in enumerate(diffs)}, {i: 0.0 for i in range(len(diffs))})


def test_paired_effect_is_the_mean_and_t_interval_of_seed_by_seed_differences():
    e = paired_effect({0: 0.60, 1: 0.64, 2: 0.62, 5: 0.9}, {0: 0.50, 1: 0.52, 2: 0.55})  # seed 5 has no pair
    assert e.diffs == pytest.approx([0.10, 0.12, 0.07])
    mean, lo, hi = interval([0.10, 0.12, 0.07])
    assert e.mean == pytest.approx(0.0966667, abs=1e-6) and (e.lo, e.hi) == pytest.approx((lo, hi))
    assert hi - mean == pytest.approx(4.302653 * 0.0251661 / math.sqrt(3), rel=1e-4)  # t(0.975, 2)
    assert e.above_zero and not e.below_zero
    one = paired_effect({0: 0.7}, {0: 0.5})
    assert one.n == 1 and math.isnan(one.lo) and not one.above_zero  # one seed is never evidence
    assert paired_effect({1: 0.7}, {0: 0.5}) is None


def test_a_role_is_kept_only_when_its_interval_is_above_zero():
    effects = {
        ("antibody", "encouraged"): effect(0.03, 0.05, 0.04),  # clearly above zero: kept
        ("antibody", "suppressed"): effect(-0.02, -0.01, -0.03),
        ("cell_line", "encouraged"): effect(0.08, -0.01, 0.04),  # large mean, interval spans zero: dropped
        ("cell_line", "suppressed"): effect(-0.01, 0.0, 0.01),
        ("plate", "encouraged"): effect(0.0, 0.01, -0.01),
        ("plate", "suppressed"): effect(0.01, 0.02, 0.015),  # suppression helped: kept as spurious
        ("focus", "encouraged"): None, ("focus", "suppressed"): effect(0.05),  # one seed only
    }
    s = suggest(COLUMNS, effects, GUIDES, determines={})
    assert [(g.column, g.role, g.guide["role"], g.measured) for g in s.guides] == [
        ("antibody", "encouraged", "informative", True), ("plate", "suppressed", "spurious", True)]
    assert s.guides[0].guide == GUIDES[("antibody", "encouraged")]  # exactly what the trial measured
    assert [c for c, _ in s.not_guided] == ["cell_line", "focus"]
    assert "encouraged not measured" in dict(s.not_guided)["focus"]


def test_harmful_suppression_of_an_entangled_factor_becomes_conditional_on_the_encouraged_anchor():
    effects = {
        ("cell_line", "encouraged"): effect(0.02, 0.03, 0.025),
        ("cell_line", "suppressed"): effect(-0.05, -0.04, -0.06),
        ("plate", "encouraged"): effect(-0.01, 0.01, 0.0),
        ("plate", "suppressed"): effect(-0.03, -0.02, -0.025),  # hurt, and plate determines cell_line
        ("focus", "encouraged"): effect(0.0, 0.01, -0.01),
        ("focus", "suppressed"): effect(-0.03, -0.02, -0.025),  # hurt, but entangled with nothing encouraged
    }
    s = suggest(["cell_line", "plate", "focus"], effects, GUIDES, determines={"plate": ["cell_line"],
                                                                               "focus": ["plate"]})
    by = {g.column: g for g in s.guides}
    assert by["cell_line"].role == "encouraged" and by["cell_line"].measured
    assert by["plate"].guide == {**GUIDES[("plate", "suppressed")], "given": ["cell_line"]}
    assert not by["plate"].measured and "NOT measured" in by["plate"].why
    assert "focus" not in by and [c for c, _ in s.not_guided] == ["focus"]
    # without the encouraged anchor the harmful suppression is simply dropped
    effects[("cell_line", "encouraged")] = effect(0.02, -0.03, 0.0)
    s = suggest(["cell_line", "plate", "focus"], effects, GUIDES, determines={"plate": ["cell_line"]})
    assert s.guides == []


def test_both_roles_helping_keeps_the_larger_and_says_so():
    effects = {("plate", "encouraged"): effect(0.01, 0.02, 0.015), ("plate", "suppressed"): effect(0.03, 0.04, 0.05)}
    s = suggest(["plate"], effects, GUIDES, determines={})
    assert [(g.column, g.role) for g in s.guides] == [("plate", "suppressed")]
    assert "both roles helped" in s.notes[0]


def test_the_block_reads_back_as_a_valid_guidance_section(tmp_path):
    effects = {("cell_line", "encouraged"): effect(0.02, 0.03, 0.025),
               ("plate", "suppressed"): effect(-0.03, -0.02, -0.025), ("plate", "encouraged"): effect(0.0, 0.0, 0.0)}
    s = suggest(["cell_line", "plate"], effects, GUIDES, determines={"plate": ["cell_line"]})
    text = guidance_yaml(s, settings={"balance": True, "lambda": {"schedule": "linear"}}, header=["a test"])
    block = yaml.safe_load(text)["guidance"]
    assert block["balance"] is True and block["lambda"] == {"schedule": "linear"}
    assert block["guides"] == [GUIDES[("cell_line", "encouraged")],
                               {**GUIDES[("plate", "suppressed")], "given": ["cell_line"]}]
    cfg = tiny_config(tmp_path / "t.csv")
    cfg["guidance"] = block
    config_from_dict(cfg)  # pastes into a config as it is
    assert "#   plate:" not in text and "# a test" in text
    empty = guidance_yaml(suggest(["plate"], {}, GUIDES, {}), settings={}, header=[])
    assert yaml.safe_load(empty)["guidance"]["guides"] == []
    assert "plate: encouraged not measured, suppressed not measured" in empty


def test_effect_text():
    assert Effect([0.1], 0.1, math.nan, math.nan).text() == "+0.100 (1 seed, no interval)"
    assert effect(0.01, 0.03).text().startswith("+0.020 [")
