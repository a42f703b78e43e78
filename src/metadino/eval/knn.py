"""Weighted k-NN classifier on frozen features (DINO protocol: cosine similarity, exp(s/T) votes).

The neighbour search (:func:`topk_cosine`) is exact and memory-bounded: queries and the training rows are both taken
in chunks, so a million training rows never make a ``[queries, N_train]`` matrix (peak extra memory
``query_chunk x train_chunk`` floats). ``backend="faiss"`` (``pip install metadino[knn]``) searches an exact
inner-product index (``IndexFlatIP``) instead; both give the same neighbours (up to the order of exact ties) and
similarities equal within float rounding. The default is torch: at 1M x 384 training rows and 2000 queries on this
project's 2-core CPU it took 13.5 s and 0.5 GiB against faiss's 18.5 s and 1.5 GiB (``benchmarks/knn_scale.py``), and
it runs on the GPU where the features are.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from metadino.errors import UserError

Backend = Literal["auto", "torch", "faiss"]
QUERY_CHUNK = 1024
TRAIN_CHUNK = 65536


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def topk_cosine(train: torch.Tensor, queries: torch.Tensor, k: int, *, backend: Backend = "auto",
                query_chunk: int = QUERY_CHUNK, train_chunk: int = TRAIN_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` largest inner products of each query with the rows of `train` (both already L2-normalised):
    (similarities [Q, k] float32, indices int64 [Q, k]), nearest first.

    ``backend="auto"`` is chunked torch (measured faster than faiss's exact index on CPU, see the module docstring).
    """
    k = min(k, train.shape[0])
    if backend == "faiss" and not _faiss_available():
        raise UserError("the faiss k-NN backend needs faiss: `pip install faiss-cpu` (or metadino[knn])")
    if backend == "faiss" and k > 0 and queries.shape[0] > 0:
        return _faiss_topk(train, queries, k)
    sims, idx = [], []
    for start in range(0, queries.shape[0], query_chunk):
        q = queries[start:start + query_chunk]
        best_s = torch.full((q.shape[0], 0), -float("inf"), device=q.device)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.int64, device=q.device)
        for t0 in range(0, train.shape[0], train_chunk):
            sim = q @ train[t0:t0 + train_chunk].T
            s, i = sim.topk(min(k, sim.shape[1]), dim=1)
            best_s, order = torch.cat([best_s, s], dim=1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.cat([best_i, i + t0], dim=1).gather(1, order)
        sims.append(best_s)
        idx.append(best_i)
    if not sims:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.int64)
    return torch.cat(sims), torch.cat(idx)


def _faiss_topk(train: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss

    index = faiss.IndexFlatIP(train.shape[1])
    index.add(train.detach().cpu().float().contiguous().numpy())
    sims, idx = index.search(queries.detach().cpu().float().contiguous().numpy(), k)
    return torch.from_numpy(sims), torch.from_numpy(idx).long()


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    *,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = QUERY_CHUNK,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Class scores [N_test, n_classes] from the k nearest training samples.

    Args:
        train_features: [N_train, D]; train_labels: int64 [N_train] in [0, n_classes).
        test_features: [N_test, D]. Features are L2-normalised here.
    Each neighbour votes for its class with weight exp(cosine / temperature) (Wu et al. 2018, as in
    DINO). Test rows are processed in chunks, so the result does not depend on the batch size.
    """
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    if test.shape[0] == 0:
        return torch.empty(0, n_classes)
    top_sim, top_idx = topk_cosine(train, test, k, backend=backend, query_chunk=chunk_size)
    weights = (top_sim / temperature).exp()
    votes = torch.zeros(test.shape[0], n_classes, dtype=weights.dtype)
    votes.scatter_add_(1, train_labels[top_idx.to(train_labels.device)].cpu(), weights.cpu())
    return votes


@torch.no_grad()
def knn_multilabel_scores(
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    test_features: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = QUERY_CHUNK,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Per-label scores in [0, 1] [N_test, C]: the exp(cosine / T)-weighted share of the k nearest
    training samples that carry each label (train_targets: multi-hot [N_train, C])."""
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    targets = train_targets.float().to(test.device)
    if test.shape[0] == 0:
        return torch.empty(0, targets.shape[1])
    top_sim, top_idx = topk_cosine(train, test, k, backend=backend, query_chunk=chunk_size)
    scores = []
    for start in range(0, test.shape[0], chunk_size):  # [chunk, k, C] at a time: C labels can be many
        s, i = top_sim[start:start + chunk_size], top_idx[start:start + chunk_size]
        # subtract the row max before exp: the weights are only used relative to each other
        weights = ((s - s[:, :1]) / temperature).exp()
        scores.append((weights.unsqueeze(2) * targets[i]).sum(1) / weights.sum(1, keepdim=True))
    return torch.cat(scores).cpu()


@torch.no_grad()
def knn_neighbours(
    features: torch.Tensor, *, k: int = 20, chunk_size: int = 1024, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Indices int64 [N, min(k, N - 1)] of each row's k nearest other rows by cosine similarity, nearest first.

    The query itself is never its own neighbour (its similarity is masked before the top-k), so this is the
    leave-one-out k-NN graph; exact duplicates of a row are other rows and do count. Chunked like
    :func:`knn_predict`, so the result does not depend on the chunk size. Computed on `device`, returned on the CPU.
    """
    x = F.normalize(torch.as_tensor(features).float().to(device), dim=1)
    n = x.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return torch.empty(n, 0, dtype=torch.int64)
    # k + 1 nearest, then the query itself dropped: it is its own nearest row unless an exact duplicate ties with it
    _, idx = topk_cosine(x, x, k + 1, backend="torch", query_chunk=chunk_size)
    self_hit = idx == torch.arange(n, device=idx.device).unsqueeze(1)
    keep = ~self_hit
    keep[self_hit.sum(1) == 0, -1] = False  # no self among the k + 1 (duplicates ranked first): drop the farthest
    return idx[keep].view(n, k).cpu()
