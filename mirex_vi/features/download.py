"""``mirex-vi download --pooled-store``: each fetched version's audio -> its pooled CQT -> one
u8 pooled store; the audio is deleted as soon as its features are on disk.

A store is written in one go (``pooled.write_store``), so the features wait in
``STORE/.pending/<id>.npy`` (``(T', n_bins)`` float32) until every version is through; a
version's audio is deleted once its pending file is written and synced. At the end the
store is written beside (``STORE/.merge``) and moved in, rows first: the versions of a store
already there come first, in their order, so its index stays valid over the new rows until
the new index replaces it. The pending files go last. A killed run keeps them, and its rerun
counts them as done; versions whose CQT fails keep their audio.

CQTs are computed in batches by ``workers.iter_files`` while the download threads go on
fetching, so the audio on disk is bounded by about one batch and the download queue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..config import FeatureConfig
from ..core.atomic import atomic_open, make_folder, remove_stale_temporaries
from ..core.lock import writing
from ..io.download import DownloadSummary, Outcome, download
from ..io.metadata import AUDIO_EXTENSIONS
from ..io.ytdlp import FetchOptions
from .frontend import pool_cqt
from .pooled import ENCODINGS, INDEX_NAME, PooledStore, is_store, rows_name, write_store
from .workers import iter_files

log = logging.getLogger(__name__)

ENCODING = "u8"
PENDING, MERGE = ".pending", ".merge"


def download_to_store(ids: Sequence[str], root: Path, store_dir: Path, opts: FetchOptions, *,
                      cqt_workers: int, retry_failed: bool = False,
                      progress: bool = True) -> tuple[DownloadSummary, int]:
    """``io.download.download`` of ``ids``, each version into the pooled store ``store_dir``.

    Returns:
        The download's summary (a version whose CQT failed counts as failed, kind
        ``features``) and the number of versions the store holds (0 when none was written).

    Raises:
        ValueError: ``store_dir`` holds a store of another encoding, or another process is
            writing there or into ``root`` (``FolderBusy``).
        OSError: as ``download``, for ``store_dir`` too.
    """
    make_folder(store_dir, "pooled store folder")
    with writing(store_dir, "pooled store"):
        sink = StoreSink(store_dir, FeatureConfig(), cqt_workers, root)
        summary = download(ids, root, opts, retry_failed=retry_failed, done=sink.done_ids(),
                           sink=sink, progress=progress)
    return summary, sink.stored


class StoreSink:
    """The ``io.download.Sink`` that turns fetched audio into pooled features (see above)."""

    def __init__(self, store_dir: Path, cfg: FeatureConfig, workers: int, root: Path):
        other = [rows_name(e) for e in ENCODINGS
                 if e != ENCODING and (store_dir / rows_name(e)).is_file()]
        if other:
            raise ValueError(f"{store_dir} holds {other[0]}; --pooled-store writes a "
                             f"{ENCODING} store: choose another folder")
        self.dir, self.cfg, self.workers = store_dir, cfg, workers
        self.pending, self.audio = store_dir / PENDING, root / "audio"
        self.batch_size = max(8, 4 * workers)
        self.stored = 0
        self._batch: list[Outcome] = []
        shutil.rmtree(store_dir / MERGE, ignore_errors=True)  # a killed write's (we hold the lock)
        self.pending.mkdir(exist_ok=True)
        remove_stale_temporaries(self.pending, older_than_s=0)

    def done_ids(self) -> frozenset[str]:
        """Versions already in the store or waiting for it."""
        stored = PooledStore.open(self.dir).entries if is_store(self.dir) else {}
        return frozenset(stored) | {p.stem for p in self.pending.glob("*.npy")}

    def add(self, outcome: Outcome) -> list[Outcome]:
        if outcome.state == "failed":
            return [outcome]
        self._batch.append(outcome)
        return self._extract() if len(self._batch) >= self.batch_size else []

    def flush(self) -> list[Outcome]:
        finished = self._extract()
        self._write_store()
        return finished

    def _extract(self) -> list[Outcome]:
        """The batch's CQTs, pooled, into the pending folder; each audio deleted after."""
        batch, self._batch, finished = self._batch, [], []
        for result in iter_files([o.path for o in batch], self.cfg, self.workers):
            outcome = batch[result.index]
            factor = self.cfg.downsample_factor
            pooled = None if result.error else pool_cqt(result.cqt, factor)
            if pooled is None or pooled.shape[0] == 0:
                why = result.error or f"shorter than one pool of {factor} frames"
                finished.append(dataclasses.replace(outcome, state="failed", kind="features",
                                                    message=f"{outcome.path.name}: {why}"))
                continue
            with atomic_open(self.pending / f"{outcome.youtube_id}.npy") as f:
                np.save(f, pooled)  # (T', n_bins) float32
            outcome.path.unlink(missing_ok=True)
            finished.append(dataclasses.replace(outcome, path=None))
        return finished

    def _write_store(self) -> None:
        """The pending versions (and those of a store already there) -> one store."""
        pending = sorted(self.pending.glob("*.npy"))
        old = PooledStore.open(self.dir) if is_store(self.dir) else None
        new = [p for p in pending if old is None or not old.has(p.stem)]
        if new:
            merge = self.dir / MERGE
            write_store(merge, _versions(old, new), ENCODING)
            os.replace(merge / rows_name(ENCODING), self.dir / rows_name(ENCODING))
            os.replace(merge / INDEX_NAME, self.dir / INDEX_NAME)
            merge.rmdir()
        for path in pending:  # in the store now: the file, and audio a killed run left
            for ext in AUDIO_EXTENSIONS:
                (self.audio / path.stem[:2] / f"{path.stem}{ext}").unlink(missing_ok=True)
            path.unlink()
        with contextlib.suppress(OSError):  # left when a version's CQT failed: its audio stays
            self.pending.rmdir()
        self.stored = len(PooledStore.open(self.dir)) if is_store(self.dir) else 0
        if new:
            log.info("%s: %d versions added, %d in all", self.dir, len(new), self.stored)


def _versions(old: PooledStore | None, new: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    """A store's versions in row order, then the pending files'."""
    if old is not None:
        for yid in sorted(old.entries, key=lambda y: old.entries[y].row):
            yield yid, old.pooled(yid)
    for path in new:
        yield path.stem, np.load(path)
