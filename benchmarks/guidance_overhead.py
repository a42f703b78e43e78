"""Step-time overhead of metadata guidance, printed as JSON.

    python benchmarks/guidance_overhead.py [--repeats 12] [--batch-size 32] [--device cpu] [--precision fp32]

Same model (builtin:vit-tiny, 12 blocks, width 192, patch 8, 4 channels), same batch of the built-in
data (2 x 48 px + 4 x 24 px crops): a plain DINOv2 step (DINO + iBOT + KoLeo) against a guided step
(three guides, one of each head: antibody prototypical, cell_line classification, exposure regression
as a spurious guide; gradient-norm balancing on; SIGReg on). A step is forward + backward + AdamW +
EMA. The two are timed alternately, after warm-up, and the medians are compared (on CUDA the device is synchronised
around each step). Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from metadino.config import config_from_dict
from metadino.data.dataset import SSLDataset, collate_crops
from metadino.data.synthetic import generate_dataset
from metadino.data.table import load_table
from metadino.data.targets import TableTargets
from metadino.train.factory import (
    build_augmentation,
    build_backbone_from_config,
    build_encoders,
    build_guides,
    build_task,
)

GUIDES = [
    {"column": "antibody", "head": "prototypical", "weight": 0.1},
    {"column": "cell_line", "head": "classification", "weight": 0.1},
    {"column": "exposure", "role": "spurious", "head": "regression", "weight": 0.05},
]


def make_config(table: Path, batch: int, guided: bool) -> dict:
    head = {"out_dim": 4096, "hidden_dim": 1024, "bottleneck_dim": 256}
    cfg = {
        "data": {"table": str(table), "rows": {"split": "train"}},
        "model": {"backbone": "builtin:vit-tiny", "in_chans": 4, "patch_size": 8, "drop_path_rate": 0.1},
        "ssl": {"head": dict(head), "ibot": {"head": dict(head)}},
        "crops": {"global_size": 48, "local_size": 24, "n_local": 4, "photometric": "microscopy"},
        "train": {"batch_size": batch},
    }
    if guided:
        cfg["ssl"]["sigreg"] = {"weight": 0.05}
        cfg["guidance"] = {"balance": True, "guides": GUIDES}
    return cfg


def build(table_path: Path, batch_size: int, guided: bool, device: torch.device):
    cfg = config_from_dict(make_config(table_path, batch_size, guided))
    table = load_table(table_path, image_column="path", rows={"split": "train"})
    encoders = build_encoders(cfg, table)
    torch.manual_seed(0)
    backbone = build_backbone_from_config(cfg.model, image_size=48)
    guides = build_guides(cfg, encoders, embed_dim=backbone.embed_dim, dino_out_dim=cfg.ssl.head.out_dim)
    task = build_task(cfg, backbone, guides).to(device).train()
    targets = TableTargets.from_table(table, encoders) if encoders else None
    ds = SSLDataset(table, build_augmentation(cfg, 8), seed=0, in_chans=4, targets=targets)
    batch = collate_crops([ds[(0, i)] for i in range(batch_size)]).to(device)
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)
    return task, batch, opt


def step(task, batch, opt, precision: str = "fp32") -> float:
    device = next(task.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = task.training_step(batch, teacher_temp=0.07, step=100, guide_lambda=0.5)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    task.commit(0.99)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        table = generate_dataset(Path(tmp) / "data", n_images=400, image_size=64, channels=4, seed=0)
        plain = build(table, args.batch_size, False, device)
        guided = build(table, args.batch_size, True, device)
        for _ in range(2):  # warm-up
            step(*plain, args.precision), step(*guided, args.precision)
        t_plain, t_guided = [], []
        for _ in range(args.repeats):
            t_plain.append(step(*plain, args.precision))
            t_guided.append(step(*guided, args.precision))
    mp, mg = statistics.median(t_plain), statistics.median(t_guided)
    print(json.dumps({
        "benchmark": "guidance_overhead",
        "model": "builtin:vit-tiny (12 blocks, width 192, patch 8, 4 channels)",
        "batch": f"{args.batch_size} images, 2x48px + 4x24px crops",
        "threads": torch.get_num_threads(), "device": str(device), "precision": args.precision,
        "plain_step_s_median": round(mp, 4),
        "guided_step_s_median": round(mg, 4),
        "ratio": round(mg / mp, 4),
        "target": 1.05,
        "meets_target": mg / mp <= 1.05,
        "repeats": args.repeats,
    }, indent=2))


if __name__ == "__main__":
    main()
