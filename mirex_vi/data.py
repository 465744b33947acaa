"""Discogs-VI-YT metadata, the training dataset and its clique-balanced batch sampler.

Metadata (docs/REFERENCE.md §6) comes as the "light" JSON object (``.train/.val/.test``
splits) or as the full JSONL; both become ``{clique_id: [Version, ...]}``. Features are
looked up by YouTube id in a feature source (``pooled.open_features``): a pooled store or
the authors' memmap layout. Both give pooled ``(T', n_bins)`` frames, so crops and windows
are counted in pooled frames and start on the pooling grid.

Batches hold ``cliques_per_batch`` distinct cliques x ``versions_per_clique`` versions; see
``CliqueBatchSampler`` for how an epoch is built.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .augment import augment
from .config import AugmentConfig, FeatureConfig
from .features import model_input
from .featstore import random_crop
from .pooled import FeatureSource, open_features

log = logging.getLogger(__name__)

Cliques = dict[str, list["Version"]]


@dataclass(frozen=True)
class Version:
    """One version (track) of a clique; its features are stored under ``youtube_id``."""

    clique_id: str
    version_id: str
    youtube_id: str


# --- metadata -----------------------------------------------------------------------------


def read_metadata(path: str | Path) -> Cliques:
    """Read the light JSON (any split) or the JSONL into ``{clique_id: [Version, ...]}``.

    The format is told from the content: a first line that is a whole JSON object with a
    ``clique_id`` key means JSONL, anything else is read as one JSON object. In the JSONL
    the YouTube id is the ``v=`` parameter of the first ``youtube_video`` URL; versions
    without a video are skipped (and counted in the log).

    Raises:
        ValueError: naming the file, when it is not UTF-8 JSON or JSONL of that shape (a
            field missing or not a string, a YouTube id that cannot name a feature file).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        try:
            head = json.loads(first)
        except json.JSONDecodeError:
            head = None
        if isinstance(head, dict) and "clique_id" in head:
            cliques = _read_jsonl(path)
        else:
            with open(path, encoding="utf-8") as f:
                cliques = _read_light(json.load(f))
    except ValueError as err:  # not UTF-8, not JSON, or not of the shape above
        raise ValueError(f"{path}: not Discogs-VI-YT metadata ({err})") from err
    log.info("%s: %d cliques, %d versions", path.name, len(cliques), count_versions(cliques))
    return cliques


def _read_light(data: object) -> Cliques:
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object {clique_id: [versions]}")
    return {cid: [_version(cid, v, _text(v, "youtube_id", f"clique {cid!r}"))
                  for v in _versions(cid, versions)]
            for cid, versions in data.items()}


def _read_jsonl(path: Path) -> Cliques:
    cliques: Cliques = {}
    skipped = 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                cid = _text(row, "clique_id", "a row")
                cliques[cid] = []
                for v in _versions(cid, row.get("versions")):
                    videos = v.get("youtube_video") if isinstance(v, dict) else None
                    if not videos:
                        skipped += 1
                        continue
                    url = _text(videos[0] if isinstance(videos, list) else None, "url",
                                f"clique {cid!r}")
                    cliques[cid].append(_version(cid, v, youtube_id_from_url(url)))
            except ValueError as err:
                raise ValueError(f"line {number}: {err}") from err
    if skipped:
        log.info("%s: %d versions have no YouTube video and were skipped", path.name, skipped)
    return cliques


def _versions(clique_id: str, versions: object) -> list:
    if not isinstance(versions, list):
        raise ValueError(f"clique {clique_id!r}: expected a list of versions")
    return versions


def _text(record: object, key: str, where: str) -> str:
    """``record[key]``, which must be a non-empty string (``where`` names the record)."""
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {key!r} missing or not a non-empty string")
    return value


def _version(clique_id: str, record: object, youtube_id: str) -> Version:
    """The version ``record`` of a clique; its YouTube id must be usable as a file name
    (features are stored as ``<id[:2]>/<id>.mm``): no ``/``, control character or leading dot."""
    if youtube_id.startswith(".") or any(c in youtube_id for c in "/\0\t\n\r"):
        raise ValueError(f"clique {clique_id!r}: youtube_id {youtube_id!r} cannot name a "
                         "feature file")
    return Version(clique_id, _text(record, "version_id", f"clique {clique_id!r}"), youtube_id)


def youtube_id_from_url(url: str) -> str:
    """``https://www.youtube.com/watch?v=ID[&...]`` -> ``ID``.

    Raises:
        ValueError: the URL carries no ``v=`` parameter.
    """
    from urllib.parse import parse_qs, urlparse

    ids = parse_qs(urlparse(url).query).get("v")
    if not ids or not ids[0]:
        raise ValueError(f"no YouTube id in URL {url!r}")
    return ids[0]


def count_versions(cliques: Cliques) -> int:
    return sum(len(v) for v in cliques.values())


