"""Feature extraction: reduced precision under autocast (cached apart from fp32), loader workers by device."""

import pytest
import torch

from metadino.data.table import load_table
from metadino.errors import UserError
from metadino.eval import features as features_mod
from metadino.eval.features import cached_extract, extract, loader_workers
from metadino.export import load_model
from testkit import write_labelled_table, write_tiny_model


@pytest.fixture
def setup(tmp_path):
    table = write_labelled_table(tmp_path / "data")
    backbone, pre = load_model(str(write_tiny_model(tmp_path / "model")))
    return load_table(table, image_column="path"), backbone, pre, tmp_path


def test_bf16_features_are_fp32_features_up_to_rounding(setup):
    table, backbone, pre, _ = setup
    full = extract(backbone, table, pre, progress=False, batch_size=8)
    half = extract(backbone, table, pre, progress=False, batch_size=8, precision="bf16")
    assert half.cls.dtype == torch.float32 and half.cls.shape == full.cls.shape
    assert not torch.equal(half.cls, full.cls)  # autocast did run the matmuls in bf16
    cosine = torch.nn.functional.cosine_similarity(half.cls, full.cls, dim=1)
    assert cosine.min() > 0.99
    with pytest.raises(UserError, match="--precision must be one of fp32, bf16, fp16, got 'int8'"):
        extract(backbone, table, pre, progress=False, precision="int8")


def test_each_precision_has_its_own_cache_entry_and_fp32_keeps_the_earlier_key(setup, monkeypatch):
    table, backbone, pre, tmp = setup
    cache = tmp / "cache"
    key = features_mod.cache_key("digest", table, pre, 0)
    assert features_mod.cache_key("digest", table, pre, 0, "fp32") == key
    assert features_mod.cache_key("digest", table, pre, 0, "bf16") != key
    full = cached_extract(backbone, table, pre, cache_dir=cache, progress=False)
    half = cached_extract(backbone, table, pre, cache_dir=cache, progress=False, precision="bf16")
    assert len(list(cache.glob("*.pt"))) == 2 and not torch.equal(full.cls, half.cls)

    def fail(*a, **k):
        raise AssertionError("features were recomputed although cached")

    monkeypatch.setattr(features_mod, "extract", fail)
    assert torch.equal(cached_extract(backbone, table, pre, cache_dir=cache, precision="bf16").cls, half.cls)


def test_loader_workers_default_to_none_on_a_cpu_and_several_beside_a_gpu(monkeypatch):
    assert loader_workers(None, torch.device("cpu")) == 0
    assert loader_workers(3, torch.device("cpu")) == 3
    monkeypatch.setattr(features_mod, "usable_cores", lambda: 16)
    assert loader_workers(None, torch.device("cuda", 0)) == 8
    monkeypatch.setattr(features_mod, "usable_cores", lambda: 2)
    assert loader_workers(None, torch.device("cuda", 0)) == 1
    assert loader_workers(0, torch.device("cuda", 0)) == 0
