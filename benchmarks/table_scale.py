"""A million-row table: load time, memory per loader worker, and the file check, printed as JSON.

    python benchmarks/table_scale.py [--rows 1000000] [--workers 2] [--check-files 20000]

What it measures, in one run:

- **load**: ``load_table`` on a CSV of `--rows` rows (an image path and four metadata columns, Cell Painting-like:
  plate, well, site, compound), without the file check — wall time and the rise of the resident set size.
- **per worker**: the memory a forked DataLoader worker writes to (its private pages: ``Private_Dirty`` of
  ``/proc/self/smaps_rollup``, i.e. what copy-on-write has copied) after it has looked up every row's image path
  once and the garbage collector has run — as a worker of a long run does. Two representations of the same paths:
  ``before``, a Python list of ``pathlib.Path`` (how metadino v0.2 held them), and ``after``, the table's
  :class:`~metadino.data.sources.ImageSource` (Arrow arrays). Each in its own process, so the two never share.
- **file check**: stat'ing `--check-files` real (empty) files: the serial loop of v0.2 (``os.path.isfile`` per
  path) against :func:`~metadino.data.sources.check_files_exist` (threads), as a ratio — with the file system's
  caches warm, and cold (caches dropped before each; needs root, as on this project's machines).

Nothing here decodes images (the pre-check's decoding is the same per image in both versions). Default run: about
a minute and a half on 2 CPU cores, ~2 GB of memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def _write_table(folder: Path, rows: int) -> Path:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    i = np.arange(rows)
    frame = pd.DataFrame({
        "path": [f"images/plate_{p:04d}/r{w:03d}f{s:02d}-ch1.tiff" for p, w, s in zip(i // 3456, (i // 9) % 384, i % 9)],
        "plate": i // 3456, "well": (i // 9) % 384, "site": i % 9,
        "compound": rng.integers(0, 5000, rows).astype(str),
    })
    path = folder / "table.csv"
    frame.to_csv(path, index=False)
    return path


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _private_dirty_mib() -> float:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


def _load(table: Path) -> dict[str, float]:
    from metadino.data.table import load_table

    rss0 = _rss_mib()
    t0 = time.perf_counter()
    loaded = load_table(table, check_files=False)
    seconds = time.perf_counter() - t0
    out = {"rows": len(loaded), "seconds": round(seconds, 2), "rss_rise_mib": round(_rss_mib() - rss0, 1)}
    del loaded
    return out


class _Touch:
    """A dataset whose item i reads row i's image path, as SSLDataset does before decoding."""

    def __init__(self, paths: object, lookup: str):
        self.paths, self.lookup = paths, lookup

    def __len__(self) -> int:
        return 1

    def __getitem__(self, _: int) -> float:
        before = _private_dirty_mib()
        n = len(self.paths)  # type: ignore[arg-type]
        for i in range(n):
            text = str(self.paths[i]) if self.lookup == "before" else self.paths.files_of(i)[0]  # type: ignore[index,attr-defined]
            del text
        gc.collect()  # a long-running worker's collector visits every tracked object
        return _private_dirty_mib() - before


def _worker_memory(kind: str, table: Path, workers: int, queue: mp.Queue) -> None:
    import torch
    from torch.utils.data import DataLoader

    from metadino.data.table import load_table

    loaded = load_table(table, check_files=False)
    paths: object = [Path(loaded.images.files[0][i].as_py()) for i in range(len(loaded))] if kind == "before" \
        else loaded.images
    gc.collect()
    gc.freeze()  # what the parent holds at fork is not written by the parent's own collector afterwards either
    dataset = _Touch(paths, kind)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, sampler=list(range(workers)),
                        multiprocessing_context="fork", persistent_workers=False)
    grown = [float(x) for x in loader]
    torch.set_num_threads(1)
    queue.put({"private_dirty_mib_per_worker": round(max(grown), 1)})


def _check_files(n: int) -> dict[str, float]:
    import numpy as np
    import pandas as pd

    from metadino.data.sources import ImageLayout, build_source, check_files_exist

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = [f"f{i:06d}.png" for i in range(n)]
        for name in names:
            (folder / name).touch()
        frame = pd.DataFrame({"path": names})
        source = build_source(frame, ImageLayout(), root=folder, name="t.csv", row_numbers=list(range(1, n + 1)))
        texts = [str(folder / name) for name in names]
        out: dict[str, float] = {"files": n}
        for cache in ("warm", "cold"):
            if cache == "cold" and not _drop_caches():
                out["cold"] = "not measured (dropping the page cache needs root)"  # type: ignore[assignment]
                continue
            t0 = time.perf_counter()
            assert all(os.path.isfile(t) for t in texts)
            serial = time.perf_counter() - t0
            if cache == "cold":
                _drop_caches()
            t0 = time.perf_counter()
            check_files_exist(source, "t.csv", list(range(1, n + 1)), ImageLayout())
            threaded = time.perf_counter() - t0
            out[cache] = {"serial_s": round(serial, 3), "threads_s": round(threaded, 3),  # type: ignore[assignment]
                          "speedup": round(serial / threaded, 2)}
        del np
    return out


def _drop_caches() -> bool:
    """Empty the page, dentry and inode caches (a cold file system, as after a reboot or on a fresh node)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--check-files", type=int, default=20_000)
    args = parser.parse_args()
    result: dict[str, object] = {"benchmark": "table_scale", "date": time.strftime("%Y-%m-%d"),
                                 "cpus": len(os.sched_getaffinity(0)), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        table = _write_table(Path(tmp), args.rows)
        result["table_mib"] = round(table.stat().st_size / 2**20, 1)
        result["load"] = _load(table)
        ctx = mp.get_context("fork")
        for kind in ("before", "after"):
            queue: mp.Queue = ctx.Queue()
            proc = ctx.Process(target=_worker_memory, args=(kind, table, args.workers, queue))
            proc.start()
            result[f"worker_{kind}"] = queue.get()
            proc.join()
    before = result["worker_before"]["private_dirty_mib_per_worker"]  # type: ignore[index]
    after = result["worker_after"]["private_dirty_mib_per_worker"]  # type: ignore[index]
    result["worker_memory_ratio_after_over_before"] = round(after / max(before, 1e-9), 4)
    result["file_check"] = _check_files(args.check_files)
    result["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
