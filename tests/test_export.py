from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import transformers

from metadino.config import config_from_dict
from metadino.data.table import load_table
from metadino.embed import extract_features, read_embeddings
from metadino.errors import UserError
from metadino.export import backbone_from_run, export_run, load_model
from metadino.train.checkpoint import load_latest_checkpoint
from metadino.train.loop import train
from testkit import full_disk_halfway_through_write_text, tiny_config


def _embeddings(model: str, table) -> torch.Tensor:
    backbone, pre = load_model(model)
    return extract_features(backbone, table, pre, batch_size=3, progress=False)


def test_builtin_export_embeds_like_the_run(tmp_path, image_table):
    cfg = config_from_dict(tiny_config(image_table, train={"steps": 2, "checkpoint_every": 1}))
    train(cfg, tmp_path / "run", progress=False)
    export_run(tmp_path / "run", tmp_path / "export")
    table = load_table(image_table, image_column="path")

    from_ckpt, pre = backbone_from_run(tmp_path / "run")
    ref = extract_features(from_ckpt, table, pre, batch_size=5, progress=False)
    torch.testing.assert_close(_embeddings(str(tmp_path / "export"), table), ref, rtol=0, atol=0)
    torch.testing.assert_close(_embeddings(str(tmp_path / "run"), table), ref, rtol=0, atol=0)
    assert ref.shape == (len(table), 32) and ref.std(0).mean() > 0

    out = tmp_path / "emb.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "metadino", "embed", str(tmp_path / "export"), "--table", str(image_table), "--rows", "split=test",
         "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    frame, emb = read_embeddings(out)
    test_rows = load_table(image_table, image_column="path", rows={"split": "test"})
    assert frame["path"].tolist() == test_rows.frame["path"].tolist() and frame["row"].tolist() == test_rows.row_numbers
    test_index = [i for i, s in enumerate(table.frame["split"]) if s == "test"]
    torch.testing.assert_close(torch.from_numpy(emb), ref[test_index])

    # the GPU-minded options: bf16 autocast and a decoding worker give the same rows, embeddings up to rounding
    half = tmp_path / "emb_bf16.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "metadino", "embed", str(tmp_path / "export"), "--table", str(image_table), "--rows",
         "split=test", "--out", str(half), "--quiet", "--precision", "bf16", "--num-workers", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    frame_half, emb_half = read_embeddings(half)
    assert frame_half["row"].tolist() == frame["row"].tolist() and not (emb_half == emb).all()
    torch.testing.assert_close(torch.from_numpy(emb_half), ref[test_index], rtol=0.05, atol=0.05)


def test_export_refuses_non_empty_target(tmp_path, image_table):
    cfg = config_from_dict(tiny_config(image_table, train={"steps": 1}))
    train(cfg, tmp_path / "run", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_run(tmp_path / "run", tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="does not hold an earlier metadino export"):  # --overwrite or not
        export_run(tmp_path / "run", tmp_path / "busy", overwrite=True)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]
    with pytest.raises(UserError, match="not a metadino run"):
        export_run(tmp_path / "busy", tmp_path / "x")


@pytest.mark.parametrize("in_chans", [3, 4])
def test_hf_dinov2_trains_exports_and_reloads(tmp_path, image_table, in_chans):
    """A tiny Dinov2 saved with save_pretrained trains with hf:DIR, exports, and AutoModel loads the export."""
    hf_dir = tmp_path / "dinov2"
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                       patch_size=8, image_size=32, num_channels=3)
    transformers.Dinov2Model(config).save_pretrained(hf_dir)
    table = image_table
    if in_chans != 3:
        from testkit import write_image_table

        table = write_image_table(tmp_path / "data4", channels=in_chans)
    cfg = tiny_config(table, model={"backbone": f"hf:{hf_dir}", "in_chans": in_chans}, train={"steps": 2})
    if in_chans != 3:
        cfg["crops"]["photometric"] = "microscopy"
    train(config_from_dict(cfg), tmp_path / "run", progress=False)
    export_run(tmp_path / "run", tmp_path / "export")

    loaded = transformers.AutoModel.from_pretrained(tmp_path / "export")
    assert type(loaded).__name__ == "Dinov2Model" and loaded.config.num_channels == in_chans
    rows = load_table(table, image_column="path")
    exported = _embeddings(str(tmp_path / "export"), rows)
    from_run = _embeddings(str(tmp_path / "run"), rows)
    torch.testing.assert_close(exported, from_run)
    # the pretrained weights really moved (adaptation happened) and the original directory is untouched
    original = _embeddings(f"hf:{hf_dir}", rows) if in_chans == 3 else None
    if original is not None:
        assert not torch.allclose(original, exported)
    assert transformers.AutoModel.from_pretrained(hf_dir).config.num_channels == 3


