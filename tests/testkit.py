"""Helpers shared by tests: tiny on-disk datasets and tiny model configs."""

from __future__ import annotations

from pathlib import Path


def write_image_table(folder: Path, n: int = 16, size: int = 40, channels: int = 3, seed: int = 0) -> Path:
    """Random 8-bit PNG (RGB) or .npy (other channel counts) images plus a CSV with a split column."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    lines = ["path,split,label"]
    for i in range(n):
        pixels = (rng.random((size, size, channels)) * 255).astype(np.uint8)
        if channels == 3:
            name = f"imgs/{i}.png"
            Image.fromarray(pixels).save(folder / name)
        else:
            name = f"imgs/{i}.npy"
            np.save(folder / name, pixels.transpose(2, 0, 1))
        lines.append(f"{name},{'test' if i % 4 == 3 else 'train'},{i % 3}")
    table = folder / "meta.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def tiny_hf_model(kind: str, **extra):
    """A random 2-layer, 32-wide transformers model of one supported class (patch 8, 32 px), seeded.

    kind: dinov2 (Dinov2Model), dinov2_reg (Dinov2WithRegistersModel, 2 registers), dinov3 (DINOv3ViTModel,
    2 registers); MLP width 64. ``extra`` goes into the config (e.g. num_channels).
    """
    import torch
    import transformers

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32, **extra)
    torch.manual_seed(0)
    if kind == "dinov2":
        return transformers.Dinov2Model(transformers.Dinov2Config(mlp_ratio=2, **common))
    if kind == "dinov2_reg":
        cfg = transformers.Dinov2WithRegistersConfig(mlp_ratio=2, num_register_tokens=2, **common)
        return transformers.Dinov2WithRegistersModel(cfg)
    if kind == "dinov3":
        return transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(intermediate_size=64, num_register_tokens=2, **common))
    raise ValueError(kind)


SMALL_CONFIG = {"data": {"table": "meta.csv"}, "model": {"backbone": "builtin:vit-tiny", "patch_size": 8},
                "crops": {"global_size": 32, "local_size": 16}}


def small_config(**sections):
    """A validated Config of a tiny builtin ViT on a (never read) table: for config tests, no files needed."""
    from metadino.config import config_from_dict

    data = {k: dict(v) for k, v in SMALL_CONFIG.items()}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return config_from_dict(data)


def tiny_config(table: Path, **sections) -> dict:
    """A config dict for a 2-block, 32-wide ViT and tiny heads: a training step takes milliseconds."""
    head = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}
    cfg = {
        "data": {"table": str(table)},
        "model": {"backbone": "builtin:vit-tiny", "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        "ssl": {"head": dict(head), "ibot": {"head": dict(head)}},
        "crops": {"global_size": 32, "local_size": 16, "n_local": 2},
        "optim": {"warmup_steps": 1},
        "train": {"steps": 4, "batch_size": 4, "num_workers": 0, "checkpoint_every": 2, "log_every": 1},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def launch_ranks(script: str, world: int, tmp: Path, inputs: dict) -> list[dict]:
    """Run `python script RANK INIT_FILE INPUTS OUT` as `world` gloo processes; return each rank's saved dict.

    The script's ``__main__`` joins the group through ``file://INIT_FILE`` and ``torch.save``s its
    outputs to OUT. Used by the 2-process equivalence tests.
    """
    import os
    import subprocess
    import sys

    import torch

    in_path = tmp / "inputs.pt"
    torch.save(inputs, in_path)
    here = Path(__file__).resolve().parent  # tests/: the worker scripts import testkit too
    paths = [str(here.parent / "src"), str(here), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(r), str(tmp / "init"), str(in_path), str(tmp / f"out{r}.pt")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in range(world)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=90)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, p in enumerate(procs):
        if p.returncode != 0:
            raise AssertionError(f"rank {r} failed:\n{logs[r] if r < len(logs) else ''}")
    return [torch.load(tmp / f"out{r}.pt", weights_only=True) for r in range(world)]


def torchrun_train(cfg: dict, cfg_path: Path, out: Path, nproc: int = 2, extra: tuple[str, ...] = ()) -> str:
    """`torchrun -m metadino train` on `nproc` gloo processes (the loop itself checks replicas at the end); returns
    the output. `extra`: more arguments for `train` (e.g. --resume, --stop-after K)."""
    import os
    import socket
    import subprocess
    import sys

    import yaml

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
        f"--master_port={port}", "-m", "metadino", "train", str(cfg_path), "--out", str(out), "--quiet", *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def join_group(rank: int, init_file: str, world: int) -> None:
    """Worker side of :func:`launch_ranks`: one thread, gloo through a shared file."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def leave_group(out: dict, out_path: str) -> None:
    """Save a rank's outputs and leave cleanly: DDP objects must be freed before the group is destroyed."""
    import gc

    import torch
    import torch.distributed as dist

    torch.save(out, out_path)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()

