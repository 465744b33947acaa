"""The training dataset (random crops of stored versions) and its clique-balanced batch sampler.

Versions come from ``io.metadata``; their features from a feature source
(``features.pooled.open_features``): a pooled store or the authors' memmap layout. Both give pooled ``(T', n_bins)`` frames, so crops and windows
are counted in pooled frames and start on the pooling grid.

Batches hold ``cliques_per_batch`` distinct cliques x ``versions_per_clique`` versions; see
``CliqueBatchSampler`` for how an epoch is built.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import AugmentConfig, FeatureConfig
from ..features.frontend import model_input
from ..features.pooled import FeatureSource, open_features
from ..io.metadata import Cliques, Version
from .augment import augment


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


def random_crop(cqt: np.ndarray, length: int, rng: np.random.Generator,
                min_length: int = 0) -> np.ndarray:
    """A random ``(length, n_bins)`` window of a ``(T, n_bins)`` CQT; shorter ones are kept whole.

    ``min_length > 0`` first draws the window length uniformly from ``[min_length, length]``,
    so that whole short tracks also yield partial excerpts.
    """
    if min_length:
        length = int(rng.integers(min_length, length + 1))
    start = int(rng.integers(0, cqt.shape[0] - length + 1)) if cqt.shape[0] > length else 0
    return cqt[start : start + length]
