"""The MIREX job: list files in, distance matrix out.

``prepare`` checks everything that can be checked before audio is touched (lists, queries,
output location, weights, device); ``identify`` embeds, scores and writes atomically. A
track that cannot be used is skipped with its reason; only the output itself can fail the
run once the work has started, and then the cached embeddings are kept for a rerun.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..config import ScoringConfig
from ..core.atomic import make_folder, remove_stale_temporaries
from ..core.runtime import disable_tf32_without_amp, resolve_device
from ..io.lists import InputError, OutputError, TrackList, query_positions, read_list, write_errors
from ..io.matrix import write_distance_matrix
from ..io.outputs import check_accepts_files, check_output_location, find_same_file
from ..model.weights import LoadedWeights, load_weights, weight_files
from . import align
from .cache import EmbeddingCache
from .tracks import TrackError, embed_tracks
from .recipe import Recipe
from .scoring import distance_rows, expand_by_neighbours
from .settings import EmbedSettings

log = logging.getLogger(__name__)


SYSTEM_NAME = "Discogs-VINet-MIREX (mirex_vi)"


@dataclass(frozen=True)
class IdentifyJob:
    collection: TrackList
    query_indices: list[int]  # 0-based collection index of each query
    output: Path
    workdir: Path
    weights: LoadedWeights
    device: torch.device


@dataclass
class IdentifySummary:
    n_tracks: int
    n_queries: int
    n_cached: int
    seconds: float
    output: Path
    errors_file: Path
    errors: list[tuple[Path, str]] = field(default_factory=list)
    strict_error: str | None = None

    def describe(self) -> str:
        skipped = (f"; {len(self.errors)} track(s) skipped (distance 2.0 to all others), "
                   f"see {self.errors_file}" if self.errors else "")
        return (f"wrote {self.output}: {self.n_queries} queries x {self.n_tracks} tracks "
                f"in {self.seconds:.1f} s ({self.n_cached} embeddings from cache){skipped}")


def default_workdir(output: Path) -> Path:
    return output.with_name(output.name + ".work")


def errors_file(workdir: Path, output: Path) -> Path:
    """The run's error log, ``<output name>.<key>.errors.tsv``: ``key``, the first 8 hex
    digits of the sha256 of the output's resolved path, keeps apart the logs of runs that
    share a workdir, also when their outputs share a name (``A/out.txt``, ``B/out.txt``)."""
    key = hashlib.sha256(os.fsencode(os.path.realpath(output))).hexdigest()[:8]
    return workdir / f"{output.name}.{key}.errors.tsv"


def prepare(collection: Path, queries: Path, output: str | Path, workdir: Path | None,
            weights: str | None, device: str) -> IdentifyJob:
    """Validate the whole call before any audio is processed.

    OUTPUT must be a new name or a regular file in a folder that takes files, and neither
    an input (list, track, weights file) nor the workdir. The workdir is made last, so a
    refusal leaves nothing behind; one it makes and then refuses is removed.

    Raises:
        ValueError: (``InputError``, ``WeightsError`` included) with a message for the user.
    """
    tracks = read_list(collection)
    query_list = tracks if queries == collection else read_list(queries)  # a pipe reads once
    query_indices = query_positions(tracks, query_list)
    inputs = [collection, queries, *weight_files(weights), *tracks.paths]
    output = check_output_location(output, inputs)
    workdir = Path(os.path.abspath(workdir)) if workdir else default_workdir(output)
    if find_same_file(workdir, [output]):
        raise InputError(f"{workdir}: the work folder cannot be the output")
    loaded, device = load_weights(weights), resolve_device(device)
    _make_workdir(workdir)
    remove_stale_temporaries(output.parent, of=output.name)
    return IdentifyJob(tracks, query_indices, output, workdir, loaded, device)


def _make_workdir(workdir: Path) -> None:
    """Make ``workdir`` (and its parents) and check that it takes files; if it does not,
    remove the folders made here.

    Raises:
        InputError: naming the folder and why.
    """
    made = next((p for p in reversed([workdir, *workdir.parents]) if not p.exists()), None)
    try:
        make_folder(workdir, "work folder")
        if not os.access(workdir, os.W_OK | os.X_OK):
            raise InputError(f"{workdir}: work folder is not writable")
        check_accepts_files(workdir, "work folder")
    except OSError as err:  # make_folder's, one line naming the folder
        _remove_made(workdir, made)
        raise InputError(str(err)) from err
    except InputError:
        _remove_made(workdir, made)
        raise


def _remove_made(workdir: Path, made: Path | None) -> None:
    """Remove the empty folders from ``workdir`` up to ``made``, the topmost that was made."""
    for folder in [workdir, *workdir.parents] if made else []:
        with contextlib.suppress(OSError):
            folder.rmdir()
        if folder == made:
            break


def identify(job: IdentifyJob, settings: EmbedSettings, strict: bool = False,
             progress: bool = True, name: str | None = None, expand: int = 0,
             scoring: ScoringConfig | None = None) -> IdentifySummary:
    """Embed every collection track (cached in the workdir) with ``settings`` (on the job's
    device), score, write the matrix. With ``expand`` > 0, each embedding is first expanded
    by that many nearest neighbours in the collection (``scoring.expand_by_neighbours``).
    The pairs are scored by the package's recipe (``FeatureConfig.scoring``), or by
    ``scoring`` when given (``recipe.Recipe``); the matrix's first line names it.

    Without AMP on CUDA, TF32 is off (true fp32). Before the torch CQT is used on CUDA it
    must pass the self-check (``selfcheck.torch_cqt_agrees``); if it does not, the CQTs
    are computed with librosa in the workers.

    Raises:
        OutputError: the matrix could not be written (the cache is kept).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    disable_tf32_without_amp(job.device, settings.amp)  # before the self-check measures
    settings = _checked_cqt_backend(job, settings)
    paths = job.collection.paths
    recipe = Recipe.of(job.weights.model, job.weights.features, scoring, settings.device,
                       settings.amp)
    cache = EmbeddingCache(job.workdir / "embeddings", job.weights.sha256, job.weights.features,
                           job.weights.model.cfg.embedding_dim, settings, recipe.cache_key())
    summary = IdentifySummary(len(paths), len(job.query_indices), 0, 0.0, job.output,
                              errors_file(job.workdir, job.output))
    if recipe.scoring.rerank:  # while the workers start, not between embedding and scoring
        threading.Thread(target=_load_alignment_kernels, name="mirex-vi-kernels",
                         daemon=True).start()
    with tqdm(total=len(paths), desc="embed", unit="track", disable=not progress) as bar:
        try:
            run = embed_tracks(paths, job.weights, settings, cache, strict, on_track=bar.update,
                               extras=recipe if recipe.needs_extras else None)
        except TrackError as err:
            summary.strict_error = str(err)
            return summary
    summary.n_cached = run.n_cached
    summary.errors = [(paths[i], reason) for i, reason in sorted(run.errors.items())]
    try:  # like the cache, the log is not worth failing the run for (stderr has the reasons)
        write_errors(summary.errors_file, summary.errors)
    except OSError as err:
        log.warning("cannot write the error log %s (%s)", summary.errors_file, err.strerror or err)
    valid = np.ones(len(paths), dtype=bool)
    valid[list(run.errors)] = False
    embeddings = expand_by_neighbours(run.embeddings, valid, expand, job.device)
    rescore = recipe.rescorer([run.extras.get(i) for i in range(len(paths))], valid, job.device)
    rows = distance_rows(embeddings, job.query_indices, valid, job.device, rescore=rescore)
    header = name or f"{SYSTEM_NAME}, weights {job.weights.name}" + (
        f", expanded by {expand} neighbours" if expand else "") + (
        f", scored by {recipe.scoring.describe()}" if recipe.needs_extras else "")
    try:
        write_distance_matrix(job.output, header, paths, job.query_indices, rows)
    except OSError as err:
        raise OutputError(f"{job.output}: cannot write the matrix ({err.strerror or err}); "
                          f"no output written. The embeddings are kept in {job.workdir}: "
                          "rerun the same command once the problem is solved") from err
    summary.seconds = time.perf_counter() - start
    return summary


def _load_alignment_kernels() -> None:
    with contextlib.suppress(Exception):  # the re-rank itself reports what fails
        align.load_kernels()


def _checked_cqt_backend(job: IdentifyJob, settings: EmbedSettings) -> EmbedSettings:
    """``settings``, with the ``librosa`` backend where the torch CQT on CUDA fails the
    self-check."""
    if settings.device.type != "cuda" or not settings.torch_cqt:
        return settings
    from .selfcheck import torch_cqt_agrees

    agrees = torch_cqt_agrees(job.weights, settings.device, settings.amp)
    return replace(settings, cqt_backend="torch" if agrees else "librosa")
