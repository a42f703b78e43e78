"""Command line: argument parsing and user-facing errors only; the work lives in the library."""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metadino.errors import UserError

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 143


OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)*=")  # key.sub=value (a CONFIG path may contain "=" too)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train",
        help="continue self-supervised training of a backbone on your images",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Train (adapt) a backbone with DINO/iBOT self-supervision on the images of a metadata table.
            CONFIG is a YAML file; any key can be overridden as key.sub=value after it. --resume continues the
            run in --out with the config it was started with (CONFIG and overrides may be left out; keys that do
            not change the result, such as train.num_workers, may still be overridden).

            examples:
              metadino train configs/demo.yaml data.table=my/meta.csv --out runs/first
              metadino train --out runs/first --resume
              metadino train configs/demo.yaml --out runs/long --stop-after 500     # split a long run into jobs
              metadino train --out runs/long --resume --stop-after 1000
              torchrun --nproc_per_node 2 -m metadino train configs/demo.yaml --out runs/ddp
              metadino import hpa kaggle-hpa --out hpa.csv      # then train on it with the written data: block
              metadino train configs/microscopy.yaml --data-config hpa.data.yaml model.in_chans=4 --out runs/hpa
            """
        ),
    )
    p.add_argument("config", nargs="?", default=None, help="YAML config file (optional with --resume)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.steps=200")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="K", help="stop cleanly after step K with a checkpoint")
    p.add_argument("--data-config", type=Path, default=None, metavar="YAML",
                   help="a YAML file with a data: block (as `metadino import` writes) whose keys replace CONFIG's; "
                        "its relative table/root paths start at its own folder; overrides still apply after it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's backbone as a standalone model directory",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Export the EMA-teacher backbone of a run's newest checkpoint. HF backbones load with
            transformers.AutoModel.from_pretrained(OUT); every export carries preprocessing.json.
            LoRA runs are merged into a plain model by default; --adapter-only writes a peft adapter
            directory (plus what is needed to rebuild the base) instead.

            examples:
              metadino export runs/first --out models/first
              metadino export runs/lora --out models/lora-adapter --adapter-only
            """
        ),
    )
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("--out", type=Path, required=True, help="output directory (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--merge-lora", action="store_true", help="LoRA runs: fold the adapters into a plain model (default)")
    g.add_argument("--adapter-only", action="store_true", help="LoRA runs: write only the adapters (peft format)")


def _add_embed(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "embed",
        help="embed every image of a table with a model",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Write one row per image (path, row number, CLS embedding) to a Parquet file.
            MODEL is a run directory, an export directory, hf:<id or dir>, or a local HF directory.

            examples:
              metadino embed runs/first --table data/meta.csv --out emb.parquet
              metadino embed models/first --table data/meta.csv --rows split=test --out test.parquet
            """
        ),
    )
    p.add_argument("model", help="run dir, export dir, hf:<id> or local HF dir")
    p.add_argument("--table", type=Path, required=True, help="CSV or Parquet metadata table")
    p.add_argument("--image-column", default="path", help="column with image paths (default: path)")
    p.add_argument("--root", type=Path, default=None, help="folder that relative paths start from (default: the table's)")
    p.add_argument("--rows", default=None, metavar="K=V[,K=V]", help="row filter, e.g. split=test")
    p.add_argument("--out", type=Path, required=True, help="output .parquet file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    _add_precision_option(p)
    _add_model_input_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="adapt the shipped foundation to a new microscopy domain: frozen vs plain vs FINO, on held-out plates (CPU)",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Start from the shipped foundation metadino:synthcell-vit-tiny (pretrained with plain DINOv2 on a
            synthetic microscopy source domain), generate a target domain it has not seen (--seed: other
            cell lines, antibodies and plate effects) and compare, from the same weights, data stream and
            steps: the frozen foundation, plain continued DINOv2 (two-stage), FINO's HPA recipe (antibody
            prototypes + SIGReg) and FINO + plate suppressed given the cell line. Evaluated on held-out
            plates: k-NN (primary) and linear accuracy, worst-plate accuracy, same-plate share of same-label
            neighbours, plate leakage beyond the cell line, leakage of plate / cell line / antibody.
            Prints a side-by-side table; writes OUT/comparison.md, OUT/summary.json and a report per arm.
            One seed is noise-sized; benchmarks/efficacy_study.py pairs seeds.

            examples:
              metadino demo                  # about 10 minutes on 2 CPU cores
              metadino demo --seed 1 --out demo_seed1
              metadino demo --quick          # a smoke run in under a minute
            """
        ),
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    p.add_argument("--steps", type=int, default=None, help="training steps of each trained arm (default: 120, quick: 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny data and a few steps (for tests)")


