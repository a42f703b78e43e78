"""Check every selected image once before training: bad files surface at step 0, all of them at once.

:func:`check_images` decodes each row's image (:meth:`metadino.data.sources.ImageSource.load`) in a thread pool over the
available cores and checks that it decodes, has ``in_chans`` channels and only finite pixels; it records each
image's height and width for the size warning. A bad row is reported with its table file, its "row N" (as
:func:`metadino.data.dataset.load_checked_image` names it), its image path and the reason.

Policy (``data.bad_images``): ``strict`` stops with one :class:`~metadino.errors.UserError` listing the bad rows;
``skip`` drops them from the table (listed in ``skipped_rows.csv`` by :func:`write_skipped_rows`) unless they are more
than ``max_bad_fraction`` of the rows.

The result per row is cached by image identity (its files with their size, mtime and ctime, its item and tile) in
one small JSON file per table and reading options under :func:`cache_root` ``/preflight``, so a resume or a second run decodes only new or changed files. A cache that
cannot be read or written is ignored: it never fails a run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metadino import __version__
from metadino.data.reading import ReadOptions
from metadino.data.sources import ImageSource
from metadino.data.table import MetadataTable
from metadino.errors import UserError
from metadino.files import atomic_write_text, cache_root

__all__ = ["BAD_IMAGE_POLICIES", "SKIPPED_ROWS_FILE", "BadRow", "Preflight", "available_cores", "cache_root",
           "check_images", "write_skipped_rows"]

BAD_IMAGE_POLICIES: tuple[str, ...] = ("strict", "skip")
SKIPPED_ROWS_FILE = "skipped_rows.csv"
SHOW_BAD_ROWS = 10  # bad rows listed in a message; the rest are counted
_CACHE_FORMAT = 2  # bump when the cached fields or their meaning change


@dataclass(frozen=True)
class BadRow:
    """A row whose image cannot be trained on."""

    index: int  # position in the checked selection (0..n-1)
    row: int  # "row N" of the table file
    path: Path
    reason: str


@dataclass
class Preflight:
    """What :func:`check_images` found.

    Attributes:
        table: the rows to train on (the input table, or with ``skip`` the table without the bad rows).
        bad: every bad row of the input table (empty when all images are fine).
        sizes: ``(height, width)`` per row of `table`.
        warnings: one-line warnings (small images, batch larger than the table, a single row).
        decoded: how many files were decoded (the rest came from the cache).
    """

    table: MetadataTable
    bad: list[BadRow]
    sizes: list[tuple[int, int]]
    warnings: list[str] = field(default_factory=list)
    decoded: int = 0


def check_images(
    table: MetadataTable,
    *,
    in_chans: int,
    policy: str = "strict",
    max_bad_fraction: float = 0.0,
    global_size: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    cache: bool = True,
    options: ReadOptions | None = None,
) -> Preflight:
    """Decode every row's image once and apply the bad-image policy (module docstring).

    Args:
        table: the selected rows.
        in_chans: the channel count every image must have (``model.in_chans``).
        policy: ``"strict"`` (any bad row is an error) or ``"skip"`` (bad rows are dropped).
        max_bad_fraction: with ``skip``, the largest share of bad rows that is still trained without them.
        global_size: ``crops.global_size``: images smaller than it get a warning (they are upsampled).
        batch_size: ``train.batch_size``: larger than the table gets a warning.
        workers: decoding threads; None: the cores this process may use.
        progress: tqdm bar on stderr; None: only on a terminal, and only when the check takes over a second.
        cache: read and update the per-image cache under :func:`cache_root`.
        options: how files are decoded (``data.read``); default: the table's.

    Raises:
        UserError: with ``strict``, any bad row; with ``skip``, more than `max_bad_fraction` of the rows bad, or
            all of them. The message lists up to :data:`SHOW_BAD_ROWS` rows and counts the rest.
    """
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"unknown bad-image policy {policy!r}; expected one of {BAD_IMAGE_POLICIES}")
    options = table.images.options if options is None else options
    cache_file = _cache_file(table, options) if cache else None
    known = _read_cache(cache_file)
    results, fresh, decoded = _check_all(table.images, options, known, workers, progress)
    if cache_file is not None and fresh:
        _write_cache(cache_file, {**known, **fresh})

    bad: list[BadRow] = []
    sizes: list[tuple[int, int]] = []
    for i, (path, info) in enumerate(zip(table.paths, results, strict=True)):
        reason = _reason(info, in_chans)
        if reason is None:
            sizes.append((int(info["height"]), int(info["width"])))
        else:
            bad.append(BadRow(index=i, row=table.row_numbers[i], path=path, reason=reason))
            sizes.append((0, 0))

    kept = table
    if bad:
        _apply_policy(table, bad, in_chans, policy, max_bad_fraction)
        drop = {b.index for b in bad}
        keep = [i for i in range(len(table)) if i not in drop]
        kept = table.subset(keep)
        sizes = [sizes[i] for i in keep]
    return Preflight(table=kept, bad=bad, sizes=sizes, decoded=decoded,
                     warnings=_warnings(kept, sizes, global_size, batch_size))


def write_skipped_rows(path: Path, bad: Sequence[BadRow]) -> Path:
    """The manifest of skipped rows: CSV with ``row,path,reason`` (``row`` is the table's "row N")."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "path", "reason"])
    for b in bad:
        writer.writerow([b.row, str(b.path), b.reason])
    return atomic_write_text(path, buf.getvalue())


# ------------------------------------------------------------------------------------------ checking


def _check_all(source: ImageSource, options: ReadOptions, known: dict[str, dict[str, Any]], workers: int | None,
               progress: bool | None) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], int]:
    """Per row, its check result (from `known` when the image's identity matches); the newly checked entries by
    image key (those with a file identity); and how many rows were decoded."""
    from tqdm import tqdm

    n = len(source)
    results: list[dict[str, Any]] = [{} for _ in range(n)]
    fresh: dict[str, dict[str, Any]] = {}
    decoded_rows = 0
    n_workers = max(1, min(workers or available_cores(), n))
    # Chunks of rows per task: a million rows are a few thousand futures, and cached rows cost no thread hand-off.
    chunk = max(1, min(64, n // (4 * n_workers)))
    starts = range(0, n, chunk)
    with ThreadPoolExecutor(max_workers=n_workers) as pool, \
            tqdm(total=n, desc="checking images", unit="img", file=sys.stderr, delay=1.0,
                 disable=None if progress is None else not progress, dynamic_ncols=True) as bar:
        futures = {pool.submit(_check_chunk, source, range(s, min(s + chunk, n)), options, known): s for s in starts}
        for future in as_completed(futures):
            done = future.result()
            for offset, (key, info, decoded) in enumerate(done):
                results[futures[future] + offset] = info
                decoded_rows += int(decoded)
                if decoded and key is not None:
                    fresh[key] = info
            bar.update(len(done))
    return results, fresh, decoded_rows


def _check_chunk(source: ImageSource, rows: range, options: ReadOptions,
                 known: dict[str, dict[str, Any]]) -> list[tuple[str | None, dict[str, Any], bool]]:
    return [_check_one(source, i, options, known) for i in rows]


def _check_one(source: ImageSource, i: int, options: ReadOptions,
               known: dict[str, dict[str, Any]]) -> tuple[str | None, dict[str, Any], bool]:
    """(cache key, result, whether the image was decoded). The result holds the image's identity and either
    ``error`` or ``channels``/``height``/``width``/``nonfinite``."""
    stat = source.stat_key(i)
    if stat is None:
        missing = next((f for f in source.files_of(i) if not os.path.exists(f)), source.name(i))
        return None, {"error": f"cannot read the image file {missing}: it does not exist or cannot be read"}, False
    # size, mtime and ctime: a chmod (an image that could not be read) changes ctime, size and mtime stay
    key, identity = stat
    cacheable = bool(identity)  # bytes held in the table and URLs have no file identity: checked every time
    cached = known.get(key) if cacheable else None
    if cached is not None and cached.get("identity") == identity:
        return key, cached, False
    key_or_none = key if cacheable else None
    try:
        image = source.load(i, options)
    except UserError as e:
        return key_or_none, {"identity": identity, "error": _without_path(str(e), source.name(i))}, True
    pixels = image.numpy()
    finite = np.isfinite(pixels)
    nonfinite = 0 if finite.all() else int(finite.size - np.count_nonzero(finite))
    return key_or_none, {"identity": identity, "channels": int(pixels.shape[0]), "height": int(pixels.shape[1]),
                         "width": int(pixels.shape[2]), "nonfinite": nonfinite}, True


def _reason(info: dict[str, Any], in_chans: int) -> str | None:
    if "error" in info:
        return str(info["error"])
    if int(info["channels"]) != in_chans:
        return f"has {info['channels']} channel(s) but model.in_chans={in_chans}"
    if int(info["nonfinite"]):
        return f"has {info['nonfinite']} non-finite pixel value(s) (NaN or inf)"
    return None


def _without_path(message: str, name: str) -> str:
    """A decoder message without the path it names (the listing shows the path once)."""
    return message.replace(f"image {name} ", "", 1).replace(f" {name}", "")


def available_cores() -> int:
    """The CPU cores this process may run on (the default number of decoding threads)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------ policy


def _apply_policy(table: MetadataTable, bad: list[BadRow], in_chans: int, policy: str, max_bad_fraction: float) -> None:
    """Raise when the bad rows stop the run under `policy`."""
    name, n = table.source.name, len(table)
    share = f"{len(bad)} of {n} selected images ({100 * len(bad) / n:.1f} %)"
    if policy == "strict":
        raise UserError(
            f"{name}: {share} cannot be used for training (model.in_chans={in_chans}):\n{_listing(name, bad)}\n"
            "Fix or remove those rows, or set data.bad_images: skip with a data.max_bad_fraction to train without them."
        )
    if len(bad) == n:
        raise UserError(f"{name}: none of the {n} selected images can be used for training:\n{_listing(name, bad)}")
    if len(bad) > max_bad_fraction * n + 1e-9:  # 29 bad rows of 100 are within 0.29 (0.29 * 100 < 29 in floats)
        raise UserError(
            f"{name}: {share} cannot be used for training, more than data.max_bad_fraction={max_bad_fraction:g} "
            f"allows:\n{_listing(name, bad)}\nFix or remove those rows, or raise data.max_bad_fraction."
        )


def _listing(name: str, bad: Sequence[BadRow]) -> str:
    # "image '<path>' has 4 channel(s) ..." (as load_checked_image words it) or "image '<path>': cannot decode ..."
    lines = [f"  {name} row {b.row}: image '{b.path}'{' ' if b.reason.startswith('has ') else ': '}{b.reason}"
             for b in bad[:SHOW_BAD_ROWS]]
    if len(bad) > SHOW_BAD_ROWS:
        lines.append(f"  ... and {len(bad) - SHOW_BAD_ROWS} more bad row(s)")
    return "\n".join(lines)


def _warnings(table: MetadataTable, sizes: Sequence[tuple[int, int]], global_size: int | None,
              batch_size: int | None) -> list[str]:
    name, n = table.source.name, len(table)
    out: list[str] = []
    if global_size is not None:
        small = [i for i, (h, w) in enumerate(sizes) if min(h, w) < global_size]
        if small:
            i = min(small, key=lambda j: (min(sizes[j]), j))
            h, w = sizes[i]
            out.append(
                f"warning: {len(small)} of {n} images are smaller than crops.global_size={global_size} px and are "
                f"upsampled to it (smallest: {h}x{w} px, {name} row {table.row_numbers[i]}); lower crops.global_size "
                "or use larger images"
            )
    if n == 1:
        out.append(f"warning: {name} selects a single row: every batch repeats the same image")
    if batch_size is not None and batch_size > n:
        out.append(
            f"warning: train.batch_size={batch_size} is larger than the {n} rows of {name}: each batch holds some "
            "images more than once"
        )
    return out


# ------------------------------------------------------------------------------------------- cache


def _cache_file(table: MetadataTable, options: ReadOptions) -> Path:
    digest = hashlib.sha256(f"{table.source.resolve()}\0{options}".encode()).hexdigest()[:16]
    return cache_root() / "preflight" / f"{digest}.json"


def _read_cache(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT or data.get("metadino") != __version__:
        return {}
    files = data.get("files")
    return {str(k): v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}


def _write_cache(path: Path, files: dict[str, dict[str, Any]]) -> None:
    payload = json.dumps({"format": _CACHE_FORMAT, "metadino": __version__, "files": files}, separators=(",", ":"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, payload)
    except OSError:
        pass  # a read-only or full cache folder costs the next run a re-check, never this run

