"""The image preflight: every selected image is decoded once before training; all bad rows are named at once."""

from __future__ import annotations

import csv
import os
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from metadino.config.schema import DataConfig
from metadino.data import sources
from metadino.data.preflight import BAD_IMAGE_POLICIES, cache_root, check_images, write_skipped_rows
from metadino.data.table import load_table
from metadino.errors import UserError
from testkit import small_config, write_image_table


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METADINO_CACHE", str(tmp_path / "cache"))


def _table(folder, n=16, **kw):
    return load_table(write_image_table(folder, n=n, **kw), image_column="path")


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _count_decodes(monkeypatch) -> list:
    calls: list = []
    real = sources.load_image

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sources, "load_image", counting)
    return calls


def test_every_kind_of_bad_image_is_reported_at_once_with_its_row(tmp_path):
    table = _table(tmp_path / "d")
    imgs = tmp_path / "d" / "imgs"
    _truncate(imgs / "1.png")  # row 2
    (imgs / "4.png").write_bytes(b"")  # row 5: zero bytes
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(imgs / "7.png")  # row 8: one channel, in_chans=3
    # row 11: inf pixels in a .npy (the table names the .npy instead of the PNG); row 14: a NaN (no-data) pixel
    inf = np.random.default_rng(0).random((3, 40, 40)).astype(np.float32)
    inf[2, 0, 0] = inf[1, 5, 5] = np.inf
    np.save(imgs / "10.npy", inf)
    nan = np.random.default_rng(1).random((3, 40, 40)).astype(np.float32)
    nan[1, 3, 4] = np.nan
    np.save(imgs / "13.npy", nan)
    text = (tmp_path / "d" / "meta.csv").read_text().replace("imgs/10.png", "imgs/10.npy")
    text = text.replace("imgs/13.png", "imgs/13.npy")
    (tmp_path / "d" / "meta.csv").write_text(text)
    table = load_table(tmp_path / "d" / "meta.csv", image_column="path")

    with pytest.raises(UserError) as info:
        check_images(table, in_chans=3, progress=False)
    msg = str(info.value)
    first = msg.splitlines()[0]
    assert "meta.csv: 5 of 16 selected images" in first and "model.in_chans=3" in first
    lines = {int(line.split(" row ")[1].split(":")[0]): line for line in msg.splitlines() if " row " in line}
    assert sorted(lines) == [2, 5, 8, 11, 14]
    assert "cannot decode" in lines[2] and str(imgs / "1.png") in lines[2]
    assert "cannot decode" in lines[5] and str(imgs / "4.png") in lines[5]
    assert "1 channel(s) but model.in_chans=3" in lines[8]
    assert "2 non-finite pixel value(s)" in lines[11] and str(imgs / "10.npy") in lines[11]
    assert f"image '{imgs / '13.npy'}' has 1 no-data pixels (NaN) in channel(s) [1]" in lines[14]
    assert "data.bad_images: skip" in msg.splitlines()[-1]


def test_many_bad_rows_are_listed_up_to_ten_then_counted(tmp_path):
    table = _table(tmp_path / "d", n=16)
    for i in range(13):
        (tmp_path / "d" / "imgs" / f"{i}.png").write_bytes(b"")
    with pytest.raises(UserError) as info:
        check_images(table, in_chans=3, progress=False)
    msg = str(info.value)
    assert "13 of 16" in msg
    assert sum(" row " in line for line in msg.splitlines()) == 10
    assert "... and 3 more bad row(s)" in msg


def test_good_images_pass_and_record_their_size(tmp_path):
    table = _table(tmp_path / "d", n=5, size=24, channels=4)
    result = check_images(table, in_chans=4, progress=False)
    assert result.bad == [] and result.table is table
    assert result.sizes == [(24, 24)] * 5 and result.decoded == 5


