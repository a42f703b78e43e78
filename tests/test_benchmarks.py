"""The benchmarks' config builders still build valid configs (they run for minutes, so only their set-up is tested)."""

from __future__ import annotations

import sys
from pathlib import Path

from metadino.config import config_from_dict

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_efficacy_study_arms_build_valid_configs(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import efficacy_study

    cfg = config_from_dict(efficacy_study.fino_plate_paper_config(Path("/x/t.csv"), steps=6, seed=0, quick=True))
    assert cfg.guidance.balance_momentum == 0.99 and cfg.guidance.spurious_weight_divisor == 1.0
    sys.modules.pop("efficacy_study", None)


def test_the_mfu_and_gpu_suite_configs_are_valid(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import mfu

    for preset in ("vit-small", "vit-base", "vit-large"):
        for precision in ("bf16", "fp16"):
            cfg = config_from_dict(mfu._config(preset, precision, 32, 224, 96, 8, "ddp"))
            assert cfg.train.precision == precision and cfg.ssl.head.out_dim == 65536
    sys.modules.pop("mfu", None)
