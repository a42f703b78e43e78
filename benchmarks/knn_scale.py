"""k-NN at a million training rows: time and memory of the neighbour search, torch (chunked) vs faiss, as JSON.

    python benchmarks/knn_scale.py [--train 1000000] [--queries 2000] [--dim 384] [--k 20] [--with-before]

Random unit vectors (float32) stand in for frozen features. Each search runs in its own process, and its memory is the
rise of the resident set size (``ru_maxrss`` at the end minus the RSS after the features were made): what the search
itself allocates. ``torch`` is :func:`metadino.eval.knn.topk_cosine` with its default chunks (1024 queries x 65536
training rows at a time), ``faiss`` an exact ``IndexFlatIP``; ``before`` (with ``--with-before``) is the search of
v0.2, a full ``[1024, N_train]`` similarity block per query chunk. The neighbours of torch and faiss are compared.
Default run: about two minutes on 2 CPU cores and 4 GB of memory (``--with-before``: 4 GB more).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _features(n: int, d: int, seed: int):  # type: ignore[no-untyped-def]
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1, out=x)


def _search(kind: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    import torch

    from metadino.eval.knn import topk_cosine

    train, queries = _features(args.train, args.dim, 0), _features(args.queries, args.dim, 1)
    base = _rss_mib()
    t0 = time.perf_counter()
    if kind == "before":
        idx = torch.cat([(queries[s:s + 1024] @ train.T).topk(args.k, dim=1).indices
                         for s in range(0, len(queries), 1024)])
    else:
        _, idx = topk_cosine(train, queries, args.k, backend=kind)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"seconds": round(seconds, 2), "memory_rise_mib": round(peak - base, 1), "idx": idx.numpy()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--with-before", action="store_true")
    args = parser.parse_args()
    import numpy as np

    try:
        import faiss  # noqa: F401

        kinds = ["torch", "faiss"]
    except ImportError:
        kinds = ["torch"]
    if args.with_before:
        kinds.append("before")
    ctx = mp.get_context("spawn")
    out: dict[str, object] = {"benchmark": "knn_scale", "date": time.strftime("%Y-%m-%d"), "train_rows": args.train,
                              "queries": args.queries, "dim": args.dim, "k": args.k,
                              "cpus": len(os.sched_getaffinity(0)),
                              "features_mib": round(args.train * args.dim * 4 / 2**20, 1)}
    found = {}
    for kind in kinds:
        queue: mp.Queue = ctx.Queue()
        proc = ctx.Process(target=_search, args=(kind, args, queue))
        proc.start()
        result = queue.get()
        proc.join()
        found[kind] = result.pop("idx")
        out[kind] = result
    if "faiss" in found:
        same = (found["torch"] == found["faiss"]).all(axis=1)
        out["faiss_equals_torch_rows"] = float(np.mean(same))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
