"""Attention-pooling probe (reference §11): architecture, learning, LR selection, determinism."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metadino.eval.attnpool import (
    DEFAULT_LRS,
    AttentionPoolClassifier,
    _score,
    default_hidden_dim,
    default_schedule,
    predict_attention_pool,
    train_attention_pool,
)


def marked_token_task(n: int, *, seed: int, n_tokens: int = 8, dim: int = 16, n_classes: int = 4):
    """Every token shows a random class prototype; one randomly placed token, marked on feature 0, shows the
    true class. Mean pooling sees ~(1 + 7/4) prototypes and mostly guesses; attending to the mark solves it."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.zeros(n_classes, dim)
    protos[torch.arange(n_classes), torch.arange(1, n_classes + 1)] = 2.0
    y = torch.randint(0, n_classes, (n,), generator=g)
    distractors = torch.randint(0, n_classes, (n, n_tokens), generator=g)
    x = protos[distractors] + 0.3 * torch.randn(n, n_tokens, dim, generator=g)
    pos = torch.randint(0, n_tokens, (n,), generator=g)
    x[torch.arange(n), pos] = protos[y] + 0.3 * torch.randn(n, dim, generator=g)
    x[torch.arange(n), pos, 0] += 3.0
    return x, y, pos


@pytest.fixture(scope="module")
def task():
    xt, yt, _ = marked_token_task(256, seed=0)
    xv, yv, pv = marked_token_task(128, seed=1)
    return xt, yt, xv, yv, pv


# --- architecture -------------------------------------------------------------------------------------------

def test_reference_shapes_parameter_count_and_init():
    torch.manual_seed(0)
    m = AttentionPoolClassifier(4096, 62, hidden_dim=512, num_heads=8)
    shapes = {k: tuple(v.shape) for k, v in m.named_parameters()}
    assert shapes == {
        "query": (512,),  # a bare vector: no projection, no bias
        "input_proj.weight": (512, 4096), "input_proj.bias": (512,),
        "norm.weight": (512,), "norm.bias": (512,),
        "kv.weight": (1024, 512), "kv.bias": (1024,),
        "head.weight": (62, 512), "head.bias": (62,),
    }
    expected = (4096 * 512 + 512) + 2 * 512 + 512 + (512 * 1024 + 1024) + (512 * 62 + 62)
    assert sum(p.numel() for p in m.parameters()) == expected == 2_656_318
    for w in (m.input_proj.weight, m.kv.weight):
        assert abs(w.std().item() - 0.02) < 5e-4 and abs(w.mean().item()) < 5e-4
    assert abs(m.query.std().item() - 0.02) < 4e-3
    for b in (m.input_proj.bias, m.kv.bias, m.head.bias, m.norm.bias):
        assert torch.count_nonzero(b) == 0
    assert torch.equal(m.norm.weight, torch.ones(512))
    assert m(torch.randn(3, 5, 4096)).shape == (3, 62)


def test_forward_is_softmax_attention_with_head_dim_scale():
    m = AttentionPoolClassifier(12, 3, hidden_dim=16, num_heads=4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 5, 12)
    w = m.attention_weights(x)  # [B, H, P]
    assert w.shape == (2, 4, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4))
    h = m.norm(m.input_proj(x))
    v = F.linear(h, m.kv.weight[16:], m.kv.bias[16:]).reshape(2, 5, 4, 4).transpose(1, 2)  # [B, H, P, hd]
    k = F.linear(h, m.kv.weight[:16], m.kv.bias[:16]).reshape(2, 5, 4, 4).transpose(1, 2)
    manual_w = ((m.query.reshape(4, 1, 4) * k).sum(-1) / math.sqrt(4)).softmax(-1)
    torch.testing.assert_close(w, manual_w)
    pooled = (manual_w.unsqueeze(-1) * v).sum(2).reshape(2, 16)  # heads concatenated
    torch.testing.assert_close(m(x), m.head(pooled))


