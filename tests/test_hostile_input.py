"""Hostile input found by trying it (issue #18's rules): every case ends in one ``error:``
line naming the file and the cause, or a skipped track with its reason; never a traceback,
an overwritten input, or a zero or non-finite embedding scored as if it were real."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import DiskFull, run_cli, write_list
from mirex_vi.config import MODEL_SIZES, FeatureConfig
from mirex_vi.io.matrix import read_distance_matrix
from mirex_vi.model.cqtnet import CQTNet
from mirex_vi.model.packaging import write_package
from mirex_vi.synth import melody


def call(collection, output, package, *extra):
    return run_cli("identify", collection, collection, output, "--weights", package,
                   "--workers", "1", "--quiet", *extra)


@pytest.mark.parametrize("cqt", ["librosa", "torch"])
def test_audio_too_quiet_for_the_cqt_is_skipped_not_a_zero_embedding(tmp_path, tracks,
                                                                      tiny_package, cqt):
    """A float WAV far below 16-bit's last step (-190 dBFS) is not digital silence, but its
    float16 CQT is all zero: the model would see zeros and give a zero vector."""
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, 1e-10 * melody([60, 62, 64, 65] * 4), 22050, subtype="FLOAT")
    collection = write_list(tmp_path / "c.txt", [str(tracks[0]), str(quiet), str(tracks[1])])
    code, out = call(collection, tmp_path / "o.txt", tiny_package, "--cqt", cqt)
    assert code == 0 and f"skipped {quiet}: too quiet" in out and "Traceback" not in out, out
    d = read_distance_matrix(tmp_path / "o.txt").distances
    assert np.all(d[1, [0, 2]] == 2.0) and np.all(d[[0, 2], 1] == 2.0)
    assert len(list((tmp_path / "o.txt.work").rglob("*.npy"))) == 2  # nothing cached for it


def test_a_zero_embedding_is_never_scored_or_cached(tmp_path, tracks):
    """Weights whose projection is zero give every track a zero vector (distance sqrt(2)
    to all, silently): each track is skipped instead, and the cache stays empty."""
    model = CQTNet(MODEL_SIZES["tiny"])
    with torch.no_grad():
        model.proj.lin.weight.zero_()
    package = tmp_path / "zero"
    write_package(package, model.state_dict(), model.cfg, FeatureConfig(), {}, "# zero\n")
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks[:2]])
    code, out = call(collection, tmp_path / "o.txt", package)
    assert code == 0 and out.count("the embedding is zero") == 2, out
    assert np.all(read_distance_matrix(tmp_path / "o.txt").distances[0, 1] == 2.0)
    assert not list((tmp_path / "o.txt.work").rglob("*.npy"))


def test_evaluate_json_never_replaces_a_labelled_track(tmp_path, tracks, tiny_package):
    """The tracks a labels file names are inputs too: --json on one is refused first."""
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{p}\t{i // 2}\n" for i, p in enumerate(tracks)))
    before = tracks[0].read_bytes()
    code, out = run_cli("evaluate", "--labels", labels, "--weights", tiny_package, "--workers",
                        "1", "--quiet", "--json", tracks[0])
    assert code == 2 and "output is also an input" in out and "MAP" not in out, out
    assert tracks[0].read_bytes() == before


@pytest.fixture()
def flat_index(tmp_path, tracks, tiny_package):
    pytest.importorskip("faiss")
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{p}\t{i // 2}\n" for i, p in enumerate(tracks)))
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks])
    code, out = run_cli("index", "build", collection, tmp_path / "index", "--weights",
                        tiny_package, "--workers", "1", "--quiet")
    assert code == 0, out
    return tmp_path / "index", labels


@pytest.mark.parametrize("target", ["labels", "manifest"])
def test_evaluate_index_json_never_replaces_an_input(flat_index, target):
    index, labels = flat_index
    output = labels if target == "labels" else index / "index.json"
    before = output.read_bytes()
    code, out = run_cli("evaluate", "--index", index, "--labels", labels, "--json", output, "--quiet")
    assert code == 2 and "output is also an input" in out and "Traceback" not in out, out
    assert output.read_bytes() == before


def test_evaluate_index_json_in_a_missing_folder_is_refused_first(flat_index, tmp_path):
    index, labels = flat_index
    code, out = run_cli("evaluate", "--index", index, "--labels", labels, "--json",
                        tmp_path / "missing" / "f.json", "--quiet")
    assert code == 2 and "does not exist" in out and "Traceback" not in out, out
    assert "MAP@10" not in out  # refused before the work


def test_evaluate_index_json_on_a_full_disk_exits_3_after_the_figures(flat_index, tmp_path,
                                                                      monkeypatch):
    import mirex_vi.search.query

    monkeypatch.setattr(mirex_vi.search.query, "atomic_open", DiskFull)
    index, labels = flat_index
    code, out = run_cli("evaluate", "--index", index, "--labels", labels, "--json",
                        tmp_path / "f.json", "--quiet")
    assert code == 3 and "cannot write the figures (No space left on device)" in out, out
    assert "MAP@10" in out and "Traceback" not in out


# --- Discogs-VI-YT metadata ---------------------------------------------------------------

BAD_METADATA = {
    "not-json": (b"{bad", "Expecting property name"),
    "empty": (b"", "Expecting value"),
    "not-utf8": (b"\xff\xfe{}", "can't decode"),
    "no-youtube-id": (b'{"C-1": [{"version_id": "V-1"}]}', "'youtube_id'"),
    "versions-not-a-list": (b'{"C-1": 5}', "clique 'C-1': expected a list of versions"),
    "version-not-an-object": (b'{"C-1": ["x"]}', "clique 'C-1': 'youtube_id' missing"),
    "id-not-a-string": (b'{"C-1": [{"version_id": "V-1", "youtube_id": 5}]}', "'youtube_id'"),
    "id-leaves-the-folder": (b'{"C-1": [{"version_id": "V-1", "youtube_id": "../../x"}]}',
                             "youtube_id '../../x' cannot name a feature file"),
    "jsonl-no-versions": (b'{"clique_id": "C-1"}\n', "line 1: clique 'C-1': expected a list"),
    "jsonl-bad-second-line": (b'{"clique_id": "C-1", "versions": []}\nnot json\n', "line 2: "),
    "jsonl-video-no-url": (b'{"clique_id": "C-1", "versions": [{"version_id": "V-1", '
                           b'"youtube_video": [{}]}]}\n', "line 1: clique 'C-1': 'url'"),
}


@pytest.mark.parametrize("name", list(BAD_METADATA))
def test_metadata_that_is_not_discogs_vi_yt_is_named_in_one_line(tmp_path, name):
    content, cause = BAD_METADATA[name]
    metadata = tmp_path / "meta.json"
    metadata.write_bytes(content)
    (tmp_path / "features").mkdir()
    for args in (("evaluate", "--metadata", metadata, "--features-dir", tmp_path / "features"),
                 ("extract", tmp_path / "out", "--metadata", metadata, "--audio-root", tmp_path)):
        code, out = run_cli(*args)
        assert code == 2 and "Traceback" not in out, out
        assert out.startswith(f"error: {metadata}: not Discogs-VI-YT metadata (") and cause in out, out
        assert len(out.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


# --- stored features (evaluate --metadata) ------------------------------------------------


@pytest.fixture()
def stored(tmp_path):
    """Light metadata of two cliques of two versions, and a layout folder of their CQTs."""
    import json

    from mirex_vi.features.layout import save_feature

    rng = np.random.default_rng(0)
    ids = {"C-1": ["aa1", "aa2"], "C-2": ["bb1", "bb2"]}
    for yids in ids.values():
        for yid in yids:
            save_feature(tmp_path / "features", yid, rng.random((400, 84)).astype(np.float16))
    metadata = tmp_path / "light.json"
    metadata.write_text(json.dumps({c: [{"version_id": y, "youtube_id": y} for y in yids]
                                    for c, yids in ids.items()}))
    return metadata, tmp_path / "features"


def evaluate_stored(metadata, features, package):
    return run_cli("evaluate", "--metadata", metadata, "--features-dir", features, "--weights",
                   package, "--device", "cpu", "--quiet")


def test_evaluate_json_never_replaces_a_file_of_the_pooled_store(stored, tiny_package):
    metadata, features = stored
    store = features.parent / "store"
    assert run_cli("extract", store, "--from-features", features, "--pooled", "u8")[0] == 0
    index = store / "pooled.index.tsv"
    before = index.read_bytes()
    code, out = run_cli("evaluate", "--metadata", metadata, "--features-dir", store, "--weights",
                        tiny_package, "--json", index, "--quiet")
    assert code == 2 and "output is also an input" in out and "MAP" not in out, out
    assert index.read_bytes() == before


@pytest.mark.parametrize("value", [0.0, np.nan])
def test_a_stored_cqt_that_is_zero_or_nan_is_named_not_scored(stored, tiny_package, value):
    from mirex_vi.features.layout import save_feature

    metadata, features = stored
    save_feature(features, "bb2", np.full((400, 84), value, np.float16))
    code, out = evaluate_stored(metadata, features, tiny_package)
    assert code == 2 and "Traceback" not in out and "MAP" not in out, out
    assert f"{features}: 1 stored version(s) give a zero or non-finite embedding" in out
    assert out.strip().endswith(": bb2")


@pytest.mark.parametrize("damage", ["shape-file", "pooled-rows-truncated", "pooled-rows-junk"])
def test_a_damaged_feature_file_is_named_without_advice_to_unpickle(stored, tiny_package, damage):
    metadata, features = stored
    if damage == "shape-file":
        bad = features / "aa" / "aa1.npy"
        bad.write_bytes(b"junk that is not an array")
    else:
        code, out = run_cli("extract", features.parent / "store", "--from-features", features,
                            "--pooled", "u8")
        assert code == 0, out
        features, bad = features.parent / "store", features.parent / "store" / "pooled.u8.npy"
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2] if damage == "pooled-rows-truncated" else b"junk")
    code, out = evaluate_stored(metadata, features, tiny_package)
    assert code == 2 and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert out.startswith(f"error: {bad}: ") and "pickle" not in out


# --- labels that leave nothing to score -----------------------------------------------------


def test_labels_where_no_clique_has_two_tracks_are_refused_before_the_work(tmp_path, tracks,
                                                                          tiny_package):
    """Every figure would be NaN (and the JSON not JSON): nothing can be found."""
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{p}\tC{i}\n" for i, p in enumerate(tracks)))
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks])
    assert call(collection, tmp_path / "m.txt", tiny_package)[0] == 0
    for how in (("--matrix", tmp_path / "m.txt"), ("--weights", tiny_package)):
        code, out = run_cli("evaluate", *how, "--labels", labels, "--json", tmp_path / "f.json",
                            "--quiet")
        assert code == 2 and f"{labels}: no clique holds two tracks" in out, out
        assert "MAP" not in out and not (tmp_path / "f.json").exists()


def test_a_matrix_whose_queries_have_no_version_in_it_is_refused(tmp_path, tracks, tiny_package):
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{p}\tC{i % 2}\n" for i, p in enumerate(tracks)))
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks[:2]])  # C0 and C1
    assert call(collection, tmp_path / "m.txt", tiny_package)[0] == 0
    code, out = run_cli("evaluate", "--matrix", tmp_path / "m.txt", "--labels", labels, "--json",
                        tmp_path / "f.json")
    assert code == 2 and f"{tmp_path / 'm.txt'}: no query has another track of its clique" in out, out
    assert "MAP" not in out and not (tmp_path / "f.json").exists()


def test_an_index_that_holds_no_other_version_of_any_query_is_refused(flat_index, tmp_path):
    index, labels = flat_index  # cliques 0 and 1, two tracks each, all indexed
    folder = tmp_path / "elsewhere"  # a clique of two tracks, neither in the index
    folder.mkdir()
    for i in range(2):
        sf.write(folder / f"x{i}.wav", melody([60 + i, 64, 67] * 4), 22050)
    others = tmp_path / "others.tsv"
    others.write_text("".join(f"{folder / f'x{i}.wav'}\t0\n" for i in range(2)))
    code, out = run_cli("evaluate", "--index", index, "--labels", others, "--quiet")
    assert code == 2 and f"{index}: no labelled track has another of its clique in the index" in out, out
    assert "MAP@10" not in out
