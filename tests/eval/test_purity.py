"""Neighbour purity: k-NN accuracy ≈ 1 for a column in the features and ≈ chance for noise; the same-group share
is 1 when groups cluster inside labels and ≈ chance when they do not; both equal a brute-force computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from metadino.errors import UserError
from metadino.eval.knn import knn_neighbours
from metadino.eval.purity import knn_accuracy, majority_vote, purity_metrics, same_group_share

N, D = 1200, 16


def clustered(seed: int = 0, groups_cluster: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features clustered by a 4-value label; with `groups_cluster` also by a 5-value group inside each label."""
    rng = np.random.default_rng(seed)
    label, group = rng.integers(0, 4, N), rng.integers(0, 5, N)
    x = 4.0 * rng.normal(size=(4, D))[label] + rng.normal(size=(N, D))
    if groups_cluster:
        x = 4.0 * rng.normal(size=(4, D))[label] + 2.0 * rng.normal(size=(20, D))[label * 5 + group]
        x = x + 0.1 * rng.normal(size=(N, D))
    return x, label, group


def brute_force_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def test_neighbours_exclude_the_query_and_match_brute_force():
    x, _, _ = clustered(seed=1)
    idx = knn_neighbours(torch.as_tensor(x[:300]), k=7, chunk_size=64).numpy()
    assert idx.shape == (300, 7)
    assert not (idx == np.arange(300)[:, None]).any()
    np.testing.assert_array_equal(idx, brute_force_neighbours(x[:300], 7))
    assert knn_neighbours(torch.as_tensor(x[:5]), k=20).shape == (5, 4)  # at most N - 1 others


def test_knn_accuracy_of_a_column_in_the_features_is_one_and_of_noise_is_chance():
    x, label, _ = clustered()
    res = knn_accuracy(x, pd.Series([f"c{v}" for v in label]), column="label")
    assert res.accuracy > 0.98 and res.balanced_accuracy > 0.98
    assert (res.chance, res.n_classes, res.n_rows, res.k) == (0.25, 4, N, 20)
    noise = pd.Series(np.random.default_rng(7).integers(0, 4, N))
    res = knn_accuracy(x, noise, column="noise")
    assert abs(res.accuracy - 0.25) < 0.05 and abs(res.balanced_accuracy - 0.25) < 0.05


def test_knn_accuracy_equals_a_leave_one_out_majority_vote_and_leaves_missing_rows_out():
    x, label, _ = clustered(seed=2)
    x = x + 6.0 * np.random.default_rng(3).normal(size=x.shape)  # noisy, so votes are split and ties happen
    values = pd.Series([f"c{v}" for v in label], dtype=object)
    values[::10] = None
    res = knn_accuracy(x, values, column="label", k=6)
    keep = values.notna().to_numpy()
    y = label[keep]
    idx = brute_force_neighbours(x[keep], 6)
    pred = []
    for row in y[idx]:
        counts = np.bincount(row, minlength=4)
        best = set(np.flatnonzero(counts == counts.max()))
        pred.append(next(c for c in row if c in best))  # a tie goes to the nearest tied neighbour
    assert res.n_missing == (~keep).sum() and res.n_rows == keep.sum()
    assert res.accuracy == pytest.approx(np.mean(np.array(pred) == y))


def test_majority_vote_breaks_ties_by_the_nearest_neighbour():
    votes = np.array([[2, 1, 1, 2], [0, 0, 1, 1], [1, 2, 2, 0], [3, 3, 3, 0]])
    np.testing.assert_array_equal(majority_vote(votes, 4), [2, 0, 2, 3])


def test_same_group_share_is_one_when_groups_cluster_inside_labels():
    x, label, group = clustered(groups_cluster=True)
    res = same_group_share(x, pd.Series(label), pd.Series(group), label_column="cell_line", group_column="plate")
    assert res.value == pytest.approx(1.0)
    assert abs(res.chance - 0.2) < 0.03 and res.n_queries == N


def test_same_group_share_is_chance_when_groups_are_random_inside_label_clusters():
    x, label, group = clustered()
    res = same_group_share(x, pd.Series(label), pd.Series(group), label_column="cell_line", group_column="plate")
    assert abs(res.value - res.chance) < 0.03
    assert abs(res.chance - 0.2) < 0.03


def test_same_group_share_equals_brute_force():
    x, label, group = clustered(seed=4)
    x = x + 6.0 * np.random.default_rng(5).normal(size=x.shape)  # some neighbours have other labels
    labels = pd.Series(label).astype(object)
    labels[::9] = None
    res = same_group_share(x, labels, pd.Series(group), label_column="l", group_column="g", k=5)
    keep = labels.notna().to_numpy()
    lab, grp = label[keep], group[keep]
    idx = brute_force_neighbours(x[keep], 5)
    shares, chances = [], []
    for i, nb in enumerate(idx):
        same = [j for j in nb if lab[j] == lab[i]]
        if same:
            shares.append(np.mean([grp[j] == grp[i] for j in same]))
            others = [j for j in range(len(lab)) if j != i and lab[j] == lab[i]]
            chances.append(np.mean([grp[j] == grp[i] for j in others]))
    assert res.n_queries == len(shares) < keep.sum() and res.n_missing == (~keep).sum()
    assert res.value == pytest.approx(np.mean(shares)) and res.chance == pytest.approx(np.mean(chances))


def test_purity_metrics_block_and_bad_columns():
    x, label, group = clustered()
    frame = pd.DataFrame({"cell_line": label, "plate": [f"P{g}" for g in group], "exposure": np.linspace(0, 1, N),
                          "one": "x"})
    out = purity_metrics(x, frame, ["cell_line", "plate"], label_column="cell_line", group_column="plate", k=10)
    assert out["k"] == 10 and out["knn/cell_line"]["accuracy"] > 0.98
    assert set(out["knn/plate"]) == {"accuracy", "balanced_accuracy", "chance", "n_rows", "n_missing", "n_classes", "k"}
    assert out["same_group"]["group_column"] == "plate" and "same_group_share_chance" in out
    with pytest.raises(UserError, match="'exposure' holds continuous"):
        purity_metrics(x, frame, ["exposure"])
    with pytest.raises(UserError, match="'one' has fewer than two"):
        purity_metrics(x, frame, ["one"])
    lenient = purity_metrics(x, frame, ["one"], strict=False)
    assert "knn/one" not in lenient and "'one'" in lenient["notes"][0]


def test_purity_metrics_shares_a_graph_only_between_columns_with_the_same_known_rows():
    """The block builds each k-NN graph once per row selection; a column with missing cells gets its own graph,
    so every entry equals its yardstick computed alone."""
    x, label, group = clustered(seed=3, groups_cluster=True)
    frame = pd.DataFrame({"label": label, "group": group, "full": label % 2,
                          "holes": [None if i % 3 == 0 else v for i, v in enumerate(group)]})
    block = purity_metrics(x, frame, ["full", "holes"], label_column="label", group_column="group", k=9)
    for column in ("full", "holes"):
        alone = knn_accuracy(x, frame[column], column=column, k=9)
        assert block[f"knn/{column}"]["accuracy"] == alone.accuracy
        assert block[f"knn/{column}"]["n_missing"] == alone.n_missing
    share = same_group_share(x, frame["label"], frame["group"], label_column="label", group_column="group", k=9)
    assert block["same_group_share"] == share.value and block["same_group_share_chance"] == share.chance
