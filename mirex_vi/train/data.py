"""The training dataset (random crops of stored versions) and its clique-balanced batch sampler.

Versions come from ``io.metadata``; their features from a feature source
(``features.pooled.open_features``): a pooled store or the authors' memmap layout. Both give
pooled ``(T', n_bins)`` frames, so crops and windows are counted in pooled frames and start
on the pooling grid. A run may read several such stores (``TrainConfig.mix``): each version
is read from its own store, and each store's cliques are counted apart.

Batches hold ``cliques_per_batch`` distinct cliques x ``versions_per_clique`` versions; see
``CliqueBatchSampler`` for how an epoch is built, from one store or several.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import MAIN_SOURCE, AugmentConfig, FeatureConfig
from ..features.frontend import model_input
from ..features.pooled import FeatureSource, open_features
from ..io.metadata import Cliques, Version
from .augment import augment


# --- datasets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A further store of training cliques (``TrainDataset``'s ``extra``).

    Attributes:
        name: prefixes its clique ids (``name/clique_id``), e.g. ``mix.0``.
        cliques: its cliques; their versions are looked up in ``features`` only.
        features: a feature folder or source (``features.pooled.open_features``).
    """

    name: str
    cliques: Cliques
    features: str | Path | FeatureSource



class TrainDataset(Dataset):
    """Random crops of the versions of a set of cliques, from one store or several.

    ``cliques`` in ``features`` are the main source; each of ``extra`` adds a store, whose
    versions are read from it alone. Versions are numbered 0..N-1 in clique order (the main
    source's cliques, then each extra source's); ``labels[i]`` is the clique index of
    version i, ``version_source[i]`` the index of its source, ``members[c]`` the version
    indices of clique c, ``clique_source[c]`` the index of its source (0: the main one) and
    ``clique_ids[c]`` its id, prefixed by its source's name (``main/``, ``mix.0/``...) when
    there are several, so equal ids in two stores stay two cliques. An item is requested as
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
                 augment_cfg: AugmentConfig | None = None, extra: Sequence[Source] = ()):
        self.cfg = cfg
        self.augment_cfg = augment_cfg
        self.sources: list[FeatureSource] = []
        self.versions: list[Version] = []
        self.members: list[list[int]] = []
        self.clique_ids: list[str] = []
        self.clique_source: list[int] = []
        for s, part in enumerate([Source(MAIN_SOURCE, cliques, features), *extra]):
            self.sources.append(open_features(part.features, cfg.downsample_factor))
            prefix = f"{part.name}/" if extra else ""
            for cid, versions in part.cliques.items():
                start = len(self.versions)
                self.versions.extend(versions)
                self.members.append(list(range(start, len(self.versions))))
                self.clique_ids.append(prefix + cid)
                self.clique_source.append(s)
        self.labels = np.repeat(np.arange(len(self.members)), [len(m) for m in self.members])
        self.version_source = np.asarray(self.clique_source, dtype=np.int64)[self.labels]

    def __len__(self) -> int:
        return len(self.versions)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, seed = item
        k = self.cfg.downsample_factor
        length = self.cfg.crop_frames // k
        rng = np.random.default_rng(seed)
        source = self.sources[self.version_source[index]]
        pooled = source.pooled(self.versions[index].youtube_id)  # (T', F)
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

    **Several sources** (``clique_source[c]``, the source of clique c, and ``shares``; source
    0 is the main one). Every batch holds ``floor(share_s * P)`` cliques of each source s;
    the R slots this leaves (R = P minus their sum) are dealt over the epoch's batches by
    share, by largest remainders, at most one per source and batch, to batches drawn at
    random. So a batch holds ``floor`` or ``ceil`` of ``share_s * P`` cliques of source s
    (exactly ``share_s * P`` where that is whole), and over an epoch each source has its
    share of the slots to within one clique. An epoch is one pass over the main source:
    its groups (steps 1-2) fill its slots of the fewest batches that hold them all. Each
    extra source is an endless stream of such passes (pass j seeded by ``(seed, j,
    source)``) that runs on from epoch to epoch: epoch e takes the next ``t_s`` groups, its
    slots per epoch, so a small source comes round several times per epoch and a large one
    takes several epochs per pass, and a resumed run takes the same groups. Each source
    fills its slots as in step 3; should a main group still wait after the last batch,
    further batches follow with the same counts per source, and an extra source's groups
    still waiting are skipped.

    Yields lists of ``(version index, crop seed)``, P*K long, grouped by clique.
    """

    def __init__(self, members: Sequence[Sequence[int]], cliques_per_batch: int,
                 versions_per_clique: int, seed: int, rank: int = 0, world_size: int = 1,
                 clique_source: Sequence[int] | None = None, shares: Sequence[float] = (1.0,)):
        if any(len(m) < 1 for m in members) or versions_per_clique < 1:
            raise ValueError("every clique needs a version and versions_per_clique must be >= 1")
        source = [0] * len(members) if clique_source is None else [int(s) for s in clique_source]
        if len(source) != len(members) or not set(source) <= set(range(len(shares))):
            raise ValueError("clique_source must give every clique a source below len(shares)")
        if min(shares) <= 0 or abs(sum(shares) - 1.0) > 1e-6:
            raise ValueError(f"shares must be > 0 and sum to 1, got {list(shares)}")
        self.members = [list(m) for m in members]
        self.p = cliques_per_batch
        self.k = versions_per_clique
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.shares = [float(s) for s in shares]
        self.cliques_of = [[c for c, s in enumerate(source) if s == i] for i in range(len(shares))]
        self.n_groups = [sum(math.ceil(len(self.members[c]) / self.k) for c in cliques)
                         for cliques in self.cliques_of]
        self.base, left = _whole_slots(self.shares, self.p)  # (S,) each
        self._check_sizes(cliques_needed(self.shares, self.p))
        if len(shares) == 1:
            self.batches_per_epoch = math.ceil(self.n_groups[0] / self.p)
            self.per_epoch = [self.n_groups[0]]
        else:
            self.batches_per_epoch, self.per_epoch = self._epoch_size(left)

    def _check_sizes(self, most: np.ndarray) -> None:
        """Each source must hold the ``most`` ``(S,)`` distinct cliques a batch takes of it."""
        for s, (cliques, need) in enumerate(zip(self.cliques_of, most.tolist())):
            if len(cliques) >= need:
                continue
            if len(self.cliques_of) == 1:
                raise ValueError(f"{len(cliques)} cliques cannot fill batches of {self.p} "
                                 "distinct cliques")
            raise ValueError(f"source {s}: {len(cliques)} cliques cannot fill its {need} of each "
                             f"batch's {self.p} distinct cliques (share {self.shares[s]:g})")

    def _epoch_size(self, left: np.ndarray) -> tuple[int, list[int]]:
        """The fewest batches B whose main slots hold the main source's groups, and each
        source's slots in B batches: ``base * B`` plus its part of the ``R * B`` left."""
        r = self.p - int(self.base.sum())

        def slots(b: int) -> np.ndarray:  # (S,)
            return self.base * b + _apportion(left, r * b)

        main = self.n_groups[0]
        b = max(1, math.floor((main - 1) / (self.shares[0] * self.p)))  # slots(b - 1) < main
        while slots(b)[0] < main:
            b += 1
        return b, slots(b).tolist()

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
        groups = self._groups(rng, self.cliques_of[0])  # (clique, [K version indices]) in key order
        if len(self.cliques_of) == 1:
            batches = self._pack(groups, groups, itertools.repeat(self.p), rng)
        else:
            batches = self._mixed(groups, epoch, rng)
        pad = -len(batches) % self.world_size
        batches += batches[:pad]
        return [[i for _, group in batch for i in group] for batch in batches]

    def _mixed(self, main: list[Group], epoch: int, rng: np.random.Generator) -> list[list[Group]]:
        """The batches of an epoch of several sources, each source's groups packed into its
        slots of every batch (main first)."""
        counts = self._slot_plan(rng).T.tolist()  # (S, B)
        columns = [self._pack(main, main, itertools.cycle(counts[0]), rng, len(counts[0]))]
        n = len(columns[0])
        for s in range(1, len(self.cliques_of)):
            groups, passes = self._stream(s, epoch)
            columns.append(self._pack(groups, passes, itertools.cycle(counts[s]), rng, n, n))
        return [[g for part in parts for g in part] for parts in zip(*columns)]

    def _slot_plan(self, rng: np.random.Generator) -> np.ndarray:
        """``(B, S)`` cliques of each source in each batch: ``base``, plus the left slots
        dealt in source order to batches 0..B-1, 0..B-1, ... (a source's left slots number
        at most B, so no batch gets two of one source), then the batches shuffled."""
        b = self.batches_per_epoch
        left = np.asarray(self.per_epoch) - self.base * b  # (S,)
        dealt = np.repeat(np.arange(len(left)), left)  # (R * B,)
        counts = np.tile(self.base, (b, 1))
        for i in range(0, len(dealt), b):
            counts[np.arange(b), dealt[i : i + b]] += 1
        return counts[rng.permutation(b)]

    def _stream(self, s: int, epoch: int) -> tuple[list[Group], list[Group]]:
        """Extra source ``s``'s groups of ``epoch`` (its stream from ``epoch * t_s`` on), and
        the whole passes they come from (every clique of the source, to top up from)."""
        t, g = self.per_epoch[s], self.n_groups[s]
        start = epoch * t
        first, last = start // g, max(start, start + t - 1) // g
        passes = [group for j in range(first, last + 1)
                  for group in self._groups(np.random.default_rng([self.seed, j, 2, s]),
                                            self.cliques_of[s])]
        offset = start - first * g
        return passes[offset : offset + t], passes

    def _groups(self, rng: np.random.Generator, cliques: Iterable[int]) -> list[Group]:
        keyed = []
        for c in cliques:
            order = rng.permutation(self.members[c]).tolist()
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

    @staticmethod
    def _pack(groups: list[Group], pool: list[Group], sizes: Iterator[int],
              rng: np.random.Generator, at_least: int = 0,
              at_most: int | None = None) -> list[list[Group]]:
        """``groups`` in order into batches of ``next(sizes)`` distinct cliques, until they
        are all placed (or ``at_most`` batches), and at least ``at_least`` batches; a batch
        short of groups is topped up with random ones of ``pool`` (which must hold enough
        cliques)."""
        batches: list[list[Group]] = []
        pending = deque(groups)
        while (pending and (at_most is None or len(batches) < at_most)) or len(batches) < at_least:
            size = next(sizes)
            batch, seen, waiting = [], set(), []
            while pending and len(batch) < size:
                g = pending.popleft()
                (waiting if g[0] in seen else batch).append(g)
                seen.add(g[0])
            pending.extendleft(reversed(waiting))  # they lead the next batch
            while len(batch) < size:  # the end of the epoch: top up with other cliques
                g = pool[int(rng.integers(len(pool)))]
                if g[0] not in seen:
                    batch.append(g)
                    seen.add(g[0])
            batches.append(batch)
        return batches


Group = tuple[int, list[int]]  # a clique index and K of its version indices


def _whole_slots(shares: Sequence[float], p: int) -> tuple[np.ndarray, np.ndarray]:
    """Per source, the slots of every batch, ``floor(share * p)``, and the fraction left
    ``(S,)`` each (``share * p`` rounded to 9 decimals first: 0.7 * 10 is 7)."""
    exact = np.round(np.asarray(shares, dtype=np.float64) * p, 9)
    base = np.floor(exact).astype(np.int64)
    return base, exact - base


def cliques_needed(shares: Sequence[float], p: int) -> np.ndarray:
    """``(S,)`` the most cliques of each source that a batch of ``p`` takes:
    ``ceil(share * p)``."""
    base, left = _whole_slots(shares, p)
    return base + (left > 0)


def _apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """``total`` cut into ``(S,)`` integers in proportion to ``weights`` by largest
    remainders: each within one of its exact part."""
    if total == 0:
        return np.zeros(len(weights), dtype=np.int64)
    quota = weights / weights.sum() * total
    out = np.floor(quota).astype(np.int64)
    out[np.argsort(out - quota, kind="stable")[: total - int(out.sum())]] += 1
    return out


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
