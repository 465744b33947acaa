"""Catalogue indexes: a track list or Discogs-VI-YT metadata in, an index folder out.

Tracks are embedded by :func:`~mirex_vi.inference.tracks.embed_tracks` (parallel decoding, the same
error handling, and an :class:`~mirex_vi.inference.cache.EmbeddingCache`, by default
``INDEX_DIR/embeddings``), so a killed build, run again, embeds only what the cache lacks.
A track that cannot be embedded is left out of the index and listed in
``INDEX_DIR/errors.tsv``, rewritten by every build and add. With a segment recipe (the
package's, or one given to the build) every track's segments are embedded in the same pass
and kept beside it (:mod:`~mirex_vi.search.segments`). The folder format is
:mod:`mirex_vi.search.folder`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path

import numpy as np
import soundfile as sf

from ..config import ScoringConfig
from ..inference.cache import EmbeddingCache
from ..inference.tracks import EmbeddingRun, embed_tracks
from ..inference.recipe import Recipe
from ..inference.settings import EmbedSettings
from ..io.lists import InputError, read_list, write_errors
from ..model.weights import LoadedWeights, load_weights, resolve_weights
from . import faiss_index
from .folder import (MANIFEST, IndexFolderError, Manifest, OpenIndex, Shard, Track,
                     bytes_per_track, check_weights, manifest_for, open_index, save, write_failed,
                     writing)
from .segments import (check_same_recipe, index_kind, index_recipe, merged_segments,
                       note_rerank, recipe_dict, store_of)
from .segments import describe as describe_recipe

log = logging.getLogger(__name__)


CACHE_FOLDER = "embeddings"
ERRORS_FILE = "errors.tsv"


@dataclass(frozen=True)
class Embedder:
    """How tracks become embeddings: weights, embedding settings, cache, and the segment
    recipe of the index (None: embeddings only)."""

    weights: LoadedWeights
    weights_source: str  # the resolved folder or file the weights were loaded from
    settings: EmbedSettings
    cache: EmbeddingCache | None
    progress: bool = True
    segments: ScoringConfig | None = None

    def with_segments(self, recipe: ScoringConfig | None) -> Embedder:
        """This embedder, also embedding the segments of ``recipe`` (``index_recipe``)."""
        extras = self._recipe(recipe).cache_key()
        cache = self.cache and EmbeddingCache(
            self.cache.folder, self.weights.sha256, self.weights.features,
            self.weights.model.cfg.embedding_dim, self.settings, extras)
        return replace(self, cache=cache, segments=recipe)

    def _recipe(self, recipe: ScoringConfig | None) -> Recipe:
        return Recipe.of(self.weights.model, self.weights.features, recipe or ScoringConfig(),
                         self.settings.device, self.settings.amp)

    def embed(self, paths: Sequence[Path]) -> EmbeddingRun:
        """``(N, D)`` embeddings of ``paths`` (failed rows zero and listed in ``errors``),
        with each track's ``extras["segments"]`` ``(S, D)`` when :attr:`segments` is set."""
        from tqdm import tqdm

        extras = self._recipe(self.segments) if self.segments else None
        with tqdm(total=len(paths), desc="embed", unit="track", disable=not self.progress) as bar:
            return embed_tracks(paths, self.weights, self.settings, self.cache,
                                on_track=bar.update, extras=extras)


def make_embedder(weights: str | Path | None, settings: EmbedSettings, cache_dir: Path | None,
                  progress: bool = True) -> Embedder:
    """Load and verify the weights and open the cache (None: no cache).

    Raises:
        ValueError: unknown or corrupt weights.
    """
    loaded = load_weights(weights)
    cache = None
    if cache_dir is not None:
        cache = EmbeddingCache(cache_dir, loaded.sha256, loaded.features,
                               loaded.model.cfg.embedding_dim, settings)
    return Embedder(loaded, str(resolve_weights(weights).resolve()), settings, cache, progress)


def index_weights(manifest: Manifest) -> str:
    """The weights an index was built with: where they were loaded from, else their name."""
    return manifest.weights_source if Path(manifest.weights_source).exists() else manifest.weights_name


