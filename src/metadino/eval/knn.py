"""Weighted k-NN classifier on frozen features (DINO protocol: cosine similarity, exp(s/T) votes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    *,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
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
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start : start + chunk_size] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], n_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores) if scores else torch.empty(0, n_classes)


@torch.no_grad()
def knn_multilabel_scores(
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    test_features: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Per-label scores in [0, 1] [N_test, C]: the exp(cosine / T)-weighted share of the k nearest
    training samples that carry each label (train_targets: multi-hot [N_train, C])."""
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    targets = train_targets.float()
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test.shape[0], chunk_size):
        top_sim, top_idx = (test[start : start + chunk_size] @ train.T).topk(k, dim=1)
        # subtract the row max before exp: the weights are only used relative to each other
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        scores.append((weights.unsqueeze(2) * targets[top_idx]).sum(1) / weights.sum(1, keepdim=True))
    return torch.cat(scores) if scores else torch.empty(0, targets.shape[1])


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
    out = []
    for start in range(0, n, chunk_size):
        sim = x[start : start + chunk_size] @ x.T
        rows = torch.arange(sim.shape[0], device=sim.device)
        sim[rows, rows + start] = -float("inf")
        out.append(sim.topk(k, dim=1).indices.cpu())
    return torch.cat(out)
