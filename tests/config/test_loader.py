"""The strict loader: YAML and overrides -> dataclasses, generic over the schema (metadino.config.loader).

The toy dataclasses below check the machinery without the run config; the tests after them check it on Config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import yaml

from metadino.config import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    diff_configs,
    load_config,
    parse_override,
    read_yaml,
    save_config,
)
from metadino.config.loader import from_plain
from metadino.errors import UserError
from testkit import SMALL_CONFIG as BASE
from testkit import full_disk_halfway_through_write_text
from testkit import small_config as make


@dataclass
class Inner:
    size: int = 3
    scale: tuple[float, float] = (0.1, 0.5)
    mode: Literal["a", "b"] = "a"


@dataclass
class Toy:
    name: str = "x"
    rate: float = 1.0
    on: bool = False
    limit: int | None = None
    tags: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    lambda_: Inner = field(default_factory=Inner, metadata={"key": "lambda"})
    items: list[Inner] = field(default_factory=list)


@dataclass
class Needs:
    must: int


def test_toy_values_are_converted_to_their_annotations():
    toy = from_plain(Toy, {"rate": 2, "limit": None, "tags": ("a", "b"), "extra": {"k": [1]},
                           "inner": {"scale": [0, 1], "mode": "b"}, "items": [{"size": 5}, {}]})
    assert toy.rate == 2.0 and isinstance(toy.rate, float) and toy.limit is None and toy.tags == ["a", "b"]
    assert toy.inner == Inner(3, (0.0, 1.0), "b") and isinstance(toy.inner.scale, tuple)
    assert toy.items == [Inner(size=5), Inner()] and toy.extra == {"k": [1]}
    assert from_plain(Toy, {"limit": 4}).limit == 4 and from_plain(Toy, {}) == Toy()


@pytest.mark.parametrize(
    "data,message",
    [
        ({"rate": "fast"}, "config key 'rate': expected a number, got 'fast'."),
        ({"rate": True}, "config key 'rate': expected a number, got True."),
        ({"on": 1}, "config key 'on': expected true or false, got 1."),
        ({"limit": 1.5}, "config key 'limit': expected an integer or null, got 1.5."),
        ({"name": 3}, "config key 'name': expected a string, got 3."),
        ({"tags": "a"}, "config key 'tags': expected a list, got 'a'."),
        ({"tags": ["a", 2]}, "config key 'tags[1]': expected a string, got 2."),
        ({"extra": [1]}, "config key 'extra': expected a mapping, got [1]."),
        ({"inner": 3}, "config key 'inner': expected a mapping, got 3."),
        ({"inner": {"scale": [1]}}, "config key 'inner.scale': expected a list of 2 values, got [1]."),
        ({"inner": {"mode": "c"}}, "config key 'inner.mode': expected one of 'a', 'b', got 'c'."),
        ({"items": [{}, {"size": "big"}]}, "config key 'items[1].size': expected an integer, got 'big'."),
    ],
)
def test_toy_wrong_types_name_the_key_and_the_expected_type(data, message):
    with pytest.raises(UserError) as e:
        from_plain(Toy, data)
    assert str(e.value) == message


def test_toy_unknown_keys_suggest_the_closest_or_list_the_known_ones():
    with pytest.raises(UserError, match=r"unknown config key 'inner.sise'. Did you mean 'inner.size'\?"):
        from_plain(Toy, {"inner": {"sise": 1}})
    with pytest.raises(UserError, match="unknown config key 'inner.zzz'. Known keys here: size, scale, mode."):
        from_plain(Toy, {"inner": {"zzz": 1}})
    with pytest.raises(UserError, match=r"unknown config key 'items\[0\].mod'. Did you mean 'items\[0\].mode'"):
        from_plain(Toy, {"items": [{"mod": "a"}]})


def test_toy_field_key_metadata_renames_the_yaml_key():
    toy = from_plain(Toy, {"lambda": {"size": 9}})
    assert toy.lambda_.size == 9 and config_to_dict(toy)["lambda"]["size"] == 9 and "lambda_" not in config_to_dict(toy)
    with pytest.raises(UserError, match="unknown config key 'lambda_'"):
        from_plain(Toy, {"lambda_": {}})


def test_toy_required_field_and_round_trip():
    with pytest.raises(UserError, match="config section '\\(top level\\)' is incomplete"):
        from_plain(Needs, {})
    toy = from_plain(Toy, {"inner": {"scale": [0.2, 0.3]}, "items": [{"mode": "b"}]})
    plain = config_to_dict(toy)
    assert plain["inner"]["scale"] == [0.2, 0.3] and from_plain(Toy, yaml.safe_load(yaml.safe_dump(plain))) == toy


def test_toy_overrides_create_sections_and_are_typed_when_built():
    data = apply_overrides({"inner": {"size": 1}}, ["inner.mode=b", "lambda.scale=[0, 0.5]", "name=y", "tags=[p, q]"])
    toy = from_plain(Toy, data)
    assert toy.inner == Inner(1, (0.1, 0.5), "b") and toy.lambda_.scale == (0.0, 0.5)
    assert toy.name == "y" and toy.tags == ["p", "q"]
    with pytest.raises(UserError, match="'inner.size': expected an integer"):
        from_plain(Toy, apply_overrides({}, ["inner.size=many"]))
    with pytest.raises(UserError, match="unknown config key 'inner.colour'"):
        from_plain(Toy, apply_overrides({}, ["inner.colour=red"]))


def test_toy_diff_with_neutral_keys():
    a, b = config_to_dict(Toy()), config_to_dict(Toy(rate=2.0))
    assert diff_configs(a, b) == ["rate"]
    del a["inner"]["mode"]
    assert diff_configs(a, b) == ["inner.mode", "rate"]
    assert diff_configs(a, b, neutral={"inner.mode": "a"}) == ["rate"]
    assert diff_configs({"_run": 1, **b}, b) == []


# ---------------------------------------------------------------------------------------------
# The run config



def test_unknown_key_suggests_closest():
    with pytest.raises(UserError, match="Did you mean 'train.steps'"):
        make(train={"stpes": 3})
    with pytest.raises(UserError, match="unknown config key 'trian'"):
        config_from_dict({**BASE, "trian": {}})


def test_overrides_parse_yaml_values():
    assert parse_override("train.steps=200") == (["train", "steps"], 200)
    assert parse_override("crops.global_scale=[0.4, 1]") == (["crops", "global_scale"], [0.4, 1])
    assert parse_override("data.rows={split: train}")[1] == {"split": "train"}
    for bad in ("train.steps", "=3", "train..steps=3"):
        with pytest.raises(UserError):
            parse_override(bad)
    with pytest.raises(UserError, match="is a value, not a section"):
        apply_overrides({"train": {"steps": 3}}, ["train.steps.x=1"])


def test_load_save_roundtrip_and_relative_table(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**BASE, "train": {"steps": 7}}))
    cfg = load_config(path, ["train.batch_size=3", "optim.lr=0.001"])
    assert cfg.train.steps == 7 and cfg.train.batch_size == 3 and cfg.optim.lr == 0.001
    assert cfg.data.table == str((tmp_path / "meta.csv").resolve())
    save_config(cfg, tmp_path / "saved.yaml", {"git_sha": None})
    again = load_config(tmp_path / "saved.yaml", [])
    assert config_to_dict(again) == config_to_dict(cfg)
    assert diff_configs(config_to_dict(cfg), config_to_dict(make(train={"steps": 8}))) != []


def test_bad_yaml_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(lst)


def test_guidance_section_and_lambda_alias():
    cfg = make(guidance={"lambda": {"schedule": "linear", "warmup_steps": 5}, "balance": True,
                         "guides": [{"column": "plate", "role": "spurious", "given": ["cell_line"]},
                                    {"column": "antibody", "head": "prototypical", "weight": 0.1}]})
    assert cfg.guidance.lambda_.schedule == "linear" and cfg.guidance.guides[1].head == "prototypical"
    assert config_to_dict(cfg)["guidance"]["lambda"]["warmup_steps"] == 5


def test_a_saved_config_from_before_the_new_keys_resumes_only_at_their_neutral_values():
    old = config_to_dict(make())  # as a run saved before ssl.gram, balance_momentum and lambda.start existed
    del old["ssl"]["gram"], old["guidance"]["balance_momentum"], old["guidance"]["lambda"]["start"]
    assert diff_configs(old, config_to_dict(make())) == []
    assert diff_configs(config_to_dict(make()), old) == []
    changed = make(ssl={"gram": {"weight": 1.0}}, guidance={"balance": True, "balance_momentum": 0.99,
                                                            "lambda": {"start": "unfreeze"}})
    assert diff_configs(old, config_to_dict(changed)) == ["guidance.balance", "guidance.balance_momentum",
                                                          "guidance.lambda.start", "ssl.gram"]
    del old["ssl"]["koleo_loss_weight"]  # any other missing key still counts
    assert diff_configs(old, config_to_dict(make())) == ["ssl.koleo_loss_weight"]


def test_a_key_given_twice_is_an_error_naming_the_file_the_key_and_the_lines(tmp_path):
    """Before: the second `train:` silently replaced the first (a 3-step run became a 1000-step one)."""
    path = tmp_path / "cfg.yaml"
    text = yaml.safe_dump({**BASE, "train": {"steps": 3}}, sort_keys=False) + "train:\n  batch_size: 2\n"
    path.write_text(text)
    second = text.splitlines().index("train:", text.splitlines().index("train:") + 1) + 1
    first = text.splitlines().index("train:") + 1
    with pytest.raises(UserError, match=rf"'{path}' has the key 'train' twice .*lines {first} and {second}"):
        read_yaml(path)
    path.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(UserError, match=r"key 'lr' twice .*lines 2 and 3"):
        load_config(path)
    with pytest.raises(UserError, match="'split' is given twice"):
        parse_override("data.rows={split: train, split: test}")
    path.write_text("a: &base {p: 1, q: 2}\nb:\n  <<: *base\n  p: 3\n")  # a merge key may be overridden
    assert read_yaml(path) == {"a": {"p": 1, "q": 2}, "b": {"p": 3, "q": 2}}


def test_scientific_notation_without_a_dot_is_a_float(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("optim:\n  lr: 1e-4\n  weight_decay: 5E-2\nx: [5E3, -2e+2, 1.5e-3, '1e-4', e5, 1e]\n")
    data = read_yaml(path)
    assert data["optim"] == {"lr": 1e-4, "weight_decay": 0.05}
    assert data["x"] == [5000.0, -200.0, 0.0015, "1e-4", "e5", "1e"]
    assert parse_override("optim.lr=1e-4") == (["optim", "lr"], 1e-4)
    path.write_text(yaml.safe_dump(BASE) + "optim:\n  lr: 1e-4\n")
    assert load_config(path).optim.lr == 1e-4


def test_a_relative_data_root_resolves_against_the_config_file_like_the_table(tmp_path, monkeypatch):
    (tmp_path / "cfgs").mkdir()
    path = tmp_path / "cfgs" / "cfg.yaml"
    path.write_text(yaml.safe_dump({**BASE, "data": {**BASE["data"], "root": "../images"}}))
    monkeypatch.chdir(tmp_path.parent)
    cfg = load_config(path)
    assert cfg.data.root == str((tmp_path / "images").resolve())
    assert cfg.data.table == str((tmp_path / "cfgs" / BASE["data"]["table"]).resolve())
    assert load_config(path, ["data.root=imgs"]).data.root == str((tmp_path.parent / "imgs").resolve())  # cwd
    path.write_text(yaml.safe_dump({**BASE, "data": {**BASE["data"], "root": "/abs/images"}}))
    assert load_config(path).data.root == "/abs/images"


def test_save_config_is_atomic_a_failed_write_leaves_the_earlier_file(tmp_path, monkeypatch):

    path = tmp_path / "config.yaml"
    save_config(make(train={"steps": 7}), path)
    before = path.read_text()
    full_disk_halfway_through_write_text(monkeypatch)
    with pytest.raises(OSError):
        save_config(make(train={"steps": 8}), path)
    monkeypatch.undo()
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
