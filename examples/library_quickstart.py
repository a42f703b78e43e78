"""metadino as a library, without the CLI: data -> task -> a few training steps -> embeddings -> k-NN.

    python examples/library_quickstart.py [--out /tmp/metadino-example] [--steps 20]

It builds the same pieces `metadino train` builds (a config, the table, the task, its optimizer and schedule),
drives them with a hand-written loop — `training_step`, backward, `optimizer.step`, `commit` — and then embeds the
held-out rows with the EMA teacher. Runs on a laptop CPU in well under a minute.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from metadino.config import config_from_dict
from metadino.data.dataset import SSLDataset, collate_crops
from metadino.data.synthetic import generate_dataset
from metadino.data.table import load_table
from metadino.data.targets import TableTargets
from metadino.embed import extract_features
from metadino.eval.knn import knn_predict
from metadino.train.factory import (
    build_augmentation,
    build_backbone_from_config,
    build_encoders,
    build_guides,
    build_optimizer,
    build_schedule,
    build_task,
    preprocessing_from_config,
)
from metadino.train.optim import apply_optim_schedule


def main(out: Path, steps: int) -> float:
    # 1. Data: a folder of 4-channel microscopy-like images and their metadata table (plate, cell line, antibody).
    table_path = generate_dataset(out / "data", n_images=96, image_size=32, seed=0, overwrite=True)
    cfg = config_from_dict({
        "data": {"table": str(table_path), "rows": {"split": "train"}},
        "model": {"backbone": "builtin:vit-tiny", "in_chans": 4, "patch_size": 8, "embed_dim": 64, "depth": 2,
                  "num_heads": 2},
        "ssl": {"head": {"out_dim": 128, "hidden_dim": 64, "bottleneck_dim": 32},
                "ibot": {"head": {"out_dim": 128, "hidden_dim": 64, "bottleneck_dim": 32}}},
        "crops": {"global_size": 32, "local_size": 16, "n_local": 2, "photometric": "microscopy"},
        # Pull the antibody (informative) in with a prototype bank, push the plate (spurious) out by gradient reversal.
        "guidance": {"guides": [{"column": "antibody", "head": "prototypical", "weight": 0.1},
                                {"column": "plate", "role": "spurious", "head": "classification", "weight": 0.1}]},
        "train": {"steps": steps, "batch_size": 16},
    })

    # 2. The task (student, EMA teacher, heads, guide heads), its optimizer and schedules, from the config.
    table = load_table(cfg.data.table, image_column=cfg.data.image_column, rows=cfg.data.rows)
    encoders = build_encoders(cfg, table)
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone_from_config(cfg.model, image_size=cfg.crops.global_size)
    guides = build_guides(cfg, encoders, embed_dim=backbone.embed_dim, dino_out_dim=cfg.ssl.head.out_dim)
    task = build_task(cfg, backbone, guides).train()
    optimizer, schedule = build_optimizer(cfg, task), build_schedule(cfg)
    dataset = SSLDataset(table, build_augmentation(cfg, backbone.patch_size), seed=cfg.train.seed, in_chans=4,
                         targets=TableTargets.from_table(table, encoders))

    # 3. A few steps by hand (metadino.train.loop.fit adds checkpoints, logging, DDP and the finite check).
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        values = schedule(step)
        apply_optim_schedule(optimizer, lr=values["lr"], weight_decay=values["weight_decay"],
                             last_layer_lr=values["last_layer_lr"], backbone_scale=values["backbone_scale"])
        rows = torch.randint(len(dataset), (cfg.train.batch_size,), generator=generator).tolist()
        batch = collate_crops([dataset[(0, i)] for i in rows])
        out = task.training_step(batch, teacher_temp=values["teacher_temp"], step=step,
                                 guide_lambda=values["guide_lambda"])
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        task.commit(values["momentum"])
        if step % 5 == 0 or step == steps - 1:
            terms = {k: round(float(v.detach()), 3) for k, v in out.terms.items() if k in ("total", "dino") or "guide/" in k}
            print(f"step {step:3d}  {terms}")

    # 4. Embed with the EMA teacher and score a k-NN probe of the cell line on the held-out plates.
    teacher = task.export_backbone.eval()
    pre = preprocessing_from_config(cfg, teacher)
    train_rows = load_table(table_path, image_column="path", rows={"split": "train"})
    test_rows = load_table(table_path, image_column="path", rows={"split": "test"})
    x_train = extract_features(teacher, train_rows, pre, progress=False)
    x_test = extract_features(teacher, test_rows, pre, progress=False)
    classes = sorted(set(train_rows.frame["cell_line"]))
    labels = lambda rows: torch.tensor([classes.index(v) for v in rows.frame["cell_line"]])  # noqa: E731
    scores = knn_predict(x_train, labels(train_rows), x_test, n_classes=len(classes), k=10)
    accuracy = float((scores.argmax(1) == labels(test_rows)).float().mean())
    print(f"embeddings {tuple(x_test.shape)}; k-NN cell-line accuracy on held-out plates: {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/metadino-example"))
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    main(args.out, args.steps)
