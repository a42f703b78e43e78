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


def test_the_cuda_check_configs_are_valid_and_its_fsdp_check_passes_on_a_cpu(monkeypatch, tmp_path):
    """The device script's FSDP check runs here as on a GPU (gloo instead of NCCL): one-process FSDP gives the
    unsharded losses and its DCP checkpoint loads back exactly."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import cuda_check

    for precision in ("fp32", "bf16", "fp16"):
        config_from_dict(cuda_check._config(Path("/x/t.csv"), "cuda", 6, precision=precision))
    result = cuda_check.check_fsdp(tmp_path, "cpu", 2)
    assert result["ok"], result
    sys.modules.pop("cuda_check", None)