@dataclass
class IndexSummary:
    """What a build, add or merge did."""

    folder: Path
    manifest: Manifest
    added: int
    n_cached: int | None = None  # None: nothing was embedded (a merge)
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        index_bytes, table_bytes, segment_bytes = bytes_per_track(self.folder, self.manifest)
        how = "merged" if self.n_cached is None else f"added ({self.n_cached:,} embeddings from cache)"
        segments = (f", {segment_bytes:.1f} in {self.manifest.segment_count:,} segments"
                    if self.manifest.segments is not None else "")
        text = (f"index {self.folder}: {self.manifest.count:,} tracks, {self.manifest.kind} "
                f"({index_bytes:.1f} bytes per track in the index, {table_bytes:.1f} in the "
                f"track table{segments}); {self.added:,} {how} in {self.seconds:.1f} s")
        if self.errors:
            text += (f"; {len(self.errors)} track(s) could not be embedded and are left out, "
                     f"see {self.folder / ERRORS_FILE}")
        return text


def read_tracks(source: Path, audio_root: Path | None = None) -> list[Track]:
    """The tracks of a list file (one path per line) or of Discogs-VI-YT metadata (light
    JSON or JSONL, told by a leading ``{``; audio under ``audio_root``), in order, each
    path once.

    Raises:
        InputError: an unreadable list, metadata without ``audio_root``, or a path with a
            TAB (the track table's separator; a list refuses it by itself).
    """
    try:
        with open(source, encoding="utf-8") as f:
            is_metadata = f.read(4096).lstrip().startswith("{")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{source}: cannot read ({err})") from err
    if is_metadata:
        from ..io.metadata import items_from_metadata

        if audio_root is None:
            raise InputError(f"{source}: metadata needs --audio-root (the folder holding audio/)")
        tracks = [Track(str(path), youtube_id)
                  for youtube_id, path in items_from_metadata(source, audio_root)]
        tabbed = [t.path for t in tracks if "\t" in t.path]
        if tabbed:
            raise InputError(f"{source}: {len(tabbed)} path(s) hold a TAB, which the index's "
                             f"track table cannot (e.g. {tabbed[0]!r})")
    else:
        tracks = [Track(str(path)) for path in read_list(source).paths]
    first: dict[str, Track] = {}
    for track in tracks:
        first.setdefault(track.path, track)
    unique = list(first.values())
    if len(unique) < len(tracks):
        log.info("%s: %d repeated path(s) indexed once", source, len(tracks) - len(unique))
    return unique


def source_sha256(tracks: Sequence[Track]) -> str:
    return hashlib.sha256("\n".join(t.path for t in tracks).encode("utf-8", "surrogateescape")).hexdigest()


def audio_duration(path: str) -> float:
    """Seconds of audio from the file's header (soundfile, else ffprobe); NaN if unknown."""
    try:
        return float(sf.info(path).duration)
    except Exception:  # noqa: BLE001 - any format soundfile cannot read goes to ffprobe
        pass
    if shutil.which("ffprobe") is None:
        return math.nan
    cmd = ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    try:
        return float(out)
    except ValueError:
        return math.nan


@dataclass
class Embedded:
    """The embedded part of a track list: ``vectors`` ``(n, D)`` float32 and ``segments``
    (``(S_i, D)`` each, or None without a segment recipe) in ``tracks`` order; ``errors``
    (path, reason) of the tracks that failed."""

    tracks: list[Track]
    vectors: np.ndarray
    errors: list[tuple[str, str]]
    n_cached: int
    segments: list[np.ndarray] | None = None


def embed_all(tracks: Sequence[Track], embedder: Embedder) -> Embedded:
    """Embed ``tracks`` and read their durations; failed tracks are dropped."""
    run = embedder.embed([Path(t.path) for t in tracks])
    ok = [i for i in range(len(tracks)) if i not in run.errors]
    with ThreadPoolExecutor(max_workers=embedder.settings.workers) as pool:
        durations = list(pool.map(audio_duration, [tracks[i].path for i in ok]))
    segments = [run.extras[i]["segments"] for i in ok] if embedder.segments else None
    return Embedded([replace(tracks[i], duration=d) for i, d in zip(ok, durations)],
                    run.embeddings[ok], [(tracks[i].path, why) for i, why in sorted(run.errors.items())],
                    run.n_cached, segments)