def _add_compass(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compass",
        help="per metadata column, measure encouraging vs suppressing it (short paired runs) and suggest guidance",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            FINO's per-factor study as one command. For each candidate column and each role (encouraged:
            a guide pulls it in; suppressed: gradient reversal pushes it out), plus one shared run with no
            guide, a short adaptation from CONFIG (its own guides removed; same start, data stream and steps;
            trial seed s = train.seed s in every arm), each evaluated with k-NN and linear probes fitted on
            --train-rows and scored on --val-rows (worst group with --group-column). Writes OUT/compass.md
            and compass.json (paired effects with 95 % intervals, U(label|column) and Cramér's V from the
            inspect audit, warnings where a suppressed column is entangled with an encouraged or
            task-relevant one), compass.png (one arrow per column from the no-guide score to encouraged and
            to suppressed, seed spread) and guidance.yaml: a guidance: block that keeps a role only when its
            interval is above zero and uses given: where suppression alone hurt and the column determines
            an encouraged one. Trials are run directories under OUT/trials/<column>-<role>-seed<s> and
            OUT/trials/none-seed<s>: a rerun skips finished ones and resumes interrupted ones. Several GPUs:
            one trial per device at a time (--devices); CPU: one after another. Bad input (unknown column,
            the label or image column as a candidate, a one-valued column) is refused before any compute.
            --seeds N means seeds 0..N-1; a comma list gives them (3,7).

            examples:
              metadino compass configs/demo_fino.yaml --label-column label \\
                  --train-rows split=train --val-rows split=val --group-column plate \\
                  --columns antibody,cell_line,plate,exposure,focus --steps 40 --seeds 2 --out runs/compass
              metadino compass configs/demo_fino.yaml ...same flags... --dry-run   # trials + estimated time
              metadino compass configs/microscopy.yaml data.table=/data/hpa/meta.csv --label-column localisation \\
                  --train-rows split=train --val-rows split=val --steps 500 --seeds 3 --devices cuda:0,cuda:1
            """
        ),
    )
    p.add_argument("config", type=Path, help="YAML config of the adaptation (its guides are replaced per trial)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. data.table=meta.csv")
    p.add_argument("--label-column", required=True, help="the task label the probes predict (never a candidate)")
    p.add_argument("--train-rows", required=True, metavar="K=V[,K=V]", help="rows the probes are fitted on")
    p.add_argument("--val-rows", required=True, metavar="K=V[,K=V]", help="rows the probes are scored on")
    p.add_argument("--columns", default="", metavar="A,B", help="candidate columns (default: the audit's candidate "
                   "metadata columns: not identifiers, splits or the label)")
    p.add_argument("--steps", type=int, default=None, help="training steps per trial (default: the config's train.steps)")
    p.add_argument("--seeds", default="2", metavar="N|S,S", help="seeds per arm: a count (default 2: seeds 0, 1) "
                   "or a comma list")
    p.add_argument("--group-column", default=None, help="also report worst-group accuracy over this column")
    p.add_argument("--metric", default="knn/accuracy", help="the score the suggestion follows (default knn/accuracy; "
                   "also linear/accuracy, knn/worst_group_accuracy with --group-column, ...)")
    p.add_argument("--devices", default="", metavar="D,D", help="devices to run trials on, one at a time each "
                   "(default: every GPU when train.device is auto/cuda, else train.device)")
    p.add_argument("--out", type=Path, default=Path("runs/compass"), help="output folder (default: runs/compass)")
    p.add_argument("--dry-run", action="store_true", help="list the trials, their state and estimated time; run nothing")
    p.add_argument("--step-seconds", type=float, default=None, metavar="S",
                   help="seconds per training step for the --dry-run estimate (default: measured on finished trials)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_eval(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval",
        help="probe a model's frozen features on your labelled subset (k-NN, linear, attention pooling, leakage)",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Evaluate MODEL (a run directory, an export directory, an hf:<id> or a local HF directory) on
            labelled rows of a table. Features are extracted once (cached) and read by every probe.
            Writes OUT/metrics.json and OUT/report.md (tables, PCA plots, confusion matrix, training curves).

            examples:
              metadino eval runs/first --table meta.csv --label-column label \\
                  --train-rows split=train --test-rows split=test --group-column plate \\
                  --leakage-columns plate,cell_line,antibody --out runs/first/report
              metadino eval hf:facebook/dinov2-small --table meta.csv --label-column label \\
                  --train-rows split=train --val-rows split=val --test-rows split=ood \\
                  --probes knn,linear,attnpool --out reports/dinov2-small
              metadino eval runs/first --table meta.csv --label-column label \\
                  --train-rows split=train --test-rows split=test --group-column plate \\
                  --conditional-leakage plate:cell_line,well:cell_line+antibody \\
                  --purity-columns cell_line,antibody --out runs/first/report

              metadino eval runs/first --table meta.csv --label-column label \\
                  --train-rows split=train --test-rows split=test \\
                  --region-columns x0,y0,x1,y1 --show 8 --out runs/first/report

            --conditional-leakage plate:cell_line reports how much better plate is decoded from the
            embedding plus the cell line than from the cell line alone (≈ 0: the embedding knows nothing
            about plate beyond the cell line). --purity-columns gives each column's leave-one-out k-NN
            accuracy on the embedding's own neighbour graph; with --group-column, also the share of
            same-label neighbours from the same group (e.g. plate), next to its chance level.
            --region-columns (a box, pixels of the original image) or --mask-column (mask files) name each
            test row's annotated object, as crops.label_guided does: the share of the last block's CLS
            attention inside it and the pointing-game hit rate, next to a uniform map's (chance).
            --show N adds the `metadino show` panel of N test images to the report.
            """
        ),
    )
    p.add_argument("model", help="run dir, export dir, hf:<id> or local HF directory")
    p.add_argument("--table", required=True, help="CSV/TSV/Parquet metadata table")
    p.add_argument("--label-column", required=True, help="the column the probes predict")
    p.add_argument("--train-rows", required=True, metavar="K=V[,K=V]", help="rows the probes are fitted on, e.g. split=train")
    p.add_argument("--test-rows", required=True, metavar="K=V[,K=V]", help="rows the probes are scored on, e.g. split=test")
    p.add_argument("--val-rows", default=None, metavar="K=V[,K=V]", help="rows for choosing probe hyper-parameters "
                   "(default: 20%% carved from the train rows)")
    p.add_argument("--group-column", default=None, help="report per-group and worst-group accuracy by this column")
    p.add_argument("--probes", default="knn,linear", help="comma list of knn, linear, attnpool (default: knn,linear)")
    p.add_argument("--leakage-columns", default="", metavar="A,B", help="metadata columns whose linear decodability to report")
    p.add_argument("--conditional-leakage", default="", metavar="T:G[+G],...",
                   help="target:given columns, e.g. plate:cell_line,well:cell_line+antibody — decodability of each "
                        "target from embedding + given columns minus from the given columns alone (train rows)")
    p.add_argument("--purity-columns", default="", metavar="A,B",
                   help="columns whose leave-one-out k-NN accuracy on the embedding's neighbour graph to report "
                        "(train and test rows, --k neighbours)")
    p.add_argument("--feature", default="cls", choices=("cls", "cls+mean"), help="embedding for k-NN, linear and leakage")
    p.add_argument("--k", type=int, default=20, help="k-NN neighbours (default 20)")
    p.add_argument("--temperature", type=float, default=0.07, help="k-NN vote temperature (default 0.07)")
    p.add_argument("--region-columns", default="", metavar="X0,Y0,X1,Y1",
                   help="four box columns (pixels of the original image, x1/y1 exclusive): score the CLS attention "
                        "against each test row's box")
    p.add_argument("--mask-column", default=None, metavar="M", help="or a column of mask files (non-zero = the object)")
    p.add_argument("--show", type=int, default=0, metavar="N", help="add the attention / PCA panel of N test images "
                   "to the report (default 0: none)")
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.json, report.md and plots/")
    _add_table_options(p)
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache "
                   "(default location: $METADINO_CACHE or ~/.cache/metadino)")
    p.add_argument("--seed", type=int, default=0)