# A few steps that move the EMA teacher's adapters well away from zero.
_MOVING = {"stages": {"heads_only_steps": 0, "ramp_steps": 0}, "train": {"steps": 3},
           "optim": {"lr": 0.01, "warmup_steps": 0}, "ssl": {"ema_momentum": 0.5, "ema_momentum_end": 0.5}}


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_lora_run_exports_merged_and_adapter_only(tmp_path, image_table):
    """A LoRA run on a Dinov2 checkpoint: the merged export is a plain transformers model; the adapter-only
    export is a peft adapter directory that peft and load_model both read; all agree within 1e-5."""
    from peft import PeftModel

    hf_dir = tmp_path / "dinov2"
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                       patch_size=8, image_size=32)
    transformers.Dinov2Model(config).save_pretrained(hf_dir)
    lora = {"mode": "lora", "lora": {"rank": 4, "target_modules": ["qkv", "proj"]}}
    cfg = tiny_config(image_table, model={"backbone": f"hf:{hf_dir}"}, adapt=lora, **_MOVING)
    train(config_from_dict(cfg), tmp_path / "run", progress=False)
    adapters = [v for k, v in load_latest_checkpoint(tmp_path / "run")["task"].items() if k.startswith("teacher.") and "lora_B" in k]
    assert len(adapters) == 8 and all(v.abs().max() > 1e-3 for v in adapters)  # merging has something to merge
    export_run(tmp_path / "run", tmp_path / "merged")
    export_run(tmp_path / "run", tmp_path / "adapter", merge_lora=False)

    merged = transformers.AutoModel.from_pretrained(tmp_path / "merged")
    assert type(merged).__name__ == "Dinov2Model" and not any("lora" in k for k in merged.state_dict())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    rows = load_table(image_table, image_column="path")
    ref = _embeddings(str(tmp_path / "run"), rows)
    torch.testing.assert_close(_embeddings(str(tmp_path / "merged"), rows), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(_embeddings(str(tmp_path / "adapter"), rows), ref, atol=1e-5, rtol=0)
    assert not torch.allclose(_embeddings(f"hf:{hf_dir}", rows), ref)  # the adapters did change the model

    x = torch.randn(2, 3, 32, 32)
    peft_model = PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(hf_dir), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(pixel_values=x).pooler_output, merged.eval()(pixel_values=x).pooler_output,
                                   atol=1e-5, rtol=0)


def test_adapter_only_export_of_a_builtin_lora_run_keeps_its_random_base(tmp_path, image_table):
    lora = {"mode": "lora", "freeze_blocks": 1, "lora": {"rank": 2, "target_modules": ["mlp"]}}
    train(config_from_dict(tiny_config(image_table, adapt=lora, **_MOVING)), tmp_path / "run", progress=False)
    export_run(tmp_path / "run", tmp_path / "adapter", merge_lora=False)
    assert (tmp_path / "adapter" / "base" / "model.safetensors").is_file()
    rows = load_table(image_table, image_column="path")
    torch.testing.assert_close(_embeddings(str(tmp_path / "adapter"), rows), _embeddings(str(tmp_path / "run"), rows),
                               atol=1e-5, rtol=0)
    train(config_from_dict(tiny_config(image_table, train={"steps": 1})), tmp_path / "full", progress=False)
    with pytest.raises(UserError, match="adapter-only export needs a LoRA run"):
        export_run(tmp_path / "full", tmp_path / "x", merge_lora=False)


def test_overwriting_an_adapter_export_with_a_merged_one_leaves_no_stale_file(tmp_path, image_table):
    """Before: adapter_config.json, metadino_adapter.json and base/ survived and were loaded instead of the new model."""
    lora = {"mode": "lora", "lora": {"rank": 2, "target_modules": ["mlp"]}}
    train(config_from_dict(tiny_config(image_table, adapt=lora, **_MOVING)), tmp_path / "lora", progress=False)
    train(config_from_dict(tiny_config(image_table, **{**_MOVING, "train": {"steps": 2}})), tmp_path / "full",
          progress=False)
    out = tmp_path / "export"
    export_run(tmp_path / "lora", out, merge_lora=False)
    assert (out / "metadino_adapter.json").is_file() and (out / "base").is_dir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="pass --overwrite"):
        export_run(tmp_path / "full", out)
    export_run(tmp_path / "full", out, overwrite=True)

    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.txt", "preprocessing.json"]
    rows = load_table(image_table, image_column="path")
    new = _embeddings(str(tmp_path / "full"), rows)
    torch.testing.assert_close(_embeddings(str(out), rows), new, rtol=0, atol=0)
    assert not torch.allclose(_embeddings(str(tmp_path / "lora"), rows), new)


def test_preprocessing_json_is_written_atomically(tmp_path, monkeypatch):
    from dataclasses import replace

    from metadino.models.directory import read_preprocessing, write_preprocessing
    from testkit import write_tiny_model

    export = write_tiny_model(tmp_path / "model")
    before = (export / "preprocessing.json").read_text()
    pre = read_preprocessing(export)
    full_disk_halfway_through_write_text(monkeypatch)
    with pytest.raises(OSError):
        write_preprocessing(export, replace(pre, image_size=64))
    monkeypatch.undo()
    assert (export / "preprocessing.json").read_text() == before
    assert not [p for p in export.iterdir() if p.name.startswith(".")]
