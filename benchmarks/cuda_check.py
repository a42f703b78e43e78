"""CUDA correctness in one short run, as JSON: what the CPU test suite cannot check, for a session that is lent a GPU.

    python benchmarks/cuda_check.py [--device cuda] [--steps 6] [--out /tmp/cuda_check]
    python benchmarks/cuda_check.py --device cpu --steps 2      # the same checks on a CPU (a smoke run)

Each check trains the real loop (``metadino.train``) on built-in synthetic 4-channel images with a small ViT and
reports ``ok`` with its figures; a failing check records its error and the others still run:

- ``resume/<precision>`` for fp32, bf16, fp16: a straight run equals (bit for bit, every tensor of the checkpoint) a
  run stopped half-way and resumed; losses finite; fp16 reports its overflow steps and loss scale.
- ``compile``: the compiled backbone's tokens equal eager's (fp32, within 1e-4 of their scale), and the loop trains
  with ``train.compile`` in bf16 to finite losses.
- ``fsdp``: FSDP2 in a one-process group (NCCL on CUDA): the unsharded task's fp32 losses (within 1e-4), fused AdamW
  on DTensors, and a DCP checkpoint that loads back into fresh shards exactly (several ranks need several GPUs:
  the CPU suite runs those on gloo).
- ``embed_bf16``: feature extraction under bf16 autocast against fp32 (cosine of the CLS > 0.99).
- ``knn``: the k-NN search on the device finds the CPU's neighbours (``eval`` searches on its ``--device``).

Run ``gpu_suite.py`` for speed; this script is about correctness and takes about a minute on a GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _config(table: Path, device: str, steps: int, **train: Any) -> dict[str, Any]:
    head = {"out_dim": 256, "hidden_dim": 128, "bottleneck_dim": 64}
    return {
        "data": {"table": str(table)},
        "model": {"backbone": "builtin:vit-tiny", "in_chans": 4, "patch_size": 8, "embed_dim": 64, "depth": 4,
                  "num_heads": 4, "drop_path_rate": 0.1},
        "ssl": {"head": dict(head), "ibot": {"head": dict(head)}},
        "crops": {"global_size": 32, "local_size": 16, "n_local": 2, "photometric": "microscopy"},
        "optim": {"warmup_steps": 1},
        "train": {"steps": steps, "batch_size": 8, "num_workers": 2, "checkpoint_every": max(steps // 2, 1),
                  "log_every": 1, "device": device, **train},
    }


def _records(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def check_resume(table: Path, out: Path, device: str, steps: int, precision: str) -> dict[str, Any]:
    from metadino.config import config_from_dict
    from metadino.train.checkpoint import load_latest_checkpoint
    from metadino.train.loop import train

    cfg = config_from_dict(_config(table, device, steps, precision=precision))
    t0 = time.perf_counter()
    train(cfg, out / "straight", progress=False)
    seconds = time.perf_counter() - t0
    train(cfg, out / "split", stop_after=steps // 2, progress=False)
    train(cfg, out / "split", resume=True, progress=False)
    a, b = load_latest_checkpoint(out / "straight"), load_latest_checkpoint(out / "split")
    differing = [k for k in a["task"] if not torch.equal(a["task"][k], b["task"][k])]
    records = [r for r in _records(out / "straight") if not r.get("overflow")]
    overflows = [r for r in _records(out / "straight") if r.get("overflow")]
    finite = all(torch.isfinite(torch.tensor(r["total"])) for r in records)
    return {"ok": not differing and finite and len(records) == steps, "resume_bit_exact": not differing,
            "differing_tensors": differing[:5], "losses_finite": finite, "first_loss": records[0]["total"],
            "last_loss": records[-1]["total"], "overflow_steps": len(overflows),
            "loss_scale": (a.get("scaler") or {}).get("scale"), "straight_run_s": round(seconds, 2)}


def check_compile(table: Path, out: Path, device: str, steps: int) -> dict[str, Any]:
    """The compiled backbone's tokens equal eager's (fp32, train mode without drop-path), and the loop trains with
    ``train.compile`` in bf16 to finite losses. (Whole-step losses are no test here: KoLeo on the near-identical CLS
    tokens of a fresh network turns float noise into 1e-3 differences.)"""
    from metadino.config import config_from_dict
    from metadino.train.factory import build_backbone_from_config
    from metadino.train.loop import train

    plain = _config(table, device, steps)
    plain["model"]["drop_path_rate"] = 0.0  # no drop-path draws: compiled code draws random numbers differently
    cfg = config_from_dict(plain)
    torch.manual_seed(0)
    backbone = build_backbone_from_config(cfg.model, image_size=32).to(device).train()
    images = torch.randn(8, 4, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    eager = backbone(images)
    backbone.compile()
    compiled = backbone(images)
    worst = max((a - b).abs().max().item() / max(a.abs().max().item(), 1e-12)
                for a, b in ((eager.cls, compiled.cls), (eager.patches, compiled.patches)))
    run = train(config_from_dict(_config(table, device, steps, precision="bf16", compile=True)), out / "compiled",
                progress=False)
    finite = all(torch.isfinite(torch.tensor(r["total"])) for r in run.history)
    return {"ok": worst < 1e-4 and finite and len(run.history) == steps, "tokens_worst_relative_difference": worst,
            "bf16_compiled_losses_finite": finite, "bf16_compiled_last_loss": run.history[-1]["total"]}


def check_fsdp(out: Path, device: str, steps: int) -> dict[str, Any]:
    """FSDP2 on this device in a one-process group (NCCL on CUDA): the same fp32 losses as the unsharded task, and a
    DCP checkpoint that loads back into fresh shards exactly. Several ranks need several devices (torchrun)."""
    import torch.distributed as dist

    from metadino.config import config_from_dict
    from metadino.data.batch import Batch
    from metadino.train.factory import build_backbone_from_config, build_optimizer, build_task
    from metadino.train.fsdp import load_sharded, save_sharded, shard_task

    dev = torch.device(device)
    cfg_dict = _config(out / "unused.csv", device, steps)
    cfg_dict["model"]["drop_path_rate"] = 0.0
    cfg = config_from_dict(cfg_dict)
    g = torch.Generator().manual_seed(0)
    batch = Batch(global_crops=torch.randn(16, 4, 32, 32, generator=g), local_crops=torch.randn(16, 4, 16, 16, generator=g),
                  masks=torch.rand(16, 16, generator=g) < 0.3, index=torch.arange(8), targets={}).to(dev)

    def make(sharded: bool) -> tuple[Any, torch.optim.Optimizer]:
        torch.manual_seed(0)
        task = build_task(cfg, build_backbone_from_config(cfg.model, image_size=32)).to(dev)
        if sharded:
            shard_task(task, precision="fp32")
        optimizer = build_optimizer(cfg, task)
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = 1e-3, 0.04
        return task.train(), optimizer

    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method=f"file://{out / 'fsdp_init'}",
                            rank=0, world_size=1)
    try:
        losses: dict[bool, list[float]] = {}
        for sharded in (False, True):
            task, optimizer = make(sharded)
            losses[sharded] = []
            for _ in range(steps):
                loss = task.training_step(batch, teacher_temp=0.07).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                task.commit(0.99)
                losses[sharded].append(float(loss.detach()))
        save_sharded(out / "fsdp.dcp", task, optimizer, {"step": steps}, is_main=True)
        fresh, fresh_optimizer = make(True)
        load_sharded(out / "fsdp.dcp", fresh, fresh_optimizer)
        saved, loaded = task.state_dict(), fresh.state_dict()
        differing = [k for k in saved if not torch.equal(_full(saved[k]), _full(loaded[k]))]
    finally:
        dist.destroy_process_group()
    worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses[False], losses[True]))
    return {"ok": worst < 1e-4 and not differing, "worst_relative_loss_difference": worst,
            "dcp_round_trip_exact": not differing, "differing_tensors": differing[:5]}


def _full(t: Any) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def check_embed(table: Path, out: Path, device: str) -> dict[str, Any]:
    from metadino.data.table import load_table
    from metadino.eval.features import extract
    from metadino.export import load_model

    backbone, pre = load_model(str(out / "resume-fp32" / "straight"))
    rows = load_table(table, image_column="path")
    t0 = time.perf_counter()
    full = extract(backbone, rows, pre, device=device, progress=False)
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    half = extract(backbone, rows, pre, device=device, progress=False, precision="bf16")
    t_half = time.perf_counter() - t0
    cosine = torch.nn.functional.cosine_similarity(full.cls, half.cls, dim=1).min().item()
    return {"ok": cosine > 0.99, "min_cosine": round(cosine, 5), "fp32_s": round(t_full, 3), "bf16_s": round(t_half, 3)}


def check_knn(device: str) -> dict[str, Any]:
    """The k-NN search on the device finds the CPU's neighbours (100k training rows, 1000 queries, k = 20)."""
    from metadino.eval.knn import topk_cosine

    g = torch.Generator().manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(100_000, 128, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(1000, 128, generator=g), dim=1)
    s_cpu, i_cpu = topk_cosine(train, queries, 20)
    t0 = time.perf_counter()
    s_dev, i_dev = topk_cosine(train.to(device), queries.to(device), 20)
    seconds = time.perf_counter() - t0
    same = (i_dev.cpu() == i_cpu).all(dim=1).float().mean().item()
    worst = (s_dev.cpu() - s_cpu).abs().max().item()
    return {"ok": same > 0.99 and worst < 1e-4, "rows_with_the_same_neighbours": same, "worst_similarity_difference": worst,
            "device_s": round(seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=6, help="training steps per run (even; resumed at half)")
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    args = parser.parse_args()
    from metadino.data.synthetic import generate_dataset

    out = args.out or Path(tempfile.mkdtemp(prefix="cuda_check_"))
    out.mkdir(parents=True, exist_ok=True)
    table = generate_dataset(out / "data", n_images=64, image_size=48, channels=4, seed=0)
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        **{f"resume/{p}": (lambda p=p: check_resume(table, out / f"resume-{p}", args.device, args.steps, p))
           for p in ("fp32", "bf16", "fp16")},
        "compile": lambda: check_compile(table, out / "compile", args.device, args.steps),
        "fsdp": lambda: check_fsdp(out, args.device, args.steps),
        "embed_bf16": lambda: check_embed(table, out, args.device),
        "knn": lambda: check_knn(args.device),
    }
    results: dict[str, Any] = {}
    for name, check in checks.items():
        t0 = time.perf_counter()
        try:
            results[name] = check()
        except Exception as err:  # one failing check must not hide the others
            results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                             "where": traceback.format_exc().strip().splitlines()[-3:]}
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else args.device
    print(json.dumps({"benchmark": "cuda_check", "date": time.strftime("%Y-%m-%d"), "device": device,
                      "torch": torch.__version__, "all_ok": all(r["ok"] for r in results.values()),
                      "checks": results}, indent=2))
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