def _refuse_existing(folder: Path) -> None:
    if (folder / MANIFEST).is_file():
        raise IndexFolderError(f"{folder} already holds an index: add tracks with "
                               "`mirex-vi index add`, or give another folder")


def build_index(source: Path, folder: Path, embedder: Embedder, kind: str = "auto",
                shard: Shard | None = None, nprobe: int | None = None,
                audio_root: Path | None = None, scoring: dict | None = None) -> IndexSummary:
    """Embed every track of ``source`` (or of its ``shard``) and write the index folder,
    with every track's segments when the package's scoring recipe, changed by ``scoring``
    (``ScoringConfig`` fields), has them (:func:`~.segments.index_recipe`).

    A shard is always ``flat``: it keeps the exact vectors that ``index merge`` needs; so
    is an index with segments.

    Raises:
        ValueError: bad input, a folder that already holds an index, a kind the tracks
            cannot have, a recipe out of range, or no track that could be embedded.
        OutputError: the folder could not take the index once the tracks were embedded
            (disk full...); the cache keeps what was embedded.
    """
    start = time.perf_counter()
    recipe = index_recipe(embedder.weights.features, scoring)
    note_rerank(embedder.weights.features)
    embedder = embedder.with_segments(recipe)
    tracks = read_tracks(source, audio_root)
    if shard is not None:
        if kind not in ("auto", "flat"):
            raise InputError("a shard is always flat: choose the kind when merging "
                             "(`mirex-vi index merge --kind ...`)")
        shard = replace(shard, source_sha256=source_sha256(tracks))
        tracks, kind = [tracks[i] for i in shard.select(len(tracks))], "flat"
    index_kind(kind, len(tracks), recipe)  # fail before embedding
    with writing(folder):
        _refuse_existing(folder)
        done = embed_all(tracks, embedder)
        _write_errors(folder, done.errors, existed=False)
        if not done.tracks:
            raise InputError(f"{source}: no track could be embedded (see {folder / ERRORS_FILE})")
        dim = done.vectors.shape[1]
        kind = index_kind(kind, len(done.tracks), recipe)
        params = faiss_index.ivfpq_params(len(done.tracks), dim, nprobe) if kind == "ivfpq" else None
        built = faiss_index.build(kind, done.vectors, params)
        manifest = replace(manifest_for(embedder.weights, embedder.weights_source, kind, dim),
                           params=params and params.to_dict(), shard=shard,
                           segments=recipe and recipe_dict(recipe))
        manifest = save(folder, manifest, built, done.tracks, store_of(done.segments, dim))
    return IndexSummary(folder, manifest, len(done.tracks), done.n_cached, done.errors,
                        time.perf_counter() - start)


def add_tracks(folder: Path, source: Path, embedder: Embedder, audio_root: Path | None = None,
               scoring: dict | None = None) -> IndexSummary:
    """Append the tracks of ``source`` that the index does not hold yet, with their
    segments when the index keeps them (its manifest's recipe). ``scoring`` (changes to
    that recipe, as the segment options give them), if given, must leave it as it is.

    Raises:
        ValueError: no index in ``folder``, ``embedder``'s weights or feature config
            differ from the index's, or ``scoring`` makes another segment recipe.
        OutputError: as :func:`build_index`; the index is left as it was.
    """
    start = time.perf_counter()
    with writing(folder):
        opened = open_index(folder, mmap=False)
        check_weights(opened.manifest, embedder.weights, folder)
        kept = opened.manifest.recipe
        if scoring:
            features = replace(embedder.weights.features, scoring=kept or ScoringConfig())
            check_same_recipe(kept, index_recipe(features, scoring), folder)
        known = {t.path for t in opened.tracks}
        new = [t for t in read_tracks(source, audio_root) if t.path not in known]
        done = embed_all(new, embedder.with_segments(kept))
        _write_errors(folder, done.errors, existed=True)
        faiss_index.add(opened.index, done.vectors)
        if opened.segments is not None:
            opened.segments.append(done.segments, opened.manifest.count)
        manifest = save(folder, opened.manifest, opened.index, chain(opened.tracks, done.tracks),
                        opened.segments)
    return IndexSummary(folder, manifest, len(done.tracks), done.n_cached, done.errors,
                        time.perf_counter() - start)


