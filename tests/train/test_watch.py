"""UniformTargetWatch: warns once when the DINO term sits at ln K, never for a term that learns."""

from __future__ import annotations

import math

from metadino.train.watch import UniformTargetWatch


def test_warns_once_after_the_window_at_ln_k():
    watch = UniformTargetWatch(2048, window=30, skip=5)
    ln_k = math.log(2048)
    said = [watch.update(step, ln_k - 0.002) for step in range(200)]
    warnings = [s for s in said if s]
    assert len(warnings) == 1 and said.index(warnings[0]) == 5 + 30 - 1
    assert "ln K = 7.625" in warnings[0] and "ssl.head.batchnorm" in warnings[0]


def test_silent_when_the_term_leaves_ln_k_or_returns_only_briefly():
    ln_k = math.log(256)
    learning = UniformTargetWatch(256, window=30, skip=5)
    assert not any(learning.update(s, ln_k - 0.01 * s) for s in range(300))
    flicker = UniformTargetWatch(256, window=30, skip=5)  # the run resets at every step away from ln K
    assert not any(flicker.update(s, ln_k if s % 20 else ln_k - 1.0) for s in range(300))


def test_data_wait_watch_warns_once_after_consecutive_starved_intervals():
    from metadino.train.watch import DataWaitWatch

    watch = DataWaitWatch(num_workers=2, cores=16)
    assert watch.update(10, 0.9) is None  # the first interval holds the workers' start-up: never counted
    assert [watch.update(s, share) for s, share in ((20, 0.5), (30, 0.2), (40, 0.5), (50, 0.6))] == [None] * 4
    text = watch.update(60, 0.7)
    assert text is not None and "step 60" in text and "70 %" in text and "2 worker processes" in text
    assert "train.num_workers" in text and "16 cores" in text
    assert watch.update(70, 0.9) is None  # once


def test_the_loop_feeds_the_data_wait_watch_and_prints_its_warning(tmp_path, image_table, monkeypatch, capsys):
    """Wiring: the loop's measured waits reach the watch (here one that counts any wait, since on a CPU none is
    built) and its sentence reaches stderr; on a CPU no watch is built, beside a GPU one is."""
    import torch

    from metadino.config import config_from_dict
    from metadino.train import run as run_module
    from metadino.train.loop import train
    from metadino.train.watch import DataWaitWatch
    from testkit import tiny_config

    cfg = config_from_dict(tiny_config(image_table, train={"steps": 5, "log_every": 1, "checkpoint_every": 5}))
    assert run_module._data_watch(torch.device("cpu"), 2) is None
    assert isinstance(run_module._data_watch(torch.device("cuda", 0), 2), DataWaitWatch)
    fed: list[tuple[int, float]] = []

    class Recording(DataWaitWatch):
        def update(self, step, share):
            fed.append((step, share))
            return super().update(step, share)

    monkeypatch.setattr(run_module, "_data_watch", lambda device, workers: Recording(0, 2, threshold=-1.0, intervals=2))
    train(cfg, tmp_path / "run", progress=False)
    assert [s for s, _ in fed] == [1, 2, 3, 4, 5] and all(0.0 <= share <= 1.0 for _, share in fed)
    assert capsys.readouterr().err.count("the training waited for data") == 1
