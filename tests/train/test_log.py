"""train.log_to: tensorboard gets every logged scalar, guide terms and λ included, grouped by kind."""

from __future__ import annotations

import pytest

from metadino.config import config_from_dict
from metadino.data.synthetic import generate_dataset
from metadino.errors import UserError
from metadino.train import log as log_module
from metadino.train.loop import train
from testkit import tiny_config


class _Writer:
    def __init__(self, folder, purge_step):
        self.folder, self.purge_step, self.scalars, self.closed = folder, purge_step, [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, float(value), step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_receives_the_guide_terms_and_lambda(tmp_path, monkeypatch):
    table = generate_dataset(tmp_path / "syn", n_images=24, image_size=32, channels=4, seed=1)
    writers: list[_Writer] = []
    monkeypatch.setattr(log_module, "open_tensorboard",
                        lambda folder, purge_step: writers.append(_Writer(folder, purge_step)) or writers[-1])
    cfg = tiny_config(table, model={"in_chans": 4}, crops={"photometric": "microscopy"},
                      train={"steps": 2, "batch_size": 4, "checkpoint_every": 2, "log_to": ["jsonl", "tensorboard"]})
    cfg["guidance"] = {"guides": [{"column": "cell_line", "head": "classification", "weight": 0.1}]}
    result = train(config_from_dict(cfg), tmp_path / "run", progress=False)
    (writer,) = writers
    assert writer.folder == tmp_path / "run" / "tensorboard" and writer.purge_step == 1 and writer.closed
    tags = {tag for tag, _, _ in writer.scalars}
    assert {"loss/total", "loss/dino", "guide/cell_line", "schedule/guide_lambda", "schedule/lr",
            "grad_norm/backbone", "data/images_per_s"} <= tags
    # the same values as metrics.jsonl, at the same steps
    for record in result.history:
        logged = {tag: value for tag, value, step in writer.scalars if step == record["step"]}
        assert logged["loss/total"] == pytest.approx(record["total"])
        assert logged["schedule/guide_lambda"] == pytest.approx(record["guide_lambda"])


def test_tensorboard_without_the_package_is_one_sentence(tmp_path, monkeypatch, image_table):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    cfg = tiny_config(image_table, train={"steps": 1, "log_to": ["jsonl", "tensorboard"]})
    with pytest.raises(UserError, match=r"train\.log_to includes tensorboard.*pip install tensorboard"):
        train(config_from_dict(cfg), tmp_path / "run", progress=False)
    with pytest.raises(UserError, match=r"train\.log_to.*must include jsonl"):
        config_from_dict(tiny_config(image_table, train={"log_to": ["tensorboard"]}))
