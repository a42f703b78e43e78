"""The multi-crop pipeline (crops + photometric presets + iBOT masks) still gives the outputs of commit d3b9de9.

The fixture ``fixtures/pipeline_d3b9de9.pt`` was written by this file's ``__main__`` from the code at that
commit (run once, never by the tests)::

    git worktree add --detach /tmp/pipeline_base d3b9de9
    PYTHONPATH=/tmp/pipeline_base/src .venv/bin/python tests/data/test_pipeline_fixture.py

It holds, per case, the crops and masks of a few (seed, epoch, index) keys on small images (stored in full)
and, for the real ViT-S/16 recipe (2 x 224 + 8 x 96 crops of a 512 x 512 image), a SHA-256 per output
tensor plus its float64 sum (to tell the size of a mismatch). Images are integer formulas (exact on every
platform), quantised to 16 bits like a decoded uint16 TIFF. Written on one intra-op thread, as loader
workers and the tests run: torch's float reductions (means) round differently when split over threads.

Every output is compared with ``torch.equal`` (bit-identical values): the speed-ups changed no arithmetic
that these images exercise. The one documented exception, per-channel std of ``self_normalize`` computed
as a full reduction (float64 both ways), is equal here too; see tests/data/photometric/test_ops.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from metadino.data.crops import MultiCropAugmentation, eval_view
from metadino.data.photometric import build_photometric

FIXTURE = Path(__file__).parent / "fixtures" / "pipeline_d3b9de9.pt"

# name: preset, channels, image (h, w), crop settings, keys stored in full; "full" cases store hashes only
CASES: dict[str, dict[str, Any]] = {
    "microscopy": dict(preset="microscopy", c=4, hw=(80, 72), g=48, l=24, n_local=4, patch=8,
                       keys=[(0, 0, 0), (1, 2, 3), (7, 1, 11)]),
    "natural": dict(preset="natural", c=3, hw=(72, 80), g=48, l=24, n_local=4, patch=8,
                    keys=[(0, 0, 0), (1, 2, 3), (7, 1, 11), (3, 0, 5)]),
    "xray": dict(preset="xray", c=1, hw=(64, 64), g=32, l=16, n_local=2, patch=8, keys=[(0, 0, 1), (2, 1, 4)]),
    "satellite": dict(preset="satellite", c=5, hw=(40, 48), g=32, l=16, n_local=2, patch=8, keys=[(0, 0, 1)]),
    "none": dict(preset="none", c=2, hw=(20, 24), g=32, l=16, n_local=2, patch=8, keys=[(0, 0, 1)]),
    "full_microscopy": dict(preset="microscopy", c=4, hw=(512, 512), g=224, l=96, n_local=8, patch=16,
                            keys=[(0, 0, 0), (5, 3, 17)], full=True),
    "full_natural": dict(preset="natural", c=3, hw=(512, 512), g=224, l=96, n_local=8, patch=16,
                         keys=[(0, 0, 0), (5, 3, 17), (2, 9, 4)], full=True),
}


def pixels(c: int, h: int, w: int, salt: int) -> torch.Tensor:
    """A smooth ramp plus hash noise, as uint16 values in an int64 tensor [C, H, W] (integer maths only)."""
    ch = torch.arange(c, dtype=torch.int64).view(-1, 1, 1)
    i = torch.arange(h, dtype=torch.int64).view(1, -1, 1)
    j = torch.arange(w, dtype=torch.int64).view(1, 1, -1)
    ramp = ((i * (ch + 1) * 37 + j * (ch + 2) * 23 + salt * 101) * 11) % 50000
    noise = ((ch * h * w + i * w + j + salt) * 2654435761 % 4294967296) >> 20  # 12 bits
    return ramp + noise * 3  # < 50000 + 12285 < 65536


def image_of(case: dict[str, Any], salt: int = 0) -> torch.Tensor:
    h, w = case["hw"]
    return pixels(case["c"], h, w, salt).to(torch.float32) / 65535.0  # as images.to_float does for uint16


def augmentation(case: dict[str, Any]) -> MultiCropAugmentation:
    return MultiCropAugmentation(global_size=case["g"], local_size=case["l"], n_local=case["n_local"],
                                 patch_size=case["patch"], photometric=build_photometric(case["preset"], in_chans=case["c"]))


def outputs(case: dict[str, Any], key: tuple[int, int, int]) -> list[torch.Tensor]:
    seed, epoch, index = key
    crops = augmentation(case)(image_of(case, salt=index), seed=seed, epoch=epoch, index=index)
    return crops.global_crops + crops.local_crops + crops.masks


def eval_output(case: dict[str, Any]) -> torch.Tensor:
    return eval_view(image_of(case), case["l"], build_photometric(case["preset"], in_chans=case["c"]))


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def make_fixture() -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, case in CASES.items():
        entry: dict[str, Any] = {"keys": {}}
        for key in case["keys"]:
            outs = outputs(case, key)
            if case.get("full"):
                entry["keys"][key] = [(digest(t), float(t.double().sum())) for t in outs]
            else:
                entry["keys"][key] = outs
        if not case.get("full"):
            entry["eval"] = eval_output(case)
        data[name] = entry
    return data


@pytest.fixture(scope="module")
def baseline() -> dict[str, Any]:
    return torch.load(FIXTURE, weights_only=False)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not c.get("full")])
def test_small_cases_equal_the_d3b9de9_outputs(baseline: dict[str, Any], name: str) -> None:
    case = CASES[name]
    for key in case["keys"]:
        expected = baseline[name]["keys"][key]
        got = outputs(case, key)
        assert len(got) == len(expected)
        for k, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert g.dtype == e.dtype and g.shape == e.shape, (name, key, k)
            assert torch.equal(g, e), (name, key, k, (g.double() - e.double()).abs().max().item())
    assert torch.equal(eval_output(case), baseline[name]["eval"])


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.get("full")])
def test_the_vit_s16_recipe_equals_the_d3b9de9_outputs(baseline: dict[str, Any], name: str) -> None:
    case = CASES[name]
    for key in case["keys"]:
        for k, (t, (sha, total)) in enumerate(zip(outputs(case, key), baseline[name]["keys"][key], strict=True)):
            assert digest(t) == sha, (name, key, k, float(t.double().sum()) - total)


if __name__ == "__main__":
    import metadino

    torch.set_num_threads(1)  # as in loader workers and tests/conftest.py: reductions split by thread count
    print("writing", FIXTURE, "from", metadino.__file__)
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(make_fixture(), FIXTURE)