def filter_available(cliques: Cliques, features: str | Path | FeatureSource) -> Cliques:
    """Drop versions without stored features, then cliques left with fewer than 2 versions.

    ``features`` is a feature source or a folder (``pooled.open_features``).
    """
    source = open_features(features, downsample_factor=1)  # the factor plays no part in has()
    kept: Cliques = {}
    n_missing = 0
    for cid, versions in cliques.items():
        present = [v for v in versions if source.has(v.youtube_id)]
        n_missing += len(versions) - len(present)
        if len(present) >= 2:
            kept[cid] = present
    n_dropped_versions = count_versions(cliques) - count_versions(kept)
    log.info(
        "features: %d versions missing; dropped %d cliques (%d versions) with < 2 versions left; "
        "kept %d cliques, %d versions",
        n_missing, len(cliques) - len(kept), n_dropped_versions - n_missing,
        len(kept), count_versions(kept),
    )
    return kept


# --- datasets ----------------------------------------------------------------------------


class TrainDataset(Dataset):
    """Random crops of the versions of a set of cliques.

    Versions are numbered 0..N-1 in clique order; ``labels[i]`` is the clique index of
    version i and ``members[c]`` the version indices of clique c. An item is requested as
    ``(version index, crop seed)`` (what ``CliqueBatchSampler`` yields), so crops do not
    depend on which worker loads them.

    Returns ``(x, clique index, version index)``, x ``(n_bins, L)`` float32 with
    ``L = crop_frames // downsample_factor``: a random window of L pooled frames (or of a
    random length from ``min_crop_frames // downsample_factor`` up, when set), augmented
    when ``augment_cfg`` is given (a stretched crop longer than L is cut to a random
    window of L), zero-padded to L, clipped and max-normalised. For a long track this is
    ``preprocess`` of a ``crop_frames`` window that starts on a multiple of the factor.
    """

    def __init__(self, cliques: Cliques, features: str | Path | FeatureSource, cfg: FeatureConfig,
                 augment_cfg: AugmentConfig | None = None):
        self.source = open_features(features, cfg.downsample_factor)
        self.cfg = cfg
        self.augment_cfg = augment_cfg
        self.versions: list[Version] = []
        self.members: list[list[int]] = []
        for versions in cliques.values():
            start = len(self.versions)
            self.versions.extend(versions)
            self.members.append(list(range(start, len(self.versions))))
        self.labels = np.repeat(np.arange(len(self.members)), [len(m) for m in self.members])

    def __len__(self) -> int:
        return len(self.versions)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, seed = item
        k = self.cfg.downsample_factor
        length = self.cfg.crop_frames // k
        rng = np.random.default_rng(seed)
        pooled = self.source.pooled(self.versions[index].youtube_id)  # (T', F)
        crop = random_crop(pooled, length, rng, self.cfg.min_crop_frames // k)
        if self.augment_cfg is not None:
            crop = random_crop(augment(crop, rng, self.augment_cfg), length, rng)
        x = model_input(crop, length, self.cfg.eps)  # (F, L)
        return torch.from_numpy(x), int(self.labels[index]), index


class FullTrackDataset(Dataset):
    """Whole tracks for validation, zero-padded to ``min_frames // downsample_factor``.

    ``max_frames > 0`` keeps only a window of ``max_frames // downsample_factor`` pooled
    frames: centred (validation, for speed) or, with ``from_start``, the first ones (an
    excerpt). Returns ``(x (n_bins, T') float32 numpy, clique index)``.

    Where this differs from ``preprocess`` (inference): a track shorter than ``min_frames``
    whose length is not a multiple of the factor. ``preprocess`` pads before pooling, so
    its last pooled frame averages the track's last frames with padding zeros; here the
    partial pool is dropped and that frame is 0. Any other track gives the same input.
    """

    def __init__(self, cliques: Cliques, features: str | Path | FeatureSource,
                 cfg: FeatureConfig, max_frames: int = 0, from_start: bool = False):
        self.source = open_features(features, cfg.downsample_factor)
        self.cfg = cfg
        self.max_frames = max_frames
        self.from_start = from_start
        self.versions = [v for versions in cliques.values() for v in versions]
        self.labels = np.repeat(np.arange(len(cliques)), [len(v) for v in cliques.values()])

    def __len__(self) -> int:
        return len(self.versions)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        k = self.cfg.downsample_factor
        pooled = self.source.pooled(self.versions[index].youtube_id)  # (T', F)
        window = self.max_frames // k
        if 0 < window < pooled.shape[0]:
            start = 0 if self.from_start else (pooled.shape[0] - window) // 2
            pooled = pooled[start : start + window]
        return model_input(pooled, self.cfg.min_frames // k, self.cfg.eps), int(self.labels[index])


# --- sampler -----------------------------------------------------------------------------


class CliqueBatchSampler:
    """Batches of ``cliques_per_batch`` distinct cliques x ``versions_per_clique`` versions.

    Design (one epoch, seeded by ``(seed, epoch)``):

    1. Each clique's versions are shuffled and cut into groups of K = ``versions_per_clique``.
       A last group shorter than K is filled from the clique's other versions (without
       replacement while possible), so a clique with fewer than K versions repeats some.
       Every version is therefore the *primary* member of exactly one group per epoch: it
       is sampled once, and is the anchor of one triplet; fillers are extra samples.
    2. Each group gets a sort key ``(j + u) / m_c`` (its index j among the m_c groups of
       its clique, u uniform), which spreads a clique's groups evenly over the epoch.
    3. Groups are taken in key order into batches of P = ``cliques_per_batch``; a group
       whose clique is already in the batch waits for the next one. A batch that cannot be
       completed (the end of the epoch) is topped up with random groups of other cliques.
    4. The batch list is padded (by repeating its first batches) to a multiple of
       ``world_size`` and rank r takes batches r, r + world_size, ...

    So an epoch has ``ceil(G / P)`` batches, G = sum_c ceil(n_c / K) >= N / K: equal to
    ``ceil(N / (P K))`` when every clique size is a multiple of K, longer when small cliques
    need fillers. With several processes each one draws full P x K batches (P is per
    process, like DistributedSampler's batch size).

    Yields lists of ``(version index, crop seed)``, P*K long, grouped by clique.
    """

    def __init__(self, members: Sequence[Sequence[int]], cliques_per_batch: int,
                 versions_per_clique: int, seed: int, rank: int = 0, world_size: int = 1):
        if len(members) < cliques_per_batch:
            raise ValueError(
                f"{len(members)} cliques cannot fill batches of {cliques_per_batch} distinct cliques"
            )
        if any(len(m) < 1 for m in members) or versions_per_clique < 1:
            raise ValueError("every clique needs a version and versions_per_clique must be >= 1")
        self.members = [list(m) for m in members]
        self.p = cliques_per_batch
        self.k = versions_per_clique
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        n_groups = sum(math.ceil(len(m) / self.k) for m in self.members)
        self.batches_per_epoch = math.ceil(n_groups / self.p)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches this rank draws per epoch."""
        return math.ceil(self.batches_per_epoch / self.world_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        batches = self.epoch_batches(self.epoch)
        # Crop seeds: one draw for the whole epoch, so every rank agrees on them.
        seeds = rng.integers(0, 2**63 - 1, size=(len(batches), self.p * self.k))
        for b in range(self.rank, len(batches), self.world_size):
            yield list(zip(batches[b], seeds[b].tolist()))

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of an epoch (version indices), padded to a multiple of ranks."""
        rng = np.random.default_rng([self.seed, epoch, 0])
        groups = self._groups(rng)  # (clique, [K version indices]) in key order
        batches = self._pack(groups, rng)
        pad = -len(batches) % self.world_size
        batches += batches[:pad]
        return [[i for _, group in batch for i in group] for batch in batches]

    def _groups(self, rng: np.random.Generator) -> list[tuple[int, list[int]]]:
        keyed = []
        for c, versions in enumerate(self.members):
            order = rng.permutation(versions).tolist()
            m = math.ceil(len(order) / self.k)
            offsets = rng.random(m)
            for j in range(m):
                group = order[j * self.k : (j + 1) * self.k]
                group += self._fillers(order, group, rng)
                keyed.append(((j + offsets[j]) / m, c, group))
        keyed.sort(key=lambda t: t[0])
        return [(c, group) for _, c, group in keyed]

    def _fillers(self, versions: list[int], group: list[int], rng: np.random.Generator) -> list[int]:
        """Versions to complete a group to K: others of the clique first, then repeats."""
        need = self.k - len(group)
        out: list[int] = []
        while need > 0:
            others = [v for v in versions if v not in group and v not in out] or versions
            take = rng.choice(others, size=min(need, len(others)), replace=False).tolist()
            out += take
            need -= len(take)
        return out

    def _pack(self, groups: list[tuple[int, list[int]]],
              rng: np.random.Generator) -> list[list[tuple[int, list[int]]]]:
        batches = []
        pending = deque(groups)
        while pending:
            batch, seen, waiting = [], set(), []
            while pending and len(batch) < self.p:
                g = pending.popleft()
                (waiting if g[0] in seen else batch).append(g)
                seen.add(g[0])
            pending.extendleft(reversed(waiting))  # they lead the next batch
            while len(batch) < self.p:  # the end of the epoch: top up with other cliques
                g = groups[int(rng.integers(len(groups)))]
                if g[0] not in seen:
                    batch.append(g)
                    seen.add(g[0])
            batches.append(batch)
        return batches


def make_train_loader(dataset: TrainDataset, sampler: CliqueBatchSampler, num_workers: int,
                      pin_memory: bool = False) -> DataLoader:
    """A DataLoader yielding ``(x (B, F, T'), labels (B,), version indices (B,))``."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