def _add_show(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "show",
        help="draw what models look at: CLS attention and patch-feature PCA, side by side",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            For N images of a table (spread evenly over the selected rows), one row each: the input, then per
            MODEL the last block's CLS attention averaged over the heads, and the first three principal
            components of its patch tokens as red, green and blue (PCA fitted per model over the shown images'
            patches). Every MODEL sees the images as eval and embed prepare them (its preprocessing.json).
            Writes FIG.png and FIG.heads.png (every head's map). The input is composited to RGB: 1 channel
            grey, 3 channels as RGB, other counts one colour per channel in order (blue, green, red, yellow,
            magenta, cyan, orange, purple), each channel scaled to its 1st-99.5th percentile; --rgb-channels
            picks up to three channels as red, green, blue instead. Each map has its own colour scale.

            examples:
              metadino show metadino:synthcell-vit-tiny runs/adapted --table meta.csv --rows split=test \\
                  --out show.png
              metadino show hf:facebook/dinov2-small --table meta.csv --n 4 --label-column label --out dinov2.png
              metadino show runs/hpa --data-config hpa.data.yaml --table hpa.csv --rgb-channels 0,1,2 \\
                  --out hpa.png --overwrite
            """
        ),
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="run dir, export dir, metadino:<name>, hf:<id> or "
                   "local HF directory; several are shown side by side")
    p.add_argument("--table", type=Path, required=True, help="CSV/TSV/Parquet metadata table")
    p.add_argument("--rows", default=None, metavar="K=V[,K=V]", help="row filter, e.g. split=test (default: all rows)")
    p.add_argument("--n", type=int, default=8, help="number of images (default 8)")
    p.add_argument("--label-column", default=None, help="a column to print under each image's row number")
    p.add_argument("--rgb-channels", default=None, metavar="I[,J,K]",
                   help="show these channels (0-based) as red, green, blue instead of the default composite")
    p.add_argument("--out", type=Path, required=True, help="the figure to write (.png); FIG.heads.png goes beside it")
    p.add_argument("--overwrite", action="store_true", help="replace existing figures")
    p.add_argument("--image-column", default="path", help="column with image paths (default: path)")
    p.add_argument("--root", default=None, help="folder relative image paths start from (default: the table's folder)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    _add_model_input_options(p)


def _add_inspect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inspect",
        help="audit a metadata table before training and suggest a guidance: block",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Audit the metadata: per column type, cardinality and missing share; associations between
            columns and with the labels; entanglement warnings (a spurious column that nearly determines
            an informative one); with --model, how well each column is decodable from that model's
            embeddings. Ends with a suggested guidance: block to paste into a config.

            examples:
              metadino inspect --table meta.csv
              metadino inspect --table meta.csv --labels label --model hf:facebook/dinov2-small --out audit.md
            """
        ),
    )
    p.add_argument("--table", required=True, help="CSV/TSV/Parquet metadata table")
    p.add_argument("--labels", default="", metavar="A,B", help="task label column(s): never guides, used to judge the others")
    p.add_argument("--model", default=None, help="also measure each column's leakage in this model's embeddings")
    p.add_argument("--out", type=Path, default=None, help="also write the audit to this Markdown file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_table_options(p)


def _add_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "config",
        help="list the config keys with their type, default and meaning",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Print the config reference: every key of a training config, its type, its default and what it does
            (the same text as the README's config table, generated from the schema).

            examples:
              metadino config                      # every key
              metadino config crops                # one section
              metadino config guidance.guides      # the keys of one guide
            """
        ),
    )
    p.add_argument("key", nargs="?", default=None, help="a key or section, e.g. crops or ssl.gram.weight")


def _add_import(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from metadino.importers import EXAMPLES

    examples = "\n".join(f"  {line}" for line in EXAMPLES.values())
    p = sub.add_parser(
        "import",
        help="write a metadino table (+ a data: block) from a public dataset's own files",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Convert a public dataset, as it ships, into a metadino table (CSV, or Parquet when --out ends in
            .parquet) and OUT_STEM.data.yaml beside it: the data: block to paste into a config. Derived metadata
            (year, month, hour, region, location, sequence...) become columns; the summary says which columns
            look informative or spurious. The dataset's files are only read; an existing output is replaced only
            with --overwrite; every image file the table names must exist unless --no-check-files.

            examples:
            """
        ) + examples,
    )
    p.add_argument("layout", choices=list(EXAMPLES), metavar="LAYOUT", help=f"one of: {', '.join(EXAMPLES)}")
    p.add_argument("source", metavar="SOURCE", help="the dataset folder or file (see the examples)")
    p.add_argument("--out", type=Path, required=True, help="the table to write (.csv or .parquet)")
    p.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="folder holding the images, if not where the layout puts them (medmnist: where to write "
                        "the stacked .npy arrays; default beside the table)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-check-files", action="store_true", help="do not check that the image files exist")


