"""The GPU set in a few minutes, as JSON: ViT-S/B/L/16 at 224 px, bf16 and fp16 — images/s, MFU against the device's
measured matmul peak, peak memory — DDP vs FSDP2 on one device, and the ratios with GPU targets: LoRA / freeze
against full fine-tuning (``adapt_modes.py``, ViT-S/16 2 x 224 + 8 x 96, bf16) and guided / plain
(``guidance_overhead.py``, bf16).

    python benchmarks/gpu_suite.py [--device cuda] [--presets vit-small,vit-base,vit-large] [--batch-size 32]
    python benchmarks/gpu_suite.py --device cpu --quick        # a smoke run of the same code on a CPU

Every configuration is one :func:`mfu.measure` (a full DINOv2 step: 2 x 224 + 8 x 96 crops, heads of DINOv2's size,
AdamW, EMA; a fixed batch, no data loading). "fsdp" shards student and teacher per block over a single-process group:
on one device it shows what the sharding machinery costs (memory should not drop: W = 1). Each configuration runs in
its own process so that peak memory does not carry over. Targets (issue 13): ViT-L/16 bf16 MFU >= 40 %; guided / plain
<= 1.05; LoRA r=8 <= 0.65 x the time and <= 0.60 x the memory of full fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--presets", default="vit-small,vit-base,vit-large")
    parser.add_argument("--precisions", default="bf16,fp16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, e.g. on a CPU)")
    args = parser.parse_args()
    sizes = {"global_size": 224, "local_size": 96, "n_local": 8}
    presets = args.presets.split(",")
    batch, steps = args.batch_size, args.steps
    if args.quick:
        sizes, presets, batch, steps = {"global_size": 32, "local_size": 16, "n_local": 2}, ["vit-tiny"], 2, 1
    results = []
    for preset in presets:
        for precision in args.precisions.split(","):
            for fsdp in (False, True):
                code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import mfu; "
                        f"print(json.dumps(mfu.measure(preset={preset!r}, precision={precision!r}, batch={batch}, "
                        f"device={args.device!r}, steps={steps}, fsdp={fsdp}, **{sizes!r})))")
                proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
                if proc.returncode != 0:
                    results.append({"preset": preset, "precision": precision, "fsdp_one_device": fsdp,
                                    "error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
                else:
                    results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    ratios = {name: _ratio_benchmark(name, args.device, args.quick) for name in ("adapt_modes", "guidance_overhead")}
    print(json.dumps({"benchmark": "gpu_suite", "date": time.strftime("%Y-%m-%d"), "results": results,
                      "target_vit_large_bf16_mfu": 0.40, **ratios}, indent=2))


def _ratio_benchmark(name: str, device: str, quick: bool) -> dict:
    """Run ``benchmarks/NAME.py`` on `device` in bf16 at the suite's sizes (tiny with `quick`); its JSON, or the error."""
    if name == "adapt_modes":
        sizes = (["--global-size=32", "--local-size=16", "--n-local=2", "--batch-size=2", "--steps=1", "--warmup=1",
                  "--head-out-dim=256"] if quick else
                 ["--global-size=224", "--local-size=96", "--n-local=8", "--batch-size=32", "--steps=5"])
        extra = ["--threads=0", *sizes]
    else:
        extra = ["--repeats=1", "--batch-size=4"] if quick else ["--repeats=12", "--batch-size=64"]
    cmd = [sys.executable, str(HERE / f"{name}.py"), f"--device={device}", "--precision=bf16", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    result: dict = json.loads(proc.stdout[proc.stdout.index("{"):])
    print(json.dumps({name: result.get("ratios_vs_full", result.get("ratio"))}), file=sys.stderr, flush=True)
    return result


if __name__ == "__main__":
    main()
