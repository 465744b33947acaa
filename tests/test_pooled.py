"""The pooled feature store: round trips, validation, the shared corpus, conversion, sources."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mirex_vi.config import FeatureConfig
from mirex_vi.features.frontend import pool_cqt, preprocess
from mirex_vi.features.layout import load_feature, save_feature
from mirex_vi.features.pooled import (INDEX_NAME, AuthorsLayout, PooledStore, convert_features,
                                      decode_u8, encode_u8, layout_ids, open_features, write_store)

# A real corpus store (the synthetic corpus, `mirex-vi extract --pooled u8`), where one is at hand.
SHARED = Path(os.environ.get("MIREX_VI_CORPUS_STORE", "/nonexistent"))
U8_STEP_DB = 80 / 255


def _versions(seed: int = 0) -> dict[str, np.ndarray]:
    """Three pooled versions of different lengths, magnitudes spanning ~100 dB."""
    rng = np.random.default_rng(seed)
    return {f"id{i}xxxxxxxx": (10 ** rng.uniform(-5, 0.5, (n, 84))).astype(np.float32)
            for i, n in enumerate([7, 1, 30])}


def test_float16_store_round_trips_exactly(tmp_path):
    versions = {k: v.astype(np.float16).astype(np.float32) for k, v in _versions().items()}
    assert write_store(tmp_path, iter(versions.items()), "f16") == 3  # a generator: streamed
    store = PooledStore.open(tmp_path)
    assert store.encoding == "f16" and len(store) == 3 and store.n_rows == 38
    for yt, m in versions.items():
        got = store.pooled(yt)
        assert got.dtype == np.float32 and np.array_equal(got, m)
    assert not store.has("missingxxxx")
    header = (tmp_path / INDEX_NAME).read_text().splitlines()[:2]
    assert header == ["youtube_id\trow\tn_rows\tpeak", f"id0xxxxxxxx\t0\t7\t{versions['id0xxxxxxxx'].max():.6g}"]


def test_uint8_store_is_within_its_step(tmp_path):
    versions = _versions(1)
    versions["silentxxxxx"] = np.zeros((3, 84), np.float32)
    write_store(tmp_path, versions.items(), "u8")
    store = PooledStore.open(tmp_path)
    assert store.rows_path.name == "pooled.u8.npy"
    for yt, m in versions.items():
        got = store.pooled(yt)
        peak = m.max()
        db = 20 * np.log10(np.maximum(m, 1e-30) / max(peak, 1e-30))
        within = db > -80 + U8_STEP_DB / 2  # rounds to a code >= 1
        bound = 10 ** (U8_STEP_DB / 2 / 20) - 1 + 1e-5  # half a step, plus the peak's 6 digits
        assert np.all(np.abs(got[within] - m[within]) <= bound * m[within])
        assert bound < 0.0183  # the stated ±1.8 %
        assert np.all(got[db < -80] == 0)
        assert np.isclose(store.pooled(yt, scaled=False).max(), 1.0 if peak > 0 else 0.0)


def test_u8_codes_decode_and_reencode_unchanged():
    codes = np.arange(256, dtype=np.uint8).reshape(4, 64)
    decoded = decode_u8(codes, 3.5)
    assert decoded[0, 0] == 0 and np.isclose(decoded.max(), 3.5)
    assert np.array_equal(encode_u8(decoded, 3.5), codes)


def test_preprocess_pools_with_pool_cqt_bit_identically():
    """preprocess == its pre-refactoring code (pad, pool, clip, normalise) to the bit."""
    cfg = FeatureConfig()
    rng = np.random.default_rng(2)
    for n in [1, 19, 2584, 4000, 4013, 9001]:
        cqt = rng.random((n, 84)).astype(np.float16)
        x = np.asarray(cqt, dtype=np.float32)
        x = np.pad(x, ((0, max(0, cfg.min_frames - n)), (0, 0)))
        t_out = x.shape[0] // 20
        x = x[: t_out * 20].reshape(t_out, 20, 84).mean(axis=1)
        x = np.clip(x, 0.0, None)
        x /= x.max() + cfg.eps
        assert np.array_equal(preprocess(cqt, cfg), np.ascontiguousarray(x.T))
        assert pool_cqt(cqt, 20).shape == (n // 20, 84)


def test_convert_layout_pools_every_version(tmp_path):
    rng = np.random.default_rng(3)
    cqts = {"aaaaaaaaaaa": rng.random((105, 84)), "bbbbbbbbbbb": rng.random((40, 84)),
            "tooshortxxx": rng.random((19, 84))}
    for yt, cqt in cqts.items():
        save_feature(tmp_path / "layout", yt, cqt)
    assert layout_ids(tmp_path / "layout") == sorted(cqts)
    written = convert_features([tmp_path / "layout"], [*cqts, "missingxxxx"], tmp_path / "store", "f16")
    assert written == 2
    store = open_features(tmp_path / "store", 20)
    assert isinstance(store, PooledStore) and not store.has("tooshortxxx")
    layout = open_features(tmp_path / "layout", 20)
    assert isinstance(layout, AuthorsLayout)
    for yt in ["aaaaaaaaaaa", "bbbbbbbbbbb"]:
        exact = pool_cqt(load_feature(tmp_path / "layout", yt), 20)
        assert np.array_equal(layout.pooled(yt), exact)
        assert np.array_equal(store.pooled(yt), exact.astype(np.float16).astype(np.float32))
    assert np.array_equal(pickle.loads(pickle.dumps(store)).pooled("aaaaaaaaaaa"),
                          store.pooled("aaaaaaaaaaa"))


def test_a_conversion_with_nothing_to_write_says_which_folder_lacks_what(tmp_path):
    """It said only "no versions to write", naming neither the sources nor the versions."""
    write_store(tmp_path / "kept", _versions().items(), "u8")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path / 'kept'}: holds none of the 2 versions"):
        convert_features([tmp_path / "kept"], ["zzzzzzzzzzz", "yyyyyyyyyyy"], tmp_path / "a", "u8")
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'}: holds no versions"):
        convert_features([tmp_path / "empty"], [], tmp_path / "b", "u8")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # no empty folders


def _codes(folder: Path) -> dict[str, np.ndarray]:
    """youtube_id -> its stored uint8 rows, as the file holds them."""
    store = PooledStore.open(folder)
    rows = np.load(store.rows_path)
    return {yt: rows[e.row:e.row + e.n_rows] for yt, e in store.entries.items()}


def test_merged_u8_stores_keep_every_code_and_the_first_source_wins(tmp_path):
    kept, added = _versions(0), _versions(1)
    added = {"n" + k[1:]: v for k, v in added.items()} | {"id1xxxxxxxx": added["id1xxxxxxxx"]}
    write_store(tmp_path / "kept", kept.items(), "u8")
    write_store(tmp_path / "added", added.items(), "u8")
    ids = sorted(kept.keys() | added.keys())
    assert convert_features([tmp_path / "kept", tmp_path / "added"], ids, tmp_path / "merged", "u8") == 6
    merged, first, second = (_codes(tmp_path / d) for d in ("merged", "kept", "added"))
    assert sorted(merged) == ids
    for yt, codes in merged.items():
        assert np.array_equal(codes, first[yt] if yt in first else second[yt])
    assert (tmp_path / "merged" / INDEX_NAME).read_text().count("\n") == 7


def test_a_merge_never_writes_over_a_store_it_reads(tmp_path):
    write_store(tmp_path, _versions().items(), "u8")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="would replace one it reads"):
        convert_features([tmp_path / "." , tmp_path], list(_versions()), tmp_path, "u8")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_store_is_never_replaced(tmp_path):
    """A conversion into a folder holding another store replaced it; one that failed half way
    (here on a duplicate id) left its rows without an index: the store was lost."""
    write_store(tmp_path / "kept", _versions(0).items(), "u8")
    write_store(tmp_path / "other", _versions(1).items(), "u8")
    before = {p.name: p.read_bytes() for p in (tmp_path / "kept").iterdir()}
    with pytest.raises(ValueError, match="already holds a pooled store; write to a new folder"):
        convert_features([tmp_path / "other"], list(_versions(1)), tmp_path / "kept", "u8")
    twice = [("zzzzzzzzzzz", np.ones((2, 84)))] * 2
    with pytest.raises(ValueError, match="already holds a pooled store"):
        write_store(tmp_path / "kept", iter(twice), "u8")
    assert {p.name: p.read_bytes() for p in (tmp_path / "kept").iterdir()} == before


def test_rows_left_without_an_index_are_written_again(tmp_path):
    """A writer killed between the rows and the index leaves no store; a rerun completes it."""
    write_store(tmp_path, _versions().items(), "u8")
    (tmp_path / INDEX_NAME).unlink()
    assert write_store(tmp_path, _versions().items(), "u8") == 3
    assert sorted(PooledStore.open(tmp_path).entries) == sorted(_versions())


# --- bad stores ------------------------------------------------------------------------------


@pytest.fixture()
def store_dir(tmp_path) -> Path:
    write_store(tmp_path, _versions().items(), "u8")
    return tmp_path


def _replace_line(folder: Path, lineno: int, text: str) -> None:
    lines = (folder / INDEX_NAME).read_text().splitlines()
    lines[lineno - 1] = text
    (folder / INDEX_NAME).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("lineno, text, message", [
    (1, "youtube_id\trow\tn_rows", r"pooled.index.tsv:1: header"),
    (3, "id1xxxxxxxx\t7\t1", r"pooled.index.tsv:3: expected the 4 fields"),
    (3, "id1xxxxxxxx\tseven\t1\t1.0", r"pooled.index.tsv:3: expected the 4 fields"),
    (3, "id0xxxxxxxx\t7\t1\t1.0", r"pooled.index.tsv:3: duplicate id 'id0xxxxxxxx'"),
    (4, "id2xxxxxxxx\t8\t31\t1.0", r"pooled.index.tsv:4: rows 8..38 .* outside the array's 38 rows"),
    (3, "id1xxxxxxxx\t7\t1\tnan", r"pooled.index.tsv:3: peak nan"),
    (3, "id1xxxxxxxx\t7\t0\t1.0", r"pooled.index.tsv:3: rows"),
])
def test_bad_index_names_the_file_and_line(store_dir, lineno, text, message):
    _replace_line(store_dir, lineno, text)
    with pytest.raises(ValueError, match=message):
        PooledStore.open(store_dir)


def test_bad_rows_file_or_folder_is_a_clear_error(store_dir, tmp_path_factory):
    np.save(store_dir / "pooled.u8.npy", np.zeros((38, 84), np.float32))
    with pytest.raises(ValueError, match=r"pooled.u8.npy: expected a 2-D uint8 array"):
        PooledStore.open(store_dir)
    np.save(store_dir / "pooled.f16.npy", np.zeros((38, 84), np.float16))
    with pytest.raises(ValueError, match="not a pooled store"):
        PooledStore.open(store_dir)
    with pytest.raises(ValueError, match="already holds pooled.u8.npy"):
        write_store(store_dir, _versions().items(), "f16")
    with pytest.raises(ValueError, match="not a pooled store"):
        PooledStore.open(tmp_path_factory.mktemp("empty"))


@pytest.mark.parametrize("items, message", [
    ([("a", np.ones((2, 84))), ("a", np.ones((2, 84)))], "version 'a': a duplicate id"),
    ([("a", np.ones((2, 84))), ("b", np.ones((2, 12)))], r"version 'b'.*\(2, 12\)"),
    ([("a", np.ones((0, 84)))], r"version 'a'.*\(0, 84\)"),
    ([("a", np.full((2, 84), np.inf))], "version 'a': non-finite"),
    ([], "no versions"),
])
def test_write_rejects_bad_versions_and_leaves_no_store(tmp_path, items, message):
    with pytest.raises(ValueError, match=message):
        write_store(tmp_path, iter(items), "f16")
    assert not any(tmp_path.iterdir())  # the temporaries are gone and nothing was published
    with pytest.raises(ValueError, match=message):
        write_store(tmp_path / "new" / "store", iter(items), "f16")
    assert not (tmp_path / "new" / "store").exists()  # nor the folder the write made


# --- the shared corpus ------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED / INDEX_NAME).is_file(), reason="set MIREX_VI_CORPUS_STORE to a corpus store")
def test_shared_corpus_opens_and_decodes():
    store = open_features(SHARED, 20)
    assert isinstance(store, PooledStore) and store.encoding == "u8" and len(store) == 15999
    with open(SHARED / "Synth-VI-YT-light.json.val", encoding="utf-8") as f:
        versions = [v["youtube_id"] for vs in json.load(f).values() for v in vs]
    assert all(store.has(yt) for yt in versions)
    for yt in versions[:5]:
        m = store.pooled(yt)
        assert m.ndim == 2 and m.shape[1] == 84 and m.shape[0] >= 100
        assert np.isfinite(m).all() and np.isclose(m.max(), store.entries[yt].peak, rtol=1e-5)