def _add_table_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-column", default="path", help="column with image paths (default: path)")
    p.add_argument("--root", default=None, help="folder relative image paths start from (default: the table's folder)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_precision_option(p)
    _add_model_input_options(p)


def _add_precision_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="feature extraction under autocast (bf16/fp16: tensor-core matmuls on a GPU; features differ "
                        "by rounding and are cached apart from fp32's)")


def _add_model_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-config", type=Path, default=None, metavar="YAML",
                   help="a config (a run's config.yaml, or the .data.yaml `metadino import` writes) whose data section "
                        "says how the table names its images (image_template + channels, channel_columns, index_column, "
                        "tile_columns) and reads them (data.read); its data.root applies unless --root is given")
    p.add_argument("--num-workers", type=int, default=None,
                   help="image-decoding processes (default: 0 on a CPU, whose cores the model needs; up to 8 beside a "
                        "GPU)")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="input size instead of the model's preprocessing.json (224 for a plain checkpoint)")
    p.add_argument("--mean", default=None, metavar="M[,M..]", help="per-channel normalisation mean (with --std)")
    p.add_argument("--std", default=None, metavar="S[,S..]", help="per-channel normalisation std (with --mean)")


def _data_block_overrides(path: Path) -> list[str]:
    """The data: block of a YAML file as `data.key=value` overrides (values as JSON, which YAML reads back exactly)."""
    import json

    from metadino.config.loader import read_yaml

    block = read_yaml(path).get("data")
    if not isinstance(block, dict) or not block:
        raise UserError(f"--data-config '{path}' holds no data: block; give the .data.yaml that metadino import wrote "
                        "(or any config with a data section).")
    out = []
    for key, value in block.items():
        if key in ("table", "root") and isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            value = str(path.parent.absolute() / value)
        out.append(f"data.{key}={json.dumps(value)}")
    return out


