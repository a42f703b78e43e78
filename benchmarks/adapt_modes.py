"""Step time and peak memory of the adaptation modes `lora` and `freeze` relative to `full`, printed as JSON.

    python benchmarks/adapt_modes.py [--device auto] [--steps 8] [--batch-size 16] [--n-local 4] [--threads 1]
                                     [--global-size 64] [--local-size 32] [--precision fp32|bf16]

One DINOv2 training step (teacher forward, student forward on 2 global + n local crops, DINO + iBOT +
KoLeo, backward, per-group clipping, AdamW, EMA update) on `builtin:vit-small`, patch 16, 64 px global /
32 px local crops by default (``gpu_suite.py`` asks for 224 / 96), a fixed synthetic batch (no data loading: the modes differ in model compute only).
Modes: `full`; `lora` (rank 8 on qkv, alpha 16, final norm trains); `freeze` (embedding + the first half
of the blocks); optionally `lora+freeze` (`--modes full,lora,freeze,lora+freeze`: adapters on the last
6 blocks only, the first 6 frozen). Heads are demo-sized (2048 prototypes, hidden 512, bottleneck 128)
and train in every mode.

Each mode runs in its own processes (one for time, one for memory), so peaks don't mix. Step time:
median of `--steps` steps after `--warmup` steps (wall clock; also the process CPU time, which other
processes on a shared machine disturb less). Peak memory: CUDA `max_memory_allocated` minus what was
allocated before the model; CPU the rise of the resident set size (`ru_maxrss` at the end minus the RSS
just before the model is built) with glibc's mmap threshold fixed at 64 KiB, so that freed tensors leave
the RSS at once. peft is imported before the baseline in every mode. Default run: about 1.5 minutes on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

TARGETS = {"lora": {"peak_memory": 0.60, "step_time": 0.65}, "freeze": {"step_time": 0.75}}


def _config(mode: str, args: argparse.Namespace) -> dict:
    head = {"out_dim": args.head_out_dim, "hidden_dim": 512, "bottleneck_dim": 128}
    adapt: dict = {"mode": "lora" if mode.startswith("lora") else mode}
    if mode.startswith("lora"):
        adapt["lora"] = {"rank": args.lora_rank, "alpha": 2.0 * args.lora_rank, "target_modules": ["qkv"]}
    if mode in ("freeze", "lora+freeze"):
        adapt["freeze_blocks"] = 6  # half of vit-small's 12 blocks (lora+freeze: adapters in the last 6 only)
    return {
        "data": {"table": "unused.csv"},  # no data is read: the batch is synthetic
        "model": {"backbone": "builtin:vit-small", "patch_size": 16, "drop_path_rate": 0.1},
        "ssl": {"method": "dinov2", "head": dict(head), "ibot": {"head": dict(head)}},
        "crops": {"global_size": args.global_size, "local_size": args.local_size, "n_local": args.n_local,
                  "photometric": "none"},
        "train": {"batch_size": args.batch_size, "precision": args.precision},
        "adapt": adapt,
    }


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _worker(mode: str, args: argparse.Namespace, n_steps: int) -> dict:
    import torch

    from metadino.config import config_from_dict
    from metadino.data.batch import Batch
    from metadino.device import resolve_device
    from metadino.models.adapt import count_parameters
    from metadino.train.factory import build_backbone_from_config, build_task
    from metadino.train.optim import apply_optim_schedule, build_param_groups

    try:  # LoRA imports peft (+ transformers): import it in every mode so that no mode's peak includes it
        importlib.import_module("peft")
    except ImportError:
        pass
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = config_from_dict(_config(mode, args))
    B, n_l, G, L = args.batch_size, args.n_local, args.global_size, args.local_size
    n_patches = (G // 16) ** 2
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(2 * B, n_patches, generator=g) < 0.3
    masks[1::2] = False  # half of the global crops are masked, as with mask_probability 0.5
    batch = Batch(
        global_crops=torch.randn(2 * B, 3, G, G, generator=g).to(device),
        local_crops=torch.randn(n_l * B, 3, L, L, generator=g).to(device) if n_l else None,
        masks=masks.to(device),
    )
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base, max_before = _rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    torch.manual_seed(0)
    task = build_task(cfg, build_backbone_from_config(cfg.model, image_size=G)).to(device).train()
    groups = build_param_groups(task.student.backbone, task.named_heads(), layer_decay=cfg.optim.layer_decay,
                                patch_embed_lr_mult=cfg.optim.patch_embed_lr_mult)
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=cfg.optim.betas)
    apply_optim_schedule(optimizer, lr=1e-4, weight_decay=0.04, last_layer_lr=1e-4)
    clip = [p for p in task.clip_groups().values() if p]
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    times, cpu_times = [], []
    for step in range(args.warmup + n_steps):
        if cuda:
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast:
            out = task.training_step(batch, teacher_temp=0.07, step=step)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        for params in clip:
            torch.nn.utils.clip_grad_norm_(params, 3.0)
        optimizer.step()
        task.commit(0.994)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    if cuda:
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        peak_note = "cuda max_memory_allocated - allocated before the model"
    else:
        max_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        peak = max_after - base
        peak_note = "ru_maxrss after - RSS before the model" + ("" if max_after > max_before else " (UNRELIABLE: no new max)")
    trainable, total = count_parameters(task.student)
    return {
        "mode": mode,
        "step_s": round(statistics.median(times[args.warmup:]), 4),
        "step_s_all": [round(t, 4) for t in times[args.warmup:]],
        "step_cpu_s": round(statistics.median(cpu_times[args.warmup:]), 4),
        "peak_memory_mb": round(peak, 1),
        "peak_memory_method": peak_note,
        "trainable_params": trainable,
        "total_params": total,
        "loss_finite": bool(torch.isfinite(out.loss).item()),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--steps", type=int, default=8, help="measured steps per mode (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-local", type=int, default=4)
    p.add_argument("--global-size", type=int, default=64, help="global crop size (px, multiple of 16)")
    p.add_argument("--local-size", type=int, default=32, help="local crop size (px, multiple of 16)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--head-out-dim", type=int, default=2048)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0: torch's default); 1 keeps CPU timings stable on a shared machine")
    p.add_argument("--modes", default="full,lora,freeze", help="comma-separated; full first (ratios are against it)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--measure", default="time", choices=["time", "memory"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        # Memory: a couple of steps are enough (the optimizer state exists from the first step on).
        print(json.dumps(_worker(args.worker, args, args.steps if args.measure == "time" else 2)))
        return

    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("modes", "worker", "measure")]
    # CPU memory runs: with a fixed glibc mmap threshold every freed tensor buffer goes back to the OS at
    # once, so the RSS follows live memory (with the default dynamic threshold, freed buffers stay in the
    # heap and the peak RSS reflects fragmentation history). It slows allocation down, so step times come
    # from a separate process with the default allocator.
    memory_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    results = {}
    t0 = time.perf_counter()
    for mode in args.modes.split(","):
        runs = {}
        for measure, env in (("time", dict(os.environ)), ("memory", memory_env)):
            cmd = [sys.executable, __file__, *forwarded, "--worker", mode, "--measure", measure]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"mode {mode} ({measure}) failed:\n{proc.stderr}")
            runs[measure] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[mode] = {**runs["time"], **{k: v for k, v in runs["memory"].items() if k.startswith("peak_memory")}}
    ratios, met = {}, {}
    if "full" in results:
        full = results["full"]
        for mode, r in results.items():
            if mode == "full":
                continue
            ratios[mode] = {
                "step_time": round(r["step_s"] / full["step_s"], 3),
                "peak_memory": round(r["peak_memory_mb"] / full["peak_memory_mb"], 3),
                "step_cpu_time": round(r["step_cpu_s"] / full["step_cpu_s"], 3),
            }
            if mode in TARGETS:
                met[mode] = {k: ratios[mode][k] <= v for k, v in TARGETS[mode].items()}
    first = next(iter(results.values()))
    print(json.dumps({
        "benchmark": "adapt_modes",
        "device": first["device"], "threads": first["threads"], "precision": args.precision,
        "model": "builtin:vit-small, patch 16",
        "crops": f"2x{args.global_size}px + {args.n_local}x{args.local_size}px", "batch_size": args.batch_size,
        "heads": f"DINO + iBOT, {args.head_out_dim} prototypes, hidden 512, bottleneck 128",
        "lora": f"rank {args.lora_rank} on qkv, alpha {2 * args.lora_rank}", "freeze": "embedding + blocks 0-5 of 12",
        "steps": args.steps, "warmup": args.warmup,
        "modes": results,
        "ratios_vs_full": ratios,
        "targets": TARGETS,
        "targets_met": met,
        "wall_s": round(time.perf_counter() - t0, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