# --------------------------------------------------------------------------- eval tests


def write_labelled_table(folder: Path, n: int = 60, size: int = 32, seed: int = 0, multilabel: bool = False) -> Path:
    """RGB PNGs whose dominant channel is the class (a/b/c), plus plate, noise and split columns."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    lines = ["path,label,plate,noise,split"]
    for i in range(n):
        cls = i % 3
        pixels = rng.random((size, size, 3)) * 0.5
        pixels[..., cls] += 0.5
        name = f"imgs/{i}.png"
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / name)
        label = "abc"[cls] + ("|d" if multilabel and i % 2 else "")
        split = "test" if i % 5 == 4 else "train"
        lines.append(f"{name},{label},P{i % 4},{rng.normal():.4f},{split}")
    table = folder / "meta.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def write_channel_files_table(table: Path, out: Path, *, read: dict | None = None, nan_corner: bool = False) -> Path:
    """The RGB table of :func:`write_labelled_table` as one .npy file per channel (HPA-like: `{Id}_{r,g,b}.npy`, no
    path column): writes OUT/t.csv, the channel files under OUT/channels and OUT/t.data.yaml (its data: block, with
    `read` as data.read); returns the YAML. `nan_corner`: pixel (0, 0) of every channel file is NaN (no data)."""
    import numpy as np
    import pandas as pd
    import yaml

    from metadino.data.images import load_image

    frame = pd.read_csv(table)
    folder = out / "channels"
    folder.mkdir(parents=True)
    for i, path in enumerate(frame["path"]):
        img = load_image(table.parent / path).numpy()
        for c, name in enumerate(("r", "g", "b")):
            plane = img[c].copy()
            if nan_corner:
                plane[0, 0] = np.nan
            np.save(folder / f"im{i}_{name}.npy", plane)
    frame["Id"] = [f"im{i}" for i in range(len(frame))]
    frame.drop(columns=["path"]).to_csv(out / "t.csv", index=False)
    data = {"table": str(out / "t.csv"), "root": str(folder), "image_template": "{Id}_{channel}.npy",
            "channels": ["r", "g", "b"], **({"read": read} if read else {})}
    (out / "t.data.yaml").write_text(yaml.safe_dump({"data": data}))
    return out / "t.data.yaml"


def write_tiny_model(folder: Path, seed: int = 0, depth: int = 2) -> Path:
    """A random 2-block, 32-wide built-in ViT (LayerScale 1) written as a metadino export directory (32 px input)."""
    from dataclasses import replace

    import torch

    from metadino.models.directory import write_export
    from metadino.models.preprocessing import Preprocessing
    from metadino.models.registry import build_backbone

    torch.manual_seed(seed)
    backbone = build_backbone("builtin:vit-tiny", in_chans=3, patch_size=8, image_size=32, embed_dim=32, depth=depth, num_heads=2)
    with torch.no_grad():  # LayerScale at 1 instead of 1e-5: a random CLS token then sees the image
        for name, p in backbone.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
    pre = replace(Preprocessing.default_for(backbone), image_size=32)
    return write_export(backbone.eval(), folder, pre)


def rank_part(x, split: tuple[int, ...], rank: int):
    """Rank `rank`'s rows of `x` when the rows are split into consecutive runs of `split[r]` rows per rank."""
    start = sum(split[:rank])
    return x[start:start + split[rank]]


def full_disk_halfway_through_write_text(monkeypatch) -> None:
    """Make every ``Path.write_text`` write half of its text, then fail as a full disk does (atomic-write tests)."""
    import pathlib

    real = pathlib.Path.write_text

    def half_then_full_disk(self, text, *a, **k):
        real(self, text[: len(text) // 2], *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", half_then_full_disk)
