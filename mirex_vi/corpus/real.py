"""Pseudo-cover cliques of real recordings, as pooled CQTs (``mirex-vi corpus-real``).

A recording of the pool (``pool``) is cut into segments of about 30-90 s; near-silent ones
(RMS below ``SILENT_DBFS``) are dropped. Each segment is a clique whose versions are:

1. the segment itself, as recorded;
2. ``fx_versions`` real versions made in the audio domain (``audio_fx.real_versions``:
   pitch shift and time stretch of the waveform, EQ, reverb, compression, a codec, and a
   second real recording of the same split mixed underneath);
3. ``renders`` renders of its own transcription (``transcribe``: basic-pitch's notes played
   by fluidsynth with the synthetic generator's knobs);
4. for a Frets on Fire song, the mix without its guitar stem.

Every random choice is drawn from the seed, the recording's key and the segment, so the
same pool and options give the same store. A worker turns one recording into a *part*
(``OUT/parts/*.npz``: its versions' pooled CQTs and their metadata records), so an
interrupted build resumes at the next recording; the store (``features.pooled``, u8) is
written from the parts in one go once all are done, as ``mirex-vi extract --pooled`` writes
one, after the light JSON (``<name>-light.json`` + ``.train/.val/.test``, split by
recording), the pool manifest (``<name>-pool.tsv``), the skipped files
(``<name>-skipped.tsv``) and ``<name>-build.json`` (the options and recordings: a rerun of
a finished build is a no-op, one with other options is refused).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..config import FeatureConfig
from ..core.atomic import atomic_open, remove_stale_temporaries
from ..features.pooled import is_store, write_store
from .driver import parallel_map, write_json
from .pool import (DOC_ROOT, SPLITS, Lookup, Recording, dpkg_packages, group_recordings, scan,
                   split_of)
from .real_cliques import RealTask, Tools, default_tools, make_part, part_name

log = logging.getLogger(__name__)

REAL_GENERATOR_VERSION = 1
# The FeatureConfig fields that make a pooled CQT (the others serve training and inference).
FRONT_END_FIELDS = ("sample_rate", "hop_length", "n_bins", "bins_per_octave", "fmin",
                    "downsample_factor")


def front_end(cfg: FeatureConfig) -> dict:
    """What of ``cfg`` a store depends on (in its build record and its parts' names)."""
    return {name: getattr(cfg, name) for name in FRONT_END_FIELDS}


@dataclasses.dataclass(frozen=True)
class RealSpec:
    """What ``build_real_store`` makes from a pool (the options of ``mirex-vi corpus-real``).

    ``max_recordings`` (0: all) keeps the first recordings in key order, a sample spread
    over the packages; ``max_segments`` (0: all) caps the cliques of one recording.
    """

    seed: int = 27
    segment_seconds: tuple[float, float] = (30.0, 90.0)  # min, max segment length
    fx_versions: int = 3  # audio-domain versions of each segment
    renders: int = 2  # renders of each segment's transcription (0: no transcription)
    max_recordings: int = 0
    max_segments: int = 0
    fractions: tuple[float, ...] = (0.8, 0.1, 0.1)  # train, val, test shares of recordings
    name: str = "Real-VI-YT"  # metadata file prefix
    jobs: int = 1
    quiet: bool = False

    def __post_init__(self) -> None:
        low, high = self.segment_seconds
        if not 1 <= low <= high:
            raise ValueError(f"segment lengths {low:g}-{high:g} s: need 1 <= min <= max")
        object.__setattr__(self, "segment_seconds", (float(low), float(high)))
        object.__setattr__(self, "fractions", tuple(self.fractions))

    def recipe(self) -> dict:
        """The options that change what a recording's part holds (not which recordings)."""
        return {"generator_version": REAL_GENERATOR_VERSION, "seed": self.seed,
                "segment_seconds": list(self.segment_seconds), "fx_versions": self.fx_versions,
                "renders": self.renders, "max_segments": self.max_segments}


def build_real_store(out_dir: Path, folders: Sequence[Path], spec: RealSpec,
                     tools: Tools | None = None, lookup: Lookup = dpkg_packages,
                     doc_root: Path = DOC_ROOT) -> dict[str, list[dict]]:
    """Build (or finish) the store of real-derived cliques of the recordings in ``folders``.

    Returns the clique -> version records of the light JSON.

    Raises:
        ValueError: a missing folder, ``planetblupi`` music or a package without a
            copyright file in the pool, ``out_dir`` holding a store built otherwise, or no
            clique made.
        ImportError: transcription asked for (``renders`` > 0) without basic-pitch.
    """
    cfg = FeatureConfig()
    files, skipped = scan(folders, spec.segment_seconds[0], lookup, doc_root)
    recordings, duplicates = group_recordings(files)
    skipped += duplicates
    pool, recordings = recordings, recordings[: spec.max_recordings or None]
    if not recordings:
        raise ValueError(f"no recordings of at least {spec.segment_seconds[0]:g} s from a "
                         f"Debian package in {', '.join(map(str, folders))}")
    build = json.loads(json.dumps({"spec": spec.recipe(), "fractions": spec.fractions,
                                   "features": front_end(cfg),
                                   "recordings": [r.key for r in recordings]}))
    finished = _finished(out_dir, spec.name, build)
    if finished is not None:
        return finished
    tools = tools or default_tools(spec.renders > 0)
    tasks = _tasks(recordings, pool, spec, out_dir / "parts", tools, cfg)
    failed = _make_parts(tasks, spec)
    cliques, segments = _read_records(tasks, failed)
    if not cliques:
        first = next(iter(failed.values()), None)
        raise ValueError("no clique with two versions was made"
                         + (f"; {len(failed)} recordings failed, e.g. {first}" if failed else ""))
    _write_metadata(out_dir, spec, cliques, recordings, segments,
                    skipped + [(t.recording.main.path, f"failed: {failed[t.recording.key]}")
                               for t in tasks if t.recording.key in failed])
    write_json(out_dir / f"{spec.name}-build.json", build)
    write_store(out_dir, _pooled_items(tasks, failed), "u8")
    return cliques


def _finished(out_dir: Path, name: str, build: dict) -> dict[str, list[dict]] | None:
    """The cliques of a store already built in ``out_dir`` with ``build``; None if there is
    no store. ValueError for a store built otherwise."""
    if not is_store(out_dir):
        return None
    try:
        previous = json.loads((out_dir / f"{name}-build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if previous != build:
        same_recipe = isinstance(previous, dict) and all(
            previous.get(k) == build[k] for k in ("spec", "fractions", "features"))
        raise ValueError(
            f"{out_dir} already holds a pooled store built from other "
            f"{'recordings' if same_recipe else 'recordings or options'}; "
            + ("to grow or cut it, remove its pooled.u8.npy and pooled.index.tsv (the parts of "
               "its recordings are kept and reused)" if same_recipe else
               "write to a new folder"))
    log.info("%s: the store is already built", out_dir)
    return json.loads((out_dir / f"{name}-light.json").read_text(encoding="utf-8"))


def _tasks(recordings: Sequence[Recording], pool: Sequence[Recording], spec: RealSpec,
           parts_dir: Path, tools: Tools, cfg: FeatureConfig) -> list[RealTask]:
    """One task per recording; its ``other`` (the recording mixed under its real versions)
    is another recording of its split in the whole ``pool``, drawn from the seed, so that a
    part does not depend on ``max_recordings``."""
    from .catalogue import stable_int

    splits = {r.key: split_of(r.key, spec.fractions) for r in pool}
    by_split = {s: [r for r in pool if splits[r.key] == s] for s in SPLITS}
    tasks = []
    for r in recordings:
        others = [o for o in by_split[splits[r.key]] if o.key != r.key]
        other = others[stable_int("other", spec.seed, r.key) % len(others)] if others else None
        digest = hashlib.sha256(json.dumps([spec.recipe(), other and other.key,
                                            front_end(cfg)]).encode()).hexdigest()
        tasks.append(RealTask(r, other, splits[r.key], spec.recipe(), cfg, tools,
                              parts_dir / part_name(r.key, digest)))
    return tasks


def _make_parts(tasks: Sequence[RealTask], spec: RealSpec) -> dict[str, str]:
    """Make the parts not made before; recording key -> why, for those that failed."""
    from tqdm import tqdm

    todo = [t for t in tasks if not t.part.is_file()]
    if len(todo) < len(tasks):
        log.info("%d of %d recordings done before; making the others", len(tasks) - len(todo),
                 len(tasks))
    if todo:
        todo[0].part.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(todo[0].part.parent)
    failed = {}
    with parallel_map(min(spec.jobs, max(1, len(todo)))) as mapper:
        for key, error in tqdm(mapper(make_part, todo), total=len(todo), desc="recordings",
                               unit="rec", disable=spec.quiet, file=sys.stderr):
            if error is not None:
                log.warning("recording %s failed: %s", key[:12], error)
                failed[key] = error
    return failed


def _read_records(tasks: Sequence[RealTask], failed: dict[str, str]
                  ) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Clique -> version records from the parts, in recording order; recording key -> its
    number of cliques."""
    cliques: dict[str, list[dict]] = {}
    segments: dict[str, int] = {}
    for t in tasks:
        if t.recording.key in failed:
            continue
        with np.load(t.part) as part:
            records = json.loads(part["records"].tobytes().decode("utf-8"))
        cliques.update(records)
        segments[t.recording.key] = len(records)
    return cliques, segments


def _pooled_items(tasks: Sequence[RealTask], failed: dict[str, str]
                  ) -> Iterator[tuple[str, np.ndarray]]:
    """``(youtube_id, (T', n_bins) pooled CQT)`` of every version, part by part."""
    for t in tasks:
        if t.recording.key in failed:
            continue
        with np.load(t.part) as part:
            records = json.loads(part["records"].tobytes().decode("utf-8"))
            for versions in records.values():
                for v in versions:
                    yield v["youtube_id"], part[v["youtube_id"]]


MANIFEST_HEADER = ("file", "package", "licence", "duration_s", "sha256", "segments",
                   "recording", "split", "copyright")


def _write_metadata(out_dir: Path, spec: RealSpec, cliques: dict[str, list[dict]],
                    recordings: Sequence[Recording], segments: dict[str, int],
                    skipped: Sequence[tuple[str, str]]) -> None:
    """The light JSON and its splits, the pool manifest and the skipped files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"{spec.name}-light.json", cliques)
    for split in SPLITS:
        write_json(out_dir / f"{spec.name}-light.json.{split}",
                   {c: vs for c, vs in cliques.items() if vs[0]["split"] == split})
    rows = [(f.path, f.package, f.licence, f"{f.duration_s:.3f}", f.sha256,
             str(segments.get(r.key, 0)), r.key, split_of(r.key, spec.fractions), f.copyright)
            for r in recordings for f in r.files]
    _write_tsv(out_dir / f"{spec.name}-pool.tsv", MANIFEST_HEADER, rows)
    _write_tsv(out_dir / f"{spec.name}-skipped.tsv", ("file", "reason"), sorted(skipped))


def _write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        f.writelines("\t".join(" ".join(str(x).split()) for x in row) + "\n" for row in rows)

