"""The embedding cache: one ``.npy`` per track, keyed by everything that makes the vector.

A rerun of the same command reads finished tracks from here instead of computing them, so
a killed run resumes and writes a byte-identical matrix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import FeatureConfig, embedding_features
from ..core.atomic import atomic_open, remove_stale_temporaries, sync_files
from ..io.audio import FileIdentity
from .settings import EmbedSettings

log = logging.getLogger(__name__)


class EmbeddingCache:
    """One ``.npy`` per track under ``folder``, keyed by file identity, weights, features
    and inference settings.

    The key covers the resolved path of the audio and its size and mtime as taken *before*
    it was read (:func:`~mirex_vi.io.audio.file_identity`), the weights' sha256, the feature
    config and the settings' :meth:`~mirex_vi.inference.settings.EmbedSettings.cache_key`,
    so a changed file, model, CQT backend, AMP or device type never reuses a stale entry.
    Entries are written atomically; one that does not load as a finite unit vector is
    recomputed, and temporaries that a killed run left behind are swept when the cache is
    opened. The cache is an optimisation: when an entry
    cannot be written (disk full...) it warns once and stops writing.

    With ``extras_key`` (a scoring recipe's :meth:`~mirex_vi.inference.recipe.Recipe.cache_key`)
    each track also keeps an ``.npz`` of its extras (segment embeddings, chroma) beside its
    vector, keyed by the vector's entry and ``extras_key``.
    """

    def __init__(self, folder: Path, weights_sha256: str, features: FeatureConfig, dim: int,
                 settings: EmbedSettings, extras_key: dict | None = None):
        self.folder = folder
        remove_stale_temporaries(folder)
        self.dim = dim
        self.extras_key = extras_key
        self.settings_key = settings.cache_key()
        self._salt = json.dumps({"weights": weights_sha256,
                                 "features": embedding_features(features),
                                 "inference": self.settings_key}, sort_keys=True)
        self._writable = True

    def path_for(self, audio: Path, identity: FileIdentity) -> Path:
        ident = json.dumps([str(audio.resolve()), identity.size, identity.mtime_ns, self._salt])
        key = hashlib.sha256(ident.encode()).hexdigest()
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, audio: Path, identity: FileIdentity) -> np.ndarray | None:
        """The ``(dim,)`` float32 entry of ``audio`` as it was when ``identity`` was taken."""
        try:
            entry = self.path_for(audio, identity)
            emb = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if emb.shape != (self.dim,) or emb.dtype != np.float32 or not np.all(np.isfinite(emb)) \
                or abs(float(np.linalg.norm(emb)) - 1.0) > 1e-3:
            log.warning("cache entry %s for %s is corrupt; recomputing", entry, audio)
            return None
        return emb

    def extras_path(self, audio: Path, identity: FileIdentity) -> Path:
        entry = self.path_for(audio, identity)
        key = hashlib.sha256(json.dumps([entry.name, self.extras_key]).encode()).hexdigest()
        return entry.with_name(f"{entry.stem}.{key[:16]}.npz")

    def get_extras(self, audio: Path, identity: FileIdentity) -> dict[str, np.ndarray] | None:
        """The extras of ``audio`` as it was when ``identity`` was taken: name -> array."""
        entry = self.extras_path(audio, identity)
        try:
            with np.load(entry, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None
        if not arrays or not all(np.all(np.isfinite(a)) for a in arrays.values()):
            log.warning("cache entry %s for %s is corrupt; recomputing", entry, audio)
            return None
        return arrays

    def put_extras(self, audio: Path, identity: FileIdentity,
                   arrays: dict[str, np.ndarray]) -> None:
        """Store the extras of ``audio`` read with ``identity`` (before its vector, so that a
        vector found in the cache always has them)."""
        if not self._writable:
            return
        try:
            entry = self.extras_path(audio, identity)
            entry.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(entry) as f:
                np.savez(f, **arrays)
        except OSError as err:
            self._writable = False
            log.warning("cannot write to the embedding cache %s (%s); carrying on without it, "
                        "so a rerun computes these embeddings again", self.folder,
                        err.strerror or err)

    def put(self, audio: Path, identity: FileIdentity, emb: np.ndarray) -> None:
        """Store the ``(dim,)`` embedding of ``audio`` read with ``identity``."""
        self.put_many([(audio, identity, emb)])

    def put_many(self, items: Sequence[tuple[Path, FileIdentity, np.ndarray]]) -> None:
        """Store a batch of ``(audio, identity, (dim,) embedding)`` with one file-system sync
        instead of one ``fsync`` per entry: every entry is written to its temporary file,
        all are made durable together (``atomic.sync_files``), then renamed into place."""
        if not items or not self._writable:
            return
        try:
            with contextlib.ExitStack() as renames:
                files = []
                for audio, identity, emb in items:
                    entry = self.path_for(audio, identity)
                    entry.parent.mkdir(parents=True, exist_ok=True)
                    f = renames.enter_context(atomic_open(entry, fsync=False))
                    np.save(f, emb.astype(np.float32))
                    files.append(f)
                sync_files(files)
        except OSError as err:
            self._writable = False
            log.warning("cannot write to the embedding cache %s (%s); carrying on without it, "
                        "so a rerun computes these embeddings again", self.folder,
                        err.strerror or err)