def _write_errors(folder: Path, errors: list[tuple[str, str]], existed: bool) -> None:
    """``folder/errors.tsv``; an ``OutputError`` (see :func:`~.folder.write_failed`) when the
    folder cannot take it."""
    try:
        write_errors(folder / ERRORS_FILE, errors)
    except OSError as err:
        raise write_failed(folder, ERRORS_FILE, err, existed) from err


def merge_indexes(folder: Path, inputs: Sequence[Path], kind: str = "auto",
                  nprobe: int | None = None) -> IndexSummary:
    """Join flat indexes (the shards of one list, or any compatible ones) into a new index.

    Shards are joined in shard order, whatever the order given, and must be all ``n``
    shards of one list; other indexes are joined in the order given. Vectors are read
    one input at a time. Indexes with segments (all or none, of one recipe) make a flat
    index with segments.

    Raises:
        ValueError: an input that is not flat, other weights, feature configs or segment
            recipes, a shard missing or repeated, a track in two inputs, ``ivfpq`` with
            segments, or an output that holds an index.
        OutputError: the folder could not take the index (disk full...).
    """
    start = time.perf_counter()
    parts = _merge_order([open_index(p) for p in inputs])
    first = parts[0].manifest
    total = sum(p.manifest.count for p in parts)
    kind = index_kind(kind, total, first.recipe)
    params = faiss_index.ivfpq_params(total, first.dim, nprobe) if kind == "ivfpq" else None
    merged = faiss_index.new_index(kind, first.dim, params)
    with writing(folder):
        _refuse_existing(folder)
        if params is not None:
            faiss_index.train(merged, _sample(parts, faiss_index.training_rows(total, params)))
        for part in parts:
            faiss_index.add(merged, faiss_index.vectors_of(part.index))
        segments = None if first.segments is None else merged_segments(
            [p.segments for p in parts], [p.manifest.count for p in parts], first.dim)
        manifest = replace(first, kind=kind, params=params and params.to_dict(), shard=None)
        manifest = save(folder, manifest, merged, chain.from_iterable(p.tracks for p in parts),
                        segments)
    return IndexSummary(folder, manifest, total, seconds=time.perf_counter() - start)


def _merge_order(parts: list[OpenIndex]) -> list[OpenIndex]:
    """Check that ``parts`` can be merged; return them in merge order."""
    first = parts[0].manifest
    for part in parts:
        m = part.manifest
        if m.kind != "flat":
            raise IndexFolderError(f"{part.folder}: an {m.kind} index has no exact vectors to "
                                   "merge; merge the flat shards it was made from")
        if (m.weights_sha256, m.features_sha256, m.dim) != (first.weights_sha256,
                                                             first.features_sha256, first.dim):
            raise IndexFolderError(f"{part.folder}: other weights or feature config than "
                                   f"{parts[0].folder}")
        if m.recipe != first.recipe:
            raise IndexFolderError(f"{part.folder} keeps {describe_recipe(m.recipe)}, "
                                   f"{parts[0].folder} {describe_recipe(first.recipe)}: only "
                                   "indexes with the same segment recipe merge")
    shards = [p.manifest.shard for p in parts]
    if any(shards):
        if not all(shards) or len({(s.count, s.source_sha256) for s in shards}) != 1 \
                or sorted(s.number for s in shards) != list(range(1, shards[0].count + 1)):
            found = ", ".join(f"{s.number}/{s.count}" if s else "not a shard" for s in shards)
            raise IndexFolderError(f"merge needs every shard 1..n of one list exactly once "
                                   f"(got {found})")
        parts = sorted(parts, key=lambda p: p.manifest.shard.number)
    seen: set[str] = set()
    for part in parts:
        for track in part.tracks:
            if track.path in seen:
                raise IndexFolderError(f"{track.path} is in more than one input")
            seen.add(track.path)
    return parts


def _sample(parts: Sequence[OpenIndex], rows: np.ndarray) -> np.ndarray:
    """The vectors of global ``rows`` (ascending) across ``parts`` in order."""
    pieces, offset = [], 0
    for part in parts:
        local = rows[(rows >= offset) & (rows < offset + part.manifest.count)] - offset
        pieces.append(faiss_index.vectors_of(part.index)[local])
        offset += part.manifest.count
    return np.concatenate(pieces)
