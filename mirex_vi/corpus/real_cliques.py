"""One recording of a real-audio pool -> its cliques' pooled CQTs (a *part*), in a worker.

A part is ``OUT/parts/<key>-<digest>.npz``: one ``(T', n_bins)`` float32 array per version,
named by its YouTube-style id, and ``records``, the UTF-8 JSON of ``{clique_id: [version
record, ...]}`` (the records of the light JSON). Its name carries a digest of everything
that makes it (options, feature config, the recording mixed under its real versions), so a
part made otherwise is never reused.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import FeatureConfig
from ..core.atomic import atomic_open
from ..features.frontend import checked_cqt, pool_cqt
from ..io.audio import AudioError
from .catalogue import stable_int, youtube_id
from .pool import FOF_GUITAR, RAW_FORMATS, Recording, segment_bounds
from .real_audio import decode

log = logging.getLogger(__name__)

SILENT_DBFS = -40.0  # a segment whose RMS is below this (dB re full scale) is dropped
MIN_NOTES = 8  # a transcription with fewer notes is not rendered
GENERATOR = "real-pool"
Versions = list[tuple[str, np.ndarray]]  # (description, (S,) float32 audio)


@dataclasses.dataclass(frozen=True)
class Tools:
    """The makers of versions (module-level functions, so that workers can receive them).

    ``real_versions(y, sr, rng, other=None, n=3)`` -> versions (``audio_fx``);
    ``load_transcriber()`` -> an object with ``notes(audio, sr)`` -> ``(N, 4)`` onset s,
    offset s, MIDI key, velocity; ``render_transcription(notes, rng, sample_rate=)`` ->
    versions (``transcribe``). The transcription pair is None when no renders are made.
    """

    real_versions: Callable[..., Versions]
    load_transcriber: Callable[[], Any] | None = None
    render_transcription: Callable[..., Versions] | None = None


def default_tools(transcribe: bool) -> Tools:
    """The project's makers of versions; ImportError (with the way to install them) if
    ``transcribe`` and basic-pitch or onnxruntime is missing."""
    from .audio_fx import real_versions

    if not transcribe:
        return Tools(real_versions)
    from .transcribe import load_transcriber, render_transcription

    load_transcriber()  # fails here, before any work, when it is not installed
    return Tools(real_versions, load_transcriber, render_transcription)


@dataclasses.dataclass(frozen=True)
class RealTask:
    """What a worker needs to make one recording's part."""

    recording: Recording
    other: Recording | None  # mixed under its real versions
    split: str
    recipe: dict  # RealSpec.recipe()
    cfg: FeatureConfig
    tools: Tools
    part: Path


def part_name(key: str, digest: str) -> str:
    return f"{key[:20]}-{digest[:12]}.npz"


def make_part(task: RealTask) -> tuple[str, str | None]:
    """Make and save the part of ``task``'s recording; ``(recording key, error or None)``."""
    try:
        records, arrays = recording_cliques(task)
        with atomic_open(task.part) as f:
            np.savez(f, records=np.frombuffer(json.dumps(records).encode("utf-8"), np.uint8),
                     **arrays)
    except Exception as err:  # noqa: BLE001 - a recording that fails is reported, the others go on
        return task.recording.key, " ".join(f"{type(err).__name__}: {err}".split())[:500]
    return task.recording.key, None


_TRANSCRIBERS: dict[Callable, Any] = {}  # one loaded model per worker process


def recording_cliques(task: RealTask) -> tuple[dict[str, list[dict]], dict[str, np.ndarray]]:
    """The cliques of one recording: ``{clique_id: [record]}`` and ``{youtube_id: (T',
    n_bins) float32 pooled CQT}``. Cliques left with fewer than two versions are dropped."""
    recipe, cfg, key = task.recipe, task.cfg, task.recording.key
    sr = cfg.sample_rate
    mix, backing = decode_recording(task.recording, sr)
    other = None
    if task.other is not None and recipe["fx_versions"] > 0:
        other = decode_recording(task.other, sr)[0]
    bounds = segment_bounds(len(mix), sr, tuple(recipe["segment_seconds"]),
                            np.random.default_rng(stable_int("segments", recipe["seed"], key)))
    chosen = set(range(len(bounds)))
    if recipe["max_segments"] and len(bounds) > recipe["max_segments"]:  # spread over the recording
        chosen = {int(i) for i in np.linspace(0, len(bounds) - 1, recipe["max_segments"]).round()}
    records: dict[str, list[dict]] = {}
    arrays: dict[str, np.ndarray] = {}
    for k, (a, b) in enumerate(bounds):
        if k not in chosen:
            continue
        if _dbfs(mix[a:b]) < SILENT_DBFS:
            log.info("%s segment %d: near-silent (RMS below %g dBFS), dropped", key[:12], k + 1,
                     SILENT_DBFS)
            continue
        versions = segment_versions(task, k, mix[a:b], None if backing is None else backing[a:b],
                                    other)
        clique = f"R-{key[:12]}-{k + 1:03d}"
        kept = _pooled_versions(task, clique, k, a / sr, versions, arrays)
        if len(kept) >= 2:
            records[clique] = kept
        else:
            for v in kept:
                del arrays[v["youtube_id"]]
    return records, arrays


