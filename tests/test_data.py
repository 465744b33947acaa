"""Metadata readers, feature filtering, the training dataset and the clique batch sampler, from
one store or several."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import random_store

from mirex_vi.config import AugmentConfig, FeatureConfig
from mirex_vi.features.frontend import preprocess
from mirex_vi.features.layout import load_feature, save_feature
from mirex_vi.features.pooled import filter_available
from mirex_vi.features.pooled import convert_features, layout_ids
from mirex_vi.features.stored import FullTrackDataset
from mirex_vi.io.metadata import Version, read_metadata, youtube_id_from_url
from mirex_vi.train.data import CliqueBatchSampler, Source, TrainDataset, make_train_loader

LIGHT = {
    "C-0000001": [
        {"version_id": "V-1", "youtube_id": "aaaaaaaaaaa", "track_title": "Song"},
        {"version_id": "V-2", "youtube_id": "bbbbbbbbbbb", "track_title": "Song (live)"},
    ],
    "C-0000002": [{"version_id": "V-3", "youtube_id": "ccccccccccc", "track_title": "Other"}],
}


def _jsonl_row(cid, versions):
    return {"clique_id": cid, "versions": [
        {"version_id": vid, "tracks": [{"track_title": "t"}],
         "youtube_video": [{"url": f"https://www.youtube.com/watch?v={yt}&t=3", "source": "d"}]
         if yt else []}
        for vid, yt in versions]}


def test_read_light_json_split(tmp_path):
    path = tmp_path / "Discogs-VI-YT-20240701-light.json.train"
    path.write_text(json.dumps(LIGHT, indent=2))
    cliques = read_metadata(path)
    assert list(cliques) == ["C-0000001", "C-0000002"]
    assert cliques["C-0000001"][1] == Version("C-0000001", "V-2", "bbbbbbbbbbb")


def test_read_light_json_on_one_line(tmp_path):
    path = tmp_path / "light.json"
    path.write_text(json.dumps(LIGHT))
    assert [v.youtube_id for v in read_metadata(path)["C-0000002"]] == ["ccccccccccc"]


def test_read_jsonl_takes_first_video_and_skips_versions_without(tmp_path):
    rows = [_jsonl_row("C-1", [("V-1", "xxxxxxxxxxx"), ("V-2", None)]),
            _jsonl_row("C-2", [("V-3", "yyyyyyyyyyy"), ("V-4", "zzzzzzzzzzz")])]
    path = tmp_path / "Discogs-VI-YT-20240701.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    cliques = read_metadata(path)
    assert cliques["C-1"] == [Version("C-1", "V-1", "xxxxxxxxxxx")]
    assert [v.youtube_id for v in cliques["C-2"]] == ["yyyyyyyyyyy", "zzzzzzzzzzz"]


def test_youtube_id_from_url():
    assert youtube_id_from_url("https://www.youtube.com/watch?v=dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    with pytest.raises(ValueError):
        youtube_id_from_url("https://www.youtube.com/watch?list=abc")


def test_filter_available_drops_missing_versions_then_small_cliques(tmp_path, caplog):
    cliques = {
        "C-1": [Version("C-1", f"V-{i}", f"id{i}xxxxxxxx") for i in range(3)],  # 1 missing
        "C-2": [Version("C-2", f"V-{i}", f"id{i}yyyyyyyy") for i in range(3, 5)],  # 1 missing
        "C-3": [Version("C-3", "V-5", "id5zzzzzzzz"), Version("C-3", "V-6", "id6zzzzzzzz")],
    }
    for yt in ["id0xxxxxxxx", "id1xxxxxxxx", "id3yyyyyyyy", "id5zzzzzzzz", "id6zzzzzzzz"]:
        save_feature(tmp_path, yt, np.ones((30, 84)))
    with caplog.at_level("INFO", logger="mirex_vi.features.pooled"):
        kept = filter_available(cliques, tmp_path)
    assert list(kept) == ["C-1", "C-3"]
    assert [v.version_id for v in kept["C-1"]] == ["V-0", "V-1"]
    assert "2 versions missing" in caplog.text
    assert "dropped 1 cliques (1 versions)" in caplog.text


# --- sampler -------------------------------------------------------------------------------

SIZES = [2, 3, 4, 5, 7, 9, 2, 2, 3, 12, 4, 6]


def _members(sizes):
    out, start = [], 0
    for n in sizes:
        out.append(list(range(start, start + n)))
        start += n
    return out


def _clique_of(members):
    return {v: c for c, m in enumerate(members) for v in m}


def test_batches_hold_distinct_cliques_with_k_versions_each():
    members = _members(SIZES)
    clique_of = _clique_of(members)
    p, k = 4, 4
    sampler = CliqueBatchSampler(members, p, k, seed=3)
    batches = sampler.epoch_batches(0)
    n_groups = sum(math.ceil(n / k) for n in SIZES)
    assert len(batches) == len(sampler) == math.ceil(n_groups / p)
    assert len(batches) >= math.ceil(sum(SIZES) / (p * k))
    for batch in batches:
        assert len(batch) == p * k
        groups = [batch[i : i + k] for i in range(0, len(batch), k)]
        cliques = [{clique_of[v] for v in g} for g in groups]
        assert all(len(c) == 1 for c in cliques)  # a group is one clique
        assert len({c.pop() for c in cliques}) == p  # p distinct cliques
        for g in groups:  # repeats inside a group only when the clique is smaller than k
            size = len(members[clique_of[g[0]]])
            assert len(set(g)) == min(size, k)


def test_every_version_is_sampled_in_each_epoch():
    members = _members(SIZES)
    sampler = CliqueBatchSampler(members, 4, 4, seed=0)
    for epoch in range(3):
        counts = Counter(v for b in sampler.epoch_batches(epoch) for v in b)
        assert set(counts) == set(range(sum(SIZES)))


def test_each_version_is_primary_once_when_sizes_are_multiples_of_k():
    """No filler needed: every version appears exactly once, in ceil(N / (P K)) batches."""
    sizes = [2, 4, 2, 6, 2, 2, 4, 2]
    sampler = CliqueBatchSampler(_members(sizes), 3, 2, seed=1)
    batches = sampler.epoch_batches(0)
    assert len(batches) == math.ceil(sum(sizes) / (3 * 2))
    counts = Counter(v for b in batches[:-1] for v in b)  # the last batch may be topped up
    counts_all = Counter(v for b in batches for v in b)
    assert max(counts.values()) == 1
    assert set(counts_all) == set(range(sum(sizes)))


def test_epochs_differ_and_are_reproducible():
    members = _members(SIZES)
    a = CliqueBatchSampler(members, 4, 4, seed=5)
    b = CliqueBatchSampler(members, 4, 4, seed=5)
    assert a.epoch_batches(2) == b.epoch_batches(2)
    assert a.epoch_batches(0) != a.epoch_batches(1)
    a.set_epoch(2)
    assert [[v for v, _ in batch] for batch in a] == a.epoch_batches(2)


def test_ranks_split_the_epoch():
    members = _members(SIZES)
    ranks = [CliqueBatchSampler(members, 3, 4, seed=7, rank=r, world_size=2) for r in range(2)]
    full = ranks[0].epoch_batches(0)
    assert len(full) % 2 == 0
    got = [[[v for v, _ in batch] for batch in s] for s in ranks]
    assert len(got[0]) == len(got[1]) == len(ranks[0])
    assert got[0] == full[0::2] and got[1] == full[1::2]


def test_too_few_cliques_is_an_error():
    with pytest.raises(ValueError, match="distinct cliques"):
        CliqueBatchSampler(_members([2, 3]), 3, 2, seed=0)


# Three sources: cliques 0-11 (SIZES) the main one, 12-29 and 30-37 two extra ones.
MIXED = SIZES + [3, 5, 2, 8, 4, 2, 6, 3, 2, 4, 7, 2, 3, 5, 2, 4, 6, 2] + [2, 9, 3, 4, 2, 6, 3, 5]
MIXED_SOURCE = [0] * len(SIZES) + [1] * 18 + [2] * 8


def _source_counts(members, sampler, batch, k):
    """Cliques of each source in one batch (version indices, K per group)."""
    clique_of = _clique_of(members)
    cliques = [clique_of[v] for v in batch[::k]]
    assert len(set(cliques)) == sampler.p  # distinct cliques, across sources too
    return Counter(MIXED_SOURCE[c] for c in cliques)


@pytest.mark.parametrize("p, shares", [(10, (0.5, 0.3, 0.2)), (7, (0.6, 0.25, 0.15)),
                                       (4, (0.7, 0.2, 0.1))])
def test_several_sources_fill_each_batch_and_the_epoch_in_their_shares(p, shares):
    members, k = _members(MIXED), 3
    sampler = CliqueBatchSampler(members, p, k, seed=2, clique_source=MIXED_SOURCE, shares=shares)
    total = Counter()
    for epoch in range(8):
        batches = sampler.epoch_batches(epoch)
        assert len(batches) == sampler.batches_per_epoch
        counts = [_source_counts(members, sampler, b, k) for b in batches]
        for s, share in enumerate(shares):  # per batch: floor or ceil of share * P, per epoch
            per_batch = {c[s] for c in counts}  # within one clique of share * P * batches
            assert per_batch <= {math.floor(share * p + 1e-9), math.ceil(share * p - 1e-9)}
            assert abs(sum(c[s] for c in counts) - share * p * len(batches)) < 1
            total[s] += sum(c[s] for c in counts)
        main = {v for b in batches for v in b if MIXED_SOURCE[_clique_of(members)[v]] == 0}
        assert main == set(range(sum(SIZES)))  # an epoch: every main version
    n = sum(total.values())
    assert [total[s] / n for s in range(3)] == pytest.approx(shares, abs=1 / (8 * p))
    if p == 10:  # whole shares: exactly 5, 3 and 2 of every batch
        assert all(_source_counts(members, sampler, b, k) == {0: 5, 1: 3, 2: 2}
                   for b in sampler.epoch_batches(3))


def test_an_extra_source_runs_through_whole_passes_across_epochs_and_resumes():
    members, k = _members(MIXED), 2

    def make():
        return CliqueBatchSampler(members, 6, k, seed=9, clique_source=MIXED_SOURCE,
                                  shares=(0.5, 0.3, 0.2))

    sampler = make()
    small = {v for c, s in enumerate(MIXED_SOURCE) if s == 2 for v in members[c]}
    groups_per_pass = sum(math.ceil(len(members[c]) / k) for c, s in enumerate(MIXED_SOURCE)
                          if s == 2)
    epochs = math.ceil(3 * groups_per_pass / sampler.per_epoch[2])  # three passes at least
    seen = Counter(v for e in range(epochs) for b in sampler.epoch_batches(e) for v in b
                   if v in small)
    assert set(seen) == small and min(seen.values()) >= 2
    assert make().epoch_batches(epochs - 1) == sampler.epoch_batches(epochs - 1)  # no state


@pytest.mark.parametrize("source, shares, message", [
    (MIXED_SOURCE, (0.5, 0.5), "source below len"),
    (MIXED_SOURCE, (0.5, 0.3, 0.3), "sum to 1"),
    ([0] * 36 + [1] * 2, (0.5, 0.5), "cliques cannot fill its 5 of each batch's 10"),
])
def test_several_sources_refuse_bad_shares_and_sources_too_small(source, shares, message):
    with pytest.raises(ValueError, match=message):
        CliqueBatchSampler(_members(MIXED), 10, 2, seed=0, clique_source=source, shares=shares)


# --- datasets ------------------------------------------------------------------------------


def test_train_dataset_crops_and_pads(tmp_path):
    cfg = FeatureConfig(crop_frames=200, downsample_factor=20)
    long = np.random.default_rng(0).random((1000, 84)).astype(np.float16)
    save_feature(tmp_path, "longlonglon", long)
    save_feature(tmp_path, "shortshorts", np.ones((50, 84)))
    cliques = {"C-1": [Version("C-1", "V-1", "longlonglon"), Version("C-1", "V-2", "shortshorts")]}
    ds = TrainDataset(cliques, tmp_path, cfg)
    x, label, index = ds[(0, 123)]
    assert x.shape == (84, 10) and label == 0 and index == 0
    assert np.array_equal(x.numpy(), ds[(0, 123)][0].numpy())  # the seed fixes the crop
    assert not np.array_equal(x.numpy(), ds[(0, 124)][0].numpy())
    x_short = ds[(1, 0)][0].numpy()
    assert x_short.shape == (84, 10)
    assert np.all(x_short[:, :2] > 0.99) and np.all(x_short[:, 3:] == 0)  # 50 frames, then pad


def test_a_dataset_of_two_stores_keeps_equal_ids_apart(tmp_path):
    """Both stores hold cliques C-0.. and youtube ids v0.. with other features."""
    cfg = FeatureConfig(crop_frames=2000)
    main, extra = random_store(tmp_path / "a", [3, 2], seed=1), random_store(tmp_path / "b", [2, 4])
    cliques = [read_metadata(d / "meta.json") for d in (main, extra)]
    ds = TrainDataset(cliques[0], main / "store", cfg, extra=[Source("mix.0", cliques[1],
                                                                     extra / "store")])
    assert ds.clique_ids == ["main/C-0", "main/C-1", "mix.0/C-0", "mix.0/C-1"]
    assert ds.clique_source == [0, 0, 1, 1] and ds.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    alone = TrainDataset(cliques[1], extra / "store", cfg)
    x, label, index = ds[(5, 42)]  # mix.0/C-0's first version, id v0xxxxxxxxx
    assert (label, index) == (2, 5) and torch.equal(x, alone[(0, 42)][0])
    assert not torch.equal(x, ds[(0, 42)][0])  # the main store's v0xxxxxxxxx


def test_full_track_dataset_caps_length(tmp_path):
    cfg = FeatureConfig(min_frames=100)
    save_feature(tmp_path, "aaaaaaaaaaa", np.ones((1000, 84)))
    save_feature(tmp_path, "bbbbbbbbbbb", np.ones((60, 84)))
    cliques = {"C-1": [Version("C-1", "V-1", "aaaaaaaaaaa"), Version("C-1", "V-2", "bbbbbbbbbbb")]}
    assert FullTrackDataset(cliques, tmp_path, cfg)[0][0].shape == (84, 50)
    capped = FullTrackDataset(cliques, tmp_path, cfg, max_frames=400)
    assert capped[0][0].shape == (84, 20)
    assert capped[1][0].shape == (84, 5)  # short track padded to min_frames
    assert capped.labels.tolist() == [0, 0]


# --- the pooled store beside the authors' layout ------------------------------------------------


def _two_sources(tmp_path, lengths, pool_constant):
    """The same CQTs in the authors' layout and in a float16 pooled store, and their cliques.

    ``pool_constant``: every pool of 20 frames holds one float16 value, so pooling is exact
    in float16 and both sources give identical pooled frames.
    """
    rng = np.random.default_rng(11)
    cliques = {}
    for i, n in enumerate(lengths):
        if pool_constant:
            cqt = np.repeat(rng.random((n // 20, 84)), 20, axis=0).astype(np.float16)
        else:
            cqt = rng.random((n, 84)).astype(np.float16)
        yt = f"v{i:02d}xxxxxxxx"
        save_feature(tmp_path / "layout", yt, cqt)
        cliques.setdefault(f"C-{i // 2}", []).append(Version(f"C-{i // 2}", f"V-{i}", yt))
    convert_features([tmp_path / "layout"], layout_ids(tmp_path / "layout"), tmp_path / "store", "f16")
    return tmp_path / "layout", tmp_path / "store", cliques


def _first_batch(cliques, features, cfg, augment_cfg=None):
    dataset = TrainDataset(cliques, features, cfg, augment_cfg)
    sampler = CliqueBatchSampler(dataset.members, 2, 2, seed=4)
    return next(iter(make_train_loader(dataset, sampler, num_workers=0)))


@pytest.mark.parametrize("pool_constant", [True, False])
def test_a_batch_from_the_store_equals_one_from_the_authors_layout(tmp_path, pool_constant):
    cfg = FeatureConfig(crop_frames=400, min_crop_frames=200)
    layout, store, cliques = _two_sources(tmp_path, [1000, 1213, 300, 4000, 777, 1999],
                                          pool_constant)
    x_layout, labels, versions = _first_batch(cliques, layout, cfg)
    x_store, labels_store, versions_store = _first_batch(cliques, store, cfg)
    assert x_layout.shape == (4, 84, 20)
    assert labels.tolist() == labels_store.tolist() and versions.tolist() == versions_store.tolist()
    if pool_constant:
        assert np.array_equal(x_store.numpy(), x_layout.numpy())
    else:  # float16 rounds each pooled value by at most 2**-11 of it
        np.testing.assert_allclose(x_store.numpy(), x_layout.numpy(), rtol=2**-10, atol=1e-7)


def test_training_crops_are_preprocess_on_the_pooling_grid(tmp_path):
    cfg = FeatureConfig(crop_frames=400)
    layout, _, cliques = _two_sources(tmp_path, [1013, 1500], pool_constant=False)
    x, _, _ = TrainDataset(cliques, layout, cfg)[(0, 99)]
    cqt = load_feature(layout, "v00xxxxxxxx")
    start = 20 * int(np.random.default_rng(99).integers(0, 1013 // 20 - 20 + 1))
    assert np.array_equal(x.numpy(), preprocess(cqt[start : start + 400], cfg, min_frames=400))


def test_probability_zero_augmentation_is_bit_identical_and_stretches_keep_the_shape(tmp_path):
    cfg = FeatureConfig(crop_frames=400)
    layout, _, cliques = _two_sources(tmp_path, [1000, 1213, 300, 4000], pool_constant=False)
    plain = _first_batch(cliques, layout, cfg)[0]
    assert np.array_equal(_first_batch(cliques, layout, cfg, AugmentConfig())[0].numpy(),
                          plain.numpy())
    every_op = AugmentConfig(pitch_prob=1.0, stretch_prob=1.0, envelope_prob=1.0, gain_prob=1.0,
                             noise_prob=1.0, time_mask_prob=1.0, freq_mask_prob=1.0)
    augmented = _first_batch(cliques, layout, cfg, every_op)[0]
    assert augmented.shape == plain.shape and not np.array_equal(augmented.numpy(), plain.numpy())
    assert np.array_equal(_first_batch(cliques, layout, cfg, every_op)[0].numpy(), augmented.numpy())


def test_validation_from_either_source_and_where_it_differs_from_preprocess(tmp_path):
    cfg = FeatureConfig(min_frames=400)
    layout, store, cliques = _two_sources(tmp_path, [1013, 400, 390, 300], pool_constant=False)
    from_layout, from_store = FullTrackDataset(cliques, layout, cfg), FullTrackDataset(cliques, store, cfg)
    assert filter_available(cliques, store) == filter_available(cliques, layout) == cliques
    for i, yt in enumerate(["v00xxxxxxxx", "v01xxxxxxxx", "v02xxxxxxxx", "v03xxxxxxxx"]):
        x = from_layout[i][0]
        np.testing.assert_allclose(from_store[i][0], x, rtol=2**-10, atol=1e-7)
        reference = preprocess(load_feature(layout, yt), cfg)
        assert x.shape == reference.shape
        if yt == "v02xxxxxxxx":  # 390 frames: preprocess's frame 19 mixes 10 frames and padding
            assert np.array_equal(x[:, :19], reference[:, :19]) and np.all(x[:, 19] == 0)
            assert np.all(reference[:, 19] > 0)
        else:
            assert np.array_equal(x, reference)
