"""Model-FLOP utilisation of a full DINOv2 training step against the device's measured matmul peak, as JSON.

    python benchmarks/mfu.py [--preset vit-small] [--precision bf16] [--batch-size 8] [--device auto] [--steps 5]

One step = what the loop does (teacher forward, student forward on 2 global + n local crops, DINO + iBOT + KoLeo,
backward, clipping, AdamW, EMA update), on a fixed random batch (no data loading: this measures the model), patch 16,
2 x 224 px + 8 x 96 px crops by default, heads of DINOv2's size (65536 prototypes). FLOPs are counted once with
``torch.utils.flop_counter.FlopCounterMode`` on a real step (matmuls and convolutions, forward and backward;
attention's two matmuls whichever SDPA backend runs them: the counter knows the CUDA kernels and the math backend's
matmuls, and :func:`_flop_counter` adds the CPU flash kernel with the counter's own SDPA formulas). The
peak is measured here: the best of several large square matmuls in the step's dtype. MFU = counted FLOPs / step time
/ peak. Step time is the median of `--steps` steps after 2 warm-up steps. ``gpu_suite.py`` calls :func:`measure`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_peak(device: torch.device, precision: str, *, size: int | None = None, repeats: int = 5) -> float:
    """The device's sustained matmul FLOP/s in `precision` (best of `repeats` runs of an n x n @ n x n)."""
    n = size or (8192 if device.type == "cuda" else 2048)
    dtype = _DTYPE[precision]
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        (a @ b).sum()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _flop_counter() -> Any:
    """A FlopCounterMode that also counts CPU flash attention, forward and backward (unknown to the counter), as
    the math backend's matmuls count."""
    from torch.utils import flop_counter

    aten = torch.ops.aten

    def forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return int(flop_counter.sdpa_flop_count(query, key, value))

    def backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                 **kwargs: Any) -> int:
        # Model FLOPs: the gradients of the two matmuls (two matmuls each), not the kernel's recomputed scores, so that
        # the count equals the math backend's (autograd through its bmm calls).
        return 2 * int(flop_counter.sdpa_flop_count(query, key, value))

    return flop_counter.FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    })


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config(preset: str, precision: str, batch: int, global_size: int, local_size: int, n_local: int,
            parallel: str) -> dict[str, Any]:
    head = {"out_dim": 65536, "hidden_dim": 2048, "bottleneck_dim": 256}
    return {
        "data": {"table": "/unused.csv"},
        "model": {"backbone": f"builtin:{preset}", "patch_size": 16, "in_chans": 3, "drop_path_rate": 0.1},
        "ssl": {"head": dict(head), "ibot": {"head": dict(head)}},
        "crops": {"global_size": global_size, "local_size": local_size, "n_local": n_local},
        "train": {"batch_size": batch, "precision": precision, "parallel": parallel},
    }


def measure(*, preset: str = "vit-small", precision: str = "bf16", batch: int = 8, device: str = "auto",
            steps: int = 5, global_size: int = 224, local_size: int = 96, n_local: int = 8,
            fsdp: bool = False) -> dict[str, Any]:
    """One configuration's step time, images/s, counted FLOPs, MFU and peak memory (CUDA)."""
    from metadino.config import config_from_dict
    from metadino.data.batch import Batch
    from metadino.device import resolve_device
    from metadino.train.factory import build_backbone_from_config, build_optimizer, build_task

    dev = resolve_device(device)
    cfg = config_from_dict(_config(preset, precision, batch, global_size, local_size, n_local,
                                   "fsdp" if fsdp else "ddp"))
    torch.manual_seed(0)
    task = build_task(cfg, build_backbone_from_config(cfg.model, image_size=global_size), None).to(dev)
    if fsdp:  # one process, one device: the sharding machinery's cost without the communication of several
        import os
        import tempfile

        import torch.distributed as dist

        from metadino.train.fsdp import shard_task

        if not dist.is_initialized():
            init = os.path.join(tempfile.mkdtemp(), "init")
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method=f"file://{init}", rank=0,
                                    world_size=1)
        shard_task(task, precision=precision)
    optimizer = build_optimizer(cfg, task)
    for group in optimizer.param_groups:
        group["lr"], group["weight_decay"] = 1e-4, 0.04
    scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
    g = torch.Generator().manual_seed(0)
    n_patches = (global_size // 16) ** 2
    batch_data = Batch(
        global_crops=torch.randn(2 * batch, 3, global_size, global_size, generator=g),
        local_crops=torch.randn(n_local * batch, 3, local_size, local_size, generator=g) if n_local else None,
        masks=torch.rand(2 * batch, n_patches, generator=g) < 0.3,
        index=torch.arange(batch), targets={},
    ).to(dev)
    autocast = torch.autocast(dev.type, dtype=_DTYPE[precision], enabled=precision != "fp32")
    task.train()

    def step() -> None:
        with autocast:
            out = task.training_step(batch_data, teacher_temp=0.07)
        optimizer.zero_grad(set_to_none=True)
        (out.loss if scaler is None else scaler.scale(out.loss.float())).backward()
        if scaler is not None:
            scaler.unscale_(optimizer)
        for params in task.clip_groups().values():
            torch.nn.utils.clip_grad_norm_(params, 3.0)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        task.commit(0.996)

    with _flop_counter() as counter:
        step()
    flops = counter.get_total_flops()
    step()  # second warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        _sync(dev)
        t0 = time.perf_counter()
        step()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    peak = matmul_peak(dev, precision)
    return {
        "preset": preset, "precision": precision, "batch": batch, "fsdp_one_device": fsdp,
        "crops": f"2x{global_size} + {n_local}x{local_size}", "device": str(dev),
        "step_s": round(seconds, 4), "images_per_s": round(batch / seconds, 2),
        "tflop_per_step": round(flops / 1e12, 4), "achieved_tflops": round(flops / seconds / 1e12, 3),
        "peak_matmul_tflops": round(peak / 1e12, 3), "mfu": round(flops / seconds / peak, 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 3) if dev.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vit-small")
    parser.add_argument("--precision", default="bf16", choices=sorted(_DTYPE))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--n-local", type=int, default=8)
    args = parser.parse_args()
    result = measure(preset=args.preset, precision=args.precision, batch=args.batch_size, device=args.device,
                     steps=args.steps, global_size=args.global_size, local_size=args.local_size, n_local=args.n_local)
    print(json.dumps({"benchmark": "mfu", "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
                      **result, "target_mfu_cpu_bf16": 0.55}, indent=2))


if __name__ == "__main__":
    main()
