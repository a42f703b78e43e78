"""The k-NN neighbour search: exact, memory-bounded (chunked over queries and training rows), faiss = torch."""

from __future__ import annotations

import pytest
import torch


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def test_chunked_search_equals_the_full_matrix():
    from metadino.eval.knn import topk_cosine

    train, queries = _unit(500, 16, 0), _unit(37, 16, 1)
    full_s, full_i = (queries @ train.T).topk(9, dim=1)
    s, i = topk_cosine(train, queries, 9, backend="torch", query_chunk=7, train_chunk=13)
    assert torch.equal(i, full_i) and torch.allclose(s, full_s)
    s, i = topk_cosine(train[:5], queries, 9, backend="torch", train_chunk=2)  # k larger than the training rows
    assert s.shape == (37, 5) and torch.equal(i, (queries @ train[:5].T).topk(5, dim=1).indices)


def test_faiss_and_torch_find_the_same_neighbours():
    pytest.importorskip("faiss")
    from metadino.eval.knn import knn_predict, topk_cosine

    train, queries = _unit(2000, 32, 2), _unit(300, 32, 3)
    ts, ti = topk_cosine(train, queries, 20, backend="torch", train_chunk=256)
    fs, fi = topk_cosine(train, queries, 20, backend="faiss")
    assert torch.equal(ti, fi)
    torch.testing.assert_close(fs, ts, rtol=0, atol=1e-5)
    labels = torch.randint(0, 5, (2000,), generator=torch.Generator().manual_seed(4))
    a = knn_predict(train, labels, queries, n_classes=5, backend="torch")
    b = knn_predict(train, labels, queries, n_classes=5, backend="faiss")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_neighbour_graph_leaves_the_query_out_and_keeps_duplicates():
    from metadino.eval.knn import knn_neighbours

    x = _unit(50, 8, 5)
    x[7] = x[3]  # an exact duplicate: a neighbour of row 3, not row 3 itself
    nb = knn_neighbours(x, k=4, chunk_size=6)
    assert nb.shape == (50, 4) and not (nb == torch.arange(50).unsqueeze(1)).any()
    assert nb[3, 0] == 7 and nb[7, 0] == 3
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    ref = sim.topk(4, dim=1).indices
    rows = [r for r in range(50) if r not in (3, 7)]  # (rows 3 and 7 tie with each other for everyone: order free)
    assert torch.equal(nb[rows].sort(1).values, ref[rows].sort(1).values)