def test_second_call_decodes_nothing_and_a_changed_file_is_rechecked(tmp_path, monkeypatch):
    table = _table(tmp_path / "d", n=6)
    calls = _count_decodes(monkeypatch)
    assert check_images(table, in_chans=3, progress=False).decoded == 6
    assert len(calls) == 6
    assert list((cache_root() / "preflight").glob("*.json"))  # under $METADINO_CACHE

    calls.clear()
    again = check_images(table, in_chans=3, progress=False)
    assert calls == [] and again.decoded == 0 and again.sizes == [(40, 40)] * 6

    # Replace one image by a broken one (new size and mtime): only it is decoded again, and it is caught.
    broken = tmp_path / "d" / "imgs" / "3.png"
    _truncate(broken)
    st = broken.stat()
    os.utime(broken, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(UserError, match="meta.csv row 4"):
        check_images(table, in_chans=3, progress=False)
    assert calls == [broken]

    # The bad result is cached too: reported again without decoding.
    calls.clear()
    with pytest.raises(UserError, match="meta.csv row 4"):
        check_images(table, in_chans=3, progress=False)
    assert calls == []


def test_same_size_rewrite_with_new_mtime_is_rechecked(tmp_path, monkeypatch):
    table = _table(tmp_path / "d", n=3, channels=4)
    target = tmp_path / "d" / "imgs" / "1.npy"
    pixels = np.load(target).astype(np.float32)
    np.save(target, pixels)
    check_images(table, in_chans=4, progress=False)
    before = target.stat()
    pixels[0, 0, 0] = np.nan
    np.save(target, pixels)  # same size, new content
    assert target.stat().st_size == before.st_size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    calls = _count_decodes(monkeypatch)
    with pytest.raises(UserError, match="meta.csv row 2: .*no-data pixels \\(NaN\\)"):
        check_images(table, in_chans=4, progress=False)
    assert calls == [target]


def test_channel_count_is_checked_against_in_chans_also_from_the_cache(tmp_path, monkeypatch):
    table = _table(tmp_path / "d", n=3)
    check_images(table, in_chans=3, progress=False)
    calls = _count_decodes(monkeypatch)
    with pytest.raises(UserError, match="3 channel\\(s\\) but model.in_chans=4"):
        check_images(table, in_chans=4, progress=False)
    assert calls == []


def test_an_unwritable_cache_never_fails_the_check(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("METADINO_CACHE", str(blocker))
    table = _table(tmp_path / "d", n=3)
    assert check_images(table, in_chans=3, progress=False).decoded == 3
    assert check_images(table, in_chans=3, progress=False).decoded == 3  # nothing cached, nothing failed


def test_a_corrupt_cache_file_is_ignored(tmp_path):
    table = _table(tmp_path / "d", n=3)
    check_images(table, in_chans=3, progress=False)
    for f in (cache_root() / "preflight").glob("*.json"):
        f.write_text("{not json")
    assert check_images(table, in_chans=3, progress=False).decoded == 3


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("METADINO_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("METADINO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "metadino"


def test_skip_within_budget_drops_the_rows_and_the_manifest_lists_them(tmp_path):
    table = _table(tmp_path / "d", n=16)
    (tmp_path / "d" / "imgs" / "5.png").write_bytes(b"")  # row 6
    result = check_images(table, in_chans=3, policy="skip", max_bad_fraction=0.1, progress=False)
    assert [b.row for b in result.bad] == [6]
    assert len(result.table) == 15 and 6 not in result.table.row_numbers
    assert tmp_path / "d" / "imgs" / "5.png" not in result.table.paths
    assert result.table.frame["path"].tolist() == [f"imgs/{i}.png" for i in range(16) if i != 5]
    assert result.table.fingerprint() != table.fingerprint()
    assert result.table.fingerprint() == table.subset([i for i in range(16) if i != 5]).fingerprint()

    manifest = write_skipped_rows(tmp_path / "skipped_rows.csv", result.bad)
    rows = list(csv.DictReader(manifest.open()))
    assert len(rows) == 1
    assert rows[0]["row"] == "6" and rows[0]["path"] == str(tmp_path / "d" / "imgs" / "5.png")
    assert "cannot decode" in rows[0]["reason"]


def test_skip_over_budget_stops_with_the_rows(tmp_path):
    table = _table(tmp_path / "d", n=16)
    for i in (2, 9):
        (tmp_path / "d" / "imgs" / f"{i}.png").write_bytes(b"")
    with pytest.raises(UserError, match="max_bad_fraction=0.1") as info:
        check_images(table, in_chans=3, policy="skip", max_bad_fraction=0.1, progress=False)
    assert "meta.csv row 3" in str(info.value) and "meta.csv row 10" in str(info.value)
    with pytest.raises(UserError, match="max_bad_fraction=0"):  # the default budget is zero
        check_images(table, in_chans=3, policy="skip", progress=False)
    assert len(check_images(table, in_chans=3, policy="skip", max_bad_fraction=0.125, progress=False).table) == 14


def test_skip_never_trains_on_no_rows(tmp_path):
    table = _table(tmp_path / "d", n=2)
    for i in range(2):
        (tmp_path / "d" / "imgs" / f"{i}.png").write_bytes(b"")
    with pytest.raises(UserError, match="none of the 2 selected images"):
        check_images(table, in_chans=3, policy="skip", max_bad_fraction=1.0, progress=False)


def test_small_images_large_batches_and_single_rows_are_warned(tmp_path):
    table = _table(tmp_path / "d", n=3, size=20)
    warnings = check_images(table, in_chans=3, global_size=32, batch_size=8, progress=False).warnings
    assert len(warnings) == 2
    assert "3 of 3 images are smaller than crops.global_size=32" in warnings[0] and "20x20" in warnings[0]
    assert "train.batch_size=8 is larger than the 3 rows" in warnings[1]
    assert all("\n" not in w and w.startswith("warning: ") for w in warnings)

    single = _table(tmp_path / "e", n=1, size=40)
    warnings = check_images(single, in_chans=3, global_size=32, batch_size=1, progress=False).warnings
    assert len(warnings) == 1 and "single row" in warnings[0]
    assert check_images(_table(tmp_path / "f", n=4), in_chans=3, global_size=32, batch_size=4,
                        progress=False).warnings == []


def test_the_policies_are_the_config_choices():
    hints = typing.get_type_hints(DataConfig)
    assert typing.get_args(hints["bad_images"]) == BAD_IMAGE_POLICIES
    assert small_config().data.bad_images == "strict" and small_config().data.max_bad_fraction == 0.0


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_max_bad_fraction_outside_zero_one_is_refused(value):
    with pytest.raises(UserError, match="data.max_bad_fraction"):
        small_config(data={"bad_images": "skip", "max_bad_fraction": value})


class _Broken(torch.utils.data.Dataset):
    """Raises what the training dataset raises for a file broken after the preflight."""

    def __init__(self, table):
        self.table = table

    def __len__(self):
        return len(self.table)

    def __getitem__(self, index):
        from metadino.data.dataset import load_checked_image

        return load_checked_image(self.table, index, 3)


def test_a_loader_worker_error_reaches_the_user_as_the_same_line(tmp_path):
    table = _table(tmp_path / "d", n=4)
    _truncate(tmp_path / "d" / "imgs" / "0.png")
    messages = []
    for workers in (0, 2):
        with pytest.raises(UserError) as info:
            list(DataLoader(_Broken(table), batch_size=2, num_workers=workers))
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert messages[1].startswith("meta.csv row 1: cannot decode image") and "\n" not in messages[1]
    assert "DataLoader worker" not in messages[1]


def test_image_bytes_in_the_table_are_checked_every_time_and_never_cached(tmp_path):
    import io as _io

    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = []
    for i in range(3):
        buf = _io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    blobs[1] = blobs[1][:30]  # truncated
    pq.write_table(pa.table({"image": pa.array(blobs, type=pa.binary())}), tmp_path / "t.parquet")
    table = load_table(tmp_path / "t.parquet", image_column="image")
    for _ in range(2):
        with pytest.raises(UserError, match=r"t\.parquet row 2: image 'row 2': cannot decode"):
            check_images(table, in_chans=3, progress=False)
    checked = check_images(table, in_chans=3, progress=False, policy="skip", max_bad_fraction=0.5)
    assert checked.decoded == 3 and len(checked.table) == 2
    assert not list((cache_root() / "preflight").glob("*.json"))  # nothing to cache: no file identities