def test_identical_tokens_pool_to_the_value_path():
    m = AttentionPoolClassifier(10, 3, hidden_dim=8, num_heads=2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        m.query.normal_()  # make the attention non-trivial
    t = torch.randn(1, 10)
    v = F.linear(m.norm(m.input_proj(t)), m.kv.weight[8:], m.kv.bias[8:])
    torch.testing.assert_close(m(t.unsqueeze(1).expand(1, 7, 10)), m.head(v))


def test_default_width_and_schedule():
    assert default_hidden_dim(4096) == 512 and default_hidden_dim(128) == 128 and default_hidden_dim(20) == 24
    assert DEFAULT_LRS == (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0)
    assert default_schedule(76_000, 32) == (5, 300)  # large data: the reference 5 × 300
    assert default_schedule(200, 32) == (50, 7)  # small data: 50 passes, validated after each
    assert default_schedule(1000, 32) == (47, 32)  # ~1500 iterations in whole passes


# --- learning and selection ---------------------------------------------------------------------------------

def test_learns_to_attend_to_the_marked_token(task):
    xt, yt, xv, yv, pv = task
    r = train_attention_pool(xt, yt, xv, yv, n_outputs=4, lrs=(1e-2, 1e-1), num_heads=4)
    assert r.val_score >= 0.9 and r.scores[r.lr] == r.val_score
    assert r.lr in (1e-2, 1e-1) and not r.classifier.training
    assert next(r.classifier.parameters()).device.type == "cpu"
    # default schedule for N=256, batch 32: 50 passes of 8 iterations, validated after each
    assert [h["step"] for h in r.history] == [8 * (i + 1) for i in range(50)]
    assert r.history[-1]["val"] == r.scores and set(r.history[0]["train_loss"]) == {1e-2, 1e-1}
    assert r.history[-1]["train_loss"][r.lr] < r.history[0]["train_loss"][r.lr]
    acc = (predict_attention_pool(r.classifier, xv).argmax(1) == yv).float().mean().item()
    assert acc == pytest.approx(r.val_score)
    # the query found the mark: most attention mass sits on the signal token (uniform would be 1/8)
    attn = r.classifier.attention_weights(xv).mean(1)[torch.arange(len(pv)), pv]
    assert attn.mean() > 0.5


def test_multilabel_learns_two_labels():
    def make(n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        x = 0.5 * torch.randn(n, 6, 8, generator=g)
        y = (torch.rand(n, 2, generator=g) < 0.5).float()
        for j in range(2):  # label j present <=> some token carries +3 on feature j
            rows = y[:, j].bool()
            pos = torch.randint(0, 6, (n,), generator=g)
            x[rows, pos[rows], j] += 3.0
        return x, y

    (xt, yt), (xv, yv) = make(256, 0), make(128, 1)
    r = train_attention_pool(xt, yt, xv, yv, n_outputs=2, multilabel=True, select="multilabel_f1",
                             lrs=(1e-2, 1e-1), num_heads=4, epochs=20)
    assert r.val_score >= 0.9
    assert _score(predict_attention_pool(r.classifier, xv), yv, "multilabel_f1") == pytest.approx(r.val_score)


def test_absurd_lr_loses_to_a_sensible_one(task):
    xt, yt, xv, yv, _ = task
    r = train_attention_pool(xt, yt, xv, yv, n_outputs=4, lrs=(1e3, 1e-1), num_heads=4, epochs=20)
    assert r.lr == 1e-1 and set(r.scores) == {1e-1, 1e3}
    assert r.history[-1]["train_loss"][1e3] > 100 * r.history[0]["train_loss"][1e-1]  # it diverged
    assert r.scores[1e3] < r.scores[1e-1] and r.val_score >= 0.9


def test_worst_group_selection_uses_the_groups(task):
    """Group 1 (a quarter of val) has shifted labels: a good classifier is 0 % right there, a barely trained
    one is right by chance. Accuracy picks the good one, worst-group accuracy the barely trained one."""
    xt, yt, xv, yv, _ = task
    groups = (torch.arange(len(yv)) % 4 == 0).long()
    yv_shift = torch.where(groups == 1, (yv + 1) % 4, yv)
    kw = dict(n_outputs=4, lrs=(1e-4, 1e-1), num_heads=4, epochs=20, val_groups=groups)
    by_acc = train_attention_pool(xt, yt, xv, yv_shift, select="accuracy", **kw)
    by_wga = train_attention_pool(xt, yt, xv, yv_shift, select="worst_group_accuracy", **kw)
    assert by_acc.lr == 1e-1 and by_wga.lr == 1e-4
    correct = predict_attention_pool(by_wga.classifier, xv).argmax(1) == yv_shift
    hand = min(correct[groups == g].float().mean().item() for g in (0, 1))
    assert by_wga.val_score == pytest.approx(hand) and hand > by_wga.scores[1e-1]


def test_score_hand_computed():
    logits = torch.tensor([[2.0, 0, 0], [0, 2, 0], [0, 2, 0], [0, 0, 2], [float("nan"), 0, 0], [2, 0, 0]])
    y = torch.tensor([0, 1, 0, 2, 0, 0])
    groups = torch.tensor([5, 5, 7, 7, 7, 9])
    # correct: T T F T F(NaN row) T
    assert _score(logits, y, "accuracy") == pytest.approx(4 / 6)
    assert _score(logits, y, "balanced_accuracy") == pytest.approx((2 / 4 + 1 + 1) / 3)
    assert _score(logits, y, "worst_group_accuracy", groups) == pytest.approx(1 / 3)
    ml_logits = torch.tensor([[1.0, -1, -1], [1, 1, -1], [-1, -1, -1]])
    ml_y = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    # label 0: tp2 -> 1; label 1: tp0 fp1 fn1 -> 0; label 2: nothing -> 0 (torchmetrics macro)
    assert _score(ml_logits, ml_y, "multilabel_f1") == pytest.approx(1 / 3)


# --- determinism, prediction, validation ---------------------------------------------------------------------

def test_same_seed_same_weights_and_global_rng_untouched(task):
    xt, yt, xv, yv, _ = task
    kw = dict(n_outputs=4, lrs=(1e-2,), num_heads=4, epochs=2)
    state = torch.get_rng_state()
    a = train_attention_pool(xt, yt, xv, yv, seed=3, **kw).classifier.state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    b = train_attention_pool(xt, yt, xv, yv, seed=3, **kw).classifier.state_dict()
    c = train_attention_pool(xt, yt, xv, yv, seed=4, **kw).classifier.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_proj.weight"], c["input_proj.weight"])


def test_predict_is_batch_size_invariant_and_accepts_fp16(task):
    _, _, xv, _, _ = task
    m = AttentionPoolClassifier(16, 4, hidden_dim=16, num_heads=4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.query.normal_()
    x16 = xv[:37].half()
    full = predict_attention_pool(m, x16.float(), batch_size=256)
    assert full.dtype == torch.float32 and full.shape == (37, 4)
    for bs in (1, 5, 16):
        torch.testing.assert_close(predict_attention_pool(m, x16, batch_size=bs), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(train_targets=torch.zeros(5, dtype=torch.long)), "rows"),
        (dict(val_tokens=torch.zeros(0, 8, 16), val_targets=torch.zeros(0, dtype=torch.long)), "empty"),
        (dict(n_outputs=1), "n_outputs"),
        (dict(select="worst_group_accuracy"), "val_groups"),
        (dict(select="multilabel_f1"), "multilabel"),
        (dict(train_targets=torch.full((16,), 9)), r"\[0, 4\)"),
        (dict(val_tokens=torch.zeros(8, 8, 3)), "feature size"),
        (dict(lrs=(1e-3, 1e-3)), "distinct"),
    ],
)
def test_invalid_inputs_raise(change, match):
    args = dict(train_tokens=torch.zeros(16, 8, 16), train_targets=torch.zeros(16, dtype=torch.long),
                val_tokens=torch.zeros(8, 8, 16), val_targets=torch.zeros(8, dtype=torch.long), n_outputs=4)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        train_attention_pool(**args)