def _data_layout(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(image layout, read options, root) from --data-config; (None, the defaults, --root) without it."""
    from metadino.data.reading import DEFAULT_READ

    if args.data_config is None:
        return None, DEFAULT_READ, args.root
    from metadino.config import load_config
    from metadino.train.factory import build_layout, build_read_options

    cfg = load_config(args.data_config)
    if args.image_column != "path":
        raise UserError("give the image column in --data-config (data.image_column), not also with --image-column.")
    return build_layout(cfg), build_read_options(cfg), args.root if args.root is not None else cfg.data.root


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} '{text}' is not a comma list of numbers, e.g. 0.485,0.456,0.406.") from None


def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} '{text}' is not a comma list of channel indices, e.g. 3,0,1.") from None


def _model_loader(args: argparse.Namespace, spec: str) -> Callable[[], tuple[Any, Any]]:
    """Load MODEL with the input options of the command line; says on stderr which preprocessing is used."""

    def load() -> tuple[Any, Any]:
        from metadino.export import load_model

        backbone, pre = load_model(spec)
        try:
            pre = pre.overridden(image_size=args.image_size, mean=_floats(args.mean, "--mean"),
                                 std=_floats(args.std, "--std"))
        except ValueError as e:
            raise UserError(f"--image-size/--mean/--std: {e}.") from None
        if args.num_workers is not None and args.num_workers < 0:
            raise UserError(f"--num-workers must be >= 0, got {args.num_workers}.")
        print(f"preprocessing: {pre.describe()}", file=sys.stderr)
        return backbone, pre

    return load


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def parse_conditional(text: str | None) -> dict[str, list[str]]:
    """'plate:cell_line,well:cell_line+antibody' -> {'plate': ['cell_line'], 'well': ['cell_line', 'antibody']}."""
    specs: dict[str, list[str]] = {}
    for part in _columns(text or ""):
        target, sep, given = part.partition(":")
        columns = [g.strip() for g in given.split("+") if g.strip()]
        if not sep or not target.strip() or not columns:
            raise UserError(f"--conditional-leakage: '{part}' is not of the form target:given[+given] "
                            "(e.g. plate:cell_line or well:cell_line+antibody).")
        if target.strip() in specs:
            raise UserError(f"--conditional-leakage: '{target.strip()}' appears twice; give each target once and "
                            "join its given columns with + (e.g. well:cell_line+antibody).")
        specs[target.strip()] = columns
    return specs


def parse_rows(text: str | None) -> dict[str, list[str]]:
    """'split=train,plate=P1' -> {'split': ['train'], 'plate': ['P1']}; repeated keys collect values."""
    rows: dict[str, list[str]] = {}
    if not text:
        return rows
    for part in text.split(","):
        if "=" not in part or not part.split("=", 1)[0].strip():
            raise UserError(f"row filter '{part}' is not of the form column=value (e.g. split=test).")
        key, value = part.split("=", 1)
        rows.setdefault(key.strip(), []).append(value.strip())
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metadino",
        formatter_class=_formatter,
        description="Metadata-guided self-supervised adaptation of DINOv2/DINOv3/ViT backbones.",
        epilog="Run 'metadino COMMAND --help' for each command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_compass(sub)
    _add_train(sub)
    _add_export(sub)
    _add_embed(sub)
    _add_eval(sub)
    _add_inspect(sub)
    _add_show(sub)
    _add_import(sub)
    _add_config(sub)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    import gc

    from metadino.config import load_config
    from metadino.train.distributed import barrier, cleanup
    from metadino.train.loop import train
    from metadino.train.run import saved_config

    config, overrides = args.config, list(args.overrides)
    if config is not None and OVERRIDE.match(config) and not Path(config).exists():
        config, overrides = None, [config, *overrides]  # `train --resume --out D key=value`: an override, not a file
    if config is None and not (args.resume and args.out):
        raise UserError("give a CONFIG file (or --resume with --out RUN_DIR to continue a run with its own config).")
    if args.data_config is not None:
        overrides = [*_data_block_overrides(args.data_config), *overrides]
    out = args.out or Path("runs") / Path(config).stem
    cfg = load_config(config, overrides) if config is not None else saved_config(out, overrides)
    try:
        result = train(cfg, out, resume=args.resume, stop_after=args.stop_after, progress=not args.quiet)
        barrier()  # every rank is done with the process group before it goes
    finally:
        # the run's DDP/FSDP objects hold the group: free them, then destroy it, so that no communication thread is
        # still running when the interpreter exits (gloo aborted a 4-process exit with "terminate called ...")
        gc.collect()
        cleanup()
    if int(os.environ.get("RANK", "0")) == 0:
        state = "finished" if result.finished else f"stopped at step {result.end_step} of {result.total_steps}"
        print(
            f"{state}: steps {result.start_step}->{result.end_step} in {result.seconds:.1f}s, "
            f"loss {result.first_loss:.4f} -> {result.last_loss:.4f}; run: {result.run_dir}"
            if result.first_loss is not None
            else f"nothing to do: {result.run_dir} is already at step {result.end_step}."
        )
        if not result.finished:
            print(f"continue with: metadino train --out {result.run_dir} --resume")
    return EXIT_PREEMPTED if result.preempted else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from metadino.export import export_run

    out = export_run(args.run_dir, args.out, overwrite=args.overwrite, merge_lora=not args.adapter_only)
    print(f"exported {args.run_dir} -> {out}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from metadino.data.table import load_table
    from metadino.device import resolve_device
    from metadino.embed import check_output_path, extract_features, write_embeddings
    from metadino.eval.features import loader_workers
    check_output_path(args.out, overwrite=args.overwrite)  # before loading anything
    layout, read, root = _data_layout(args)
    backbone, pre = _model_loader(args, args.model)()
    table = load_table(args.table, image_column=args.image_column, root=root, rows=parse_rows(args.rows),
                       layout=layout, read=read)
    device = resolve_device(args.device)
    feats = extract_features(backbone, table, pre, batch_size=args.batch_size, device=device, progress=not args.quiet,
                             num_workers=loader_workers(args.num_workers, device), precision=args.precision)
    write_embeddings(table, feats, args.out)
    print(f"wrote {feats.shape[0]} embeddings of size {feats.shape[1]} to {args.out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:

    from metadino.device import resolve_device
    from metadino.eval.evaluate import evaluate
    from metadino.eval.features import loader_workers

    layout, read, root = _data_layout(args)
    device = resolve_device(args.device)
    metrics = evaluate(
        args.model, _model_loader(args, args.model), table=args.table, label_column=args.label_column, train_rows=parse_rows(args.train_rows),
        test_rows=parse_rows(args.test_rows), val_rows=parse_rows(args.val_rows), group_column=args.group_column,
        probes=_columns(args.probes), leakage_columns=_columns(args.leakage_columns),
        conditional_leakage=parse_conditional(args.conditional_leakage), purity_columns=_columns(args.purity_columns),
        region_columns=_columns(args.region_columns), mask_column=args.mask_column, show=args.show, out=args.out,
        image_column=args.image_column, root=root, feature=args.feature, k=args.k, temperature=args.temperature,
        batch_size=args.batch_size, device=device, cache_dir=None if args.no_cache else "default",
        num_workers=loader_workers(args.num_workers, device), layout=layout, read=read,
        seed=args.seed, progress=not args.quiet, precision=args.precision,
    )
    from metadino.eval.report import (
        conditional_table_md,
        leakage_table_md,
        localisation_table_md,
        metrics_table,
        purity_table_md,
    )

    print(metrics_table(metrics))
    if metrics["leakage_details"]:
        print()
        print(leakage_table_md(metrics["leakage_details"]))
    if metrics["conditional_leakage"]:
        print()
        print(conditional_table_md(metrics["conditional_leakage"]))
    if metrics["purity"] or metrics["purity_test"]:
        print()
        print(purity_table_md(metrics["purity"], metrics["purity_test"]))
    if metrics["localisation"]:
        print()
        print(localisation_table_md(metrics["localisation"]))
    print(f"\nwrote {args.out / 'metrics.json'} and {args.out / 'report.md'}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from metadino.audit.inspect import run_inspect
    from metadino.device import resolve_device
    from metadino.eval.features import loader_workers

    layout, read, root = _data_layout(args)
    device = resolve_device(args.device)
    text = run_inspect(
        args.table, image_column=args.image_column, root=root, labels=_columns(args.labels), model=args.model,
        batch_size=args.batch_size, device=str(device), progress=not args.quiet, out=args.out,
        overwrite=args.overwrite, load=_model_loader(args, args.model) if args.model else None,
        num_workers=loader_workers(args.num_workers, device), precision=args.precision, layout=layout, read=read,
    )
    print(text)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from metadino.data.table import load_table
    from metadino.device import resolve_device
    from metadino.eval.show import check_show_out, write_show

    check_show_out(args.out, overwrite=args.overwrite)  # before loading anything
    if not 1 <= args.n <= 64:
        raise UserError(f"--n must be between 1 and 64, got {args.n}.")
    rgb_channels = _ints(args.rgb_channels, "--rgb-channels")
    layout, read, root = _data_layout(args)
    table = load_table(args.table, image_column=args.image_column, root=root, rows=parse_rows(args.rows),
                       required_columns=[args.label_column] if args.label_column else [], layout=layout, read=read)
    models = [(spec, *_model_loader(args, spec)()) for spec in args.models]
    main_fig, heads_fig = write_show(models, table, args.out, overwrite=args.overwrite, n=args.n,
                                     device=resolve_device(args.device), label_column=args.label_column,
                                     rgb_channels=rgb_channels)
    print(f"wrote {main_fig} and {heads_fig}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from metadino.importers import run_import

    print(run_import(args.layout, args.source, args.out, images=args.images, overwrite=args.overwrite,
                     check_files=not args.no_check_files))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from metadino.demo import run_demo

    run_demo(args.out, steps=args.steps, seed=args.seed, quick=args.quick)
    return 0


def _cmd_compass(args: argparse.Namespace) -> int:
    from metadino.compass import parse_seeds, run_compass

    run_compass(args.config, overrides=args.overrides, label_column=args.label_column,
                train_rows=parse_rows(args.train_rows), val_rows=parse_rows(args.val_rows),
                columns=_columns(args.columns) or None, steps=args.steps, seeds=parse_seeds(args.seeds),
                group_column=args.group_column, metric=args.metric, devices=_columns(args.devices) or None,
                out=args.out, dry_run=args.dry_run, step_seconds=args.step_seconds, progress=not args.quiet)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from metadino.config.reference import text_reference

    print(text_reference(args.key), end="")
    return 0


def _quiet_libraries() -> None:
    """transformers prints load reports and progress bars on every from_pretrained; ours say enough."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # unannotated in transformers
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated in transformers
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


COMMANDS = {
    "train": _cmd_train,
    "export": _cmd_export,
    "embed": _cmd_embed,
    "demo": _cmd_demo,
    "compass": _cmd_compass,
    "eval": _cmd_eval,
    "inspect": _cmd_inspect,
    "show": _cmd_show,
    "import": _cmd_import,
    "config": _cmd_config,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`train cfg.yaml --out r train.steps=9`): collect them here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in ("train", "compass") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    _quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"metadino {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"metadino {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