def segment_versions(task: RealTask, k: int, segment: np.ndarray, backing: np.ndarray | None,
                     other: np.ndarray | None) -> Versions:
    """The versions of segment ``k``: itself, its real versions, its transcription's renders
    and, for a song with stems, its mix without the guitar (each ``(S,)`` float32 at the
    feature sample rate)."""
    recipe, tools, sr, key = task.recipe, task.tools, task.cfg.sample_rate, task.recording.key
    versions: Versions = [("real", segment)]
    if recipe["fx_versions"] > 0:
        rng = np.random.default_rng(stable_int("fx", recipe["seed"], key, k))
        under = None if other is None else _excerpt(other, len(segment), rng)
        versions += tools.real_versions(segment, sr, rng, other=under, n=recipe["fx_versions"])
    if recipe["renders"] > 0 and tools.load_transcriber is not None:
        versions += _renders(task, k, segment)
    if backing is not None:
        versions.append(("mix without the guitar stem", backing))
    return versions


def _renders(task: RealTask, k: int, segment: np.ndarray) -> Versions:
    """``renders`` renders of the segment's transcription (none for a transcription of
    fewer than ``MIN_NOTES`` notes, or a silent render)."""
    tools, sr = task.tools, task.cfg.sample_rate
    if tools.load_transcriber not in _TRANSCRIBERS:
        _TRANSCRIBERS[tools.load_transcriber] = tools.load_transcriber()
    notes = _TRANSCRIBERS[tools.load_transcriber].notes(segment, sr)
    if len(notes) < MIN_NOTES:
        log.info("%s segment %d: %d notes transcribed, not rendered", task.recording.key[:12],
                 k + 1, len(notes))
        return []
    rng = np.random.default_rng(stable_int("render", task.recipe["seed"], task.recording.key, k))
    try:
        renders = tools.render_transcription(notes, rng, sample_rate=sr)
    except ValueError as err:  # a silent render
        log.info("%s segment %d: %s", task.recording.key[:12], k + 1, err)
        return []
    return renders[: task.recipe["renders"]]


def _pooled_versions(task: RealTask, clique: str, k: int, start_s: float, versions: Versions,
                     arrays: dict[str, np.ndarray]) -> list[dict]:
    """Pool the CQT of each version into ``arrays``; the records of those that have one."""
    f, cfg, sr = task.recording.main, task.cfg, task.cfg.sample_rate
    kept = []
    for i, (description, audio) in enumerate(versions):
        yid = youtube_id(task.recipe["seed"], f"real:{task.recording.key}:{k}", i)
        try:
            pooled = pool_cqt(checked_cqt(np.asarray(audio, dtype=np.float32), cfg),
                              cfg.downsample_factor)  # (T', n_bins)
        except AudioError as err:
            log.info("%s version %d (%s): %s", clique, i + 1, description, err)
            continue
        if pooled.shape[0] == 0:
            continue
        arrays[yid] = pooled
        kept.append({"version_id": f"{clique}-V{i + 1}", "youtube_id": yid, "kind": description,
                     "source": f"debian:{f.package}", "file": f.path, "licence": f.licence,
                     "recording": task.recording.key, "segment": k + 1,
                     "start_s": round(start_s, 3), "duration_s": round(len(audio) / sr, 3),
                     "split": task.split, "generator": GENERATOR,
                     "generator_version": task.recipe["generator_version"]})
    return kept


def decode_recording(recording: Recording, sample_rate: int
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """``(mix, backing)``: a recording as ``(N,)`` float32 mono at ``sample_rate``; for a
    song with stems, their sum and the sum of all but the guitar (else None), scaled alike
    to a peak of at most 1."""
    stems = [(f.stem, decode(f.path, sample_rate, RAW_FORMATS.get(f.package)))
             for f in recording.files]
    if len(stems) == 1:
        return stems[0][1], None
    n = max(len(y) for _, y in stems)
    padded = [(stem, np.pad(y, (0, n - len(y)))) for stem, y in stems]
    mix = np.sum([y for _, y in padded], axis=0)
    backing = np.sum([y for stem, y in padded if stem != FOF_GUITAR], axis=0)
    scale = max(1.0, float(np.abs(mix).max()))
    return (mix / scale).astype(np.float32), (backing / scale).astype(np.float32)


def _excerpt(audio: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of ``audio`` from a random start (repeated when it is shorter)."""
    if len(audio) <= n:
        return np.resize(audio, n)
    start = int(rng.integers(0, len(audio) - n + 1))
    return audio[start:start + n]


def _dbfs(y: np.ndarray) -> float:
    """RMS level in dB re full scale (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) if len(y) else 0.0
    return 20 * np.log10(rms) if rms > 0 else -np.inf
