"""DDP vs FSDP2 per rank: bytes of parameters, gradients and AdamW moments held, peak RSS and step time, as JSON.

    python benchmarks/parallel_memory.py [--world 2] [--preset vit-small] [--steps 3] [--batch-size 2] [--adapt lora]

Each mode runs the real training loop under ``torchrun`` (gloo, CPU) on built-in synthetic images, a
``builtin:<preset>`` backbone at 64/32 px crops with demo-sized heads. After the last step every rank counts the bytes
of the tensors it holds itself — local shards of parameters (student, teacher, heads, guides), their gradients and the
optimizer's moments — which is exact and does not depend on the allocator; the resident set size peak is printed too
(it also holds activations, the data loader and the Python runtime, the same in both modes). Target: FSDP ≈ 1/W of DDP
for parameters, gradients and optimizer state. ``--adapt lora|freeze`` (rank 8 on qkv and proj / the first half of the
blocks frozen): on one device the teacher shares the frozen weights with the student, under FSDP each model holds its
own 1/W of them, so the ratio is 2/W for those. Default run: about 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_PROBE = r'''
import json, os, resource, sys, time
import torch
from metadino.config import load_config
from metadino.train import loop as loop_module
from metadino.train.run import build_run

def local_bytes(tensors):
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total

cfg = load_config(sys.argv[1])
run = build_run(cfg, sys.argv[2], progress=False)
t0 = time.perf_counter()
result = loop_module.fit(run, progress=False)
seconds = time.perf_counter() - t0
params = list(run.task.parameters())
moments = [v for s in run.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
out = {"rank": int(os.environ.get("RANK", "0")), "params_mib": local_bytes(params) / 2**20,
       "grads_mib": local_bytes([p.grad for p in params]) / 2**20, "optimizer_mib": local_bytes(moments) / 2**20,
       "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
       "seconds_per_step": seconds / max(result.end_step - result.start_step, 1)}
with open(sys.argv[3] + f".{out['rank']}.json", "w") as f:
    json.dump(out, f)
'''


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--preset", default="vit-small")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--adapt", default="full", choices=("full", "lora", "freeze"))
    args = parser.parse_args()
    import yaml

    from metadino.data.synthetic import generate_dataset

    out: dict[str, object] = {"benchmark": "parallel_memory", "date": time.strftime("%Y-%m-%d"), "world": args.world,
                              "backbone": f"builtin:{args.preset}", "adapt": args.adapt,
                              "cpus": len(os.sched_getaffinity(0))}
    adapt = {"full": {"mode": "full"}, "freeze": {"mode": "freeze", "freeze_blocks": 6},
             "lora": {"mode": "lora", "lora": {"rank": 8, "alpha": 16, "target_modules": ["qkv", "proj"]}}}[args.adapt]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = generate_dataset(folder / "data", n_images=32, seed=0)
        probe = folder / "probe.py"
        probe.write_text(_PROBE)
        for mode in ("ddp", "fsdp"):
            head = {"out_dim": 4096, "hidden_dim": 512, "bottleneck_dim": 128}
            cfg = {"data": {"table": str(table)}, "model": {"backbone": f"builtin:{args.preset}", "in_chans": 4},
                   "ssl": {"head": dict(head), "ibot": {"head": dict(head)}},
                   "crops": {"global_size": 64, "local_size": 32, "n_local": 2, "photometric": "microscopy"},
                   "train": {"steps": args.steps, "batch_size": args.batch_size, "num_workers": 0,
                             "checkpoint_every": 10_000, "log_every": 1, "parallel": mode}, "adapt": adapt}
            (folder / f"{mode}.yaml").write_text(yaml.safe_dump(cfg))
            env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.world}",
                   "--master_addr=127.0.0.1", f"--master_port={_port()}", str(probe), str(folder / f"{mode}.yaml"),
                   str(folder / f"run_{mode}"), str(folder / mode)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
            if proc.returncode != 0:
                raise SystemExit(proc.stdout + proc.stderr)
            ranks = [json.loads((folder / f"{mode}.{r}.json").read_text()) for r in range(args.world)]
            out[mode] = {k: round(max(r[k] for r in ranks), 2) for k in ranks[0] if k != "rank"}
    ddp, fsdp = out["ddp"], out["fsdp"]
    assert isinstance(ddp, dict) and isinstance(fsdp, dict)
    state = ("params_mib", "grads_mib", "optimizer_mib")
    out["fsdp_over_ddp_state"] = round(sum(fsdp[k] for k in state) / sum(ddp[k] for k in state), 3)
    out["target_state_ratio"] = round(1 / args.world, 3)
    out["fsdp_over_ddp_step_time"] = round(fsdp["seconds_per_step"] / ddp["seconds_per_step"], 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
