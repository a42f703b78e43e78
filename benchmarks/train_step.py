"""Step time and peak memory of a DINOv2 training step on the built-in data, printed as JSON.

    python benchmarks/train_step.py [--steps 30] [--depth 6] [--batch-size 48] [--precision fp32]

Measures the demo's model (builtin vit-tiny width, patch 8, 48/24 px crops, 4 channels) through the
real loop (`metadino.train.loop.train`), so data loading, augmentation, teacher, losses, optimizer
and EMA are all included. The first steps (warm-up) are excluded from the per-step time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from metadino.config import config_from_dict
from metadino.data.synthetic import generate_dataset
from metadino.demo import arm_config
from metadino.train.loop import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--num-workers", type=int, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        table = generate_dataset(Path(tmp) / "data", n_images=2000, image_size=64, channels=4, seed=0)
        gen_s = time.perf_counter() - t0
        cfg = arm_config("plain", table, steps=args.steps, seed=0, quick=False)
        # the demo's architecture from random init, so that depth can vary (the foundation has 6 blocks)
        cfg["model"].update(backbone="builtin:vit-tiny", patch_size=8, depth=6, layerscale_init=1.0)
        cfg["train"].update({"log_every": 1, "checkpoint_every": 10**6, "precision": args.precision})
        if args.depth is not None:
            cfg["model"]["depth"] = args.depth
        if args.batch_size is not None:
            cfg["train"]["batch_size"] = args.batch_size
        if args.num_workers is not None:
            cfg["train"]["num_workers"] = args.num_workers
        result = train(config_from_dict(cfg), Path(tmp) / "run", progress=False)
    rates = [h["images_per_s"] for h in result.history[5:]] or [h["images_per_s"] for h in result.history]
    ips = sum(rates) / len(rates)
    batch = cfg["train"]["batch_size"]
    print(json.dumps({
        "benchmark": "train_step",
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "depth": cfg["model"]["depth"], "batch_size": batch, "precision": args.precision,
        "crops": f"2x{cfg['crops']['global_size']}px + {cfg['crops']['n_local']}x{cfg['crops']['local_size']}px",
        "dataset_generation_s_2000_images": round(gen_s, 2),
        "images_per_s": round(ips, 1),
        "step_time_s": round(batch / ips, 4),
        "loss_first": round(result.first_loss, 4), "loss_last": round(result.last_loss, 4),
        "peak_rss_mb": round(result.peak_memory_mb, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
