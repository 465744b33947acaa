"""Segments read off the track pass's own last feature map (``segment_source`` 'map')."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_cli, write_list

from mirex_vi.config import MODEL_SIZES, FeatureConfig, ScoringConfig
from mirex_vi.config.features import MAP_MIN_FRAMES, MAP_STRIDE
from mirex_vi.inference.embed import embed_inputs, embed_stream
from mirex_vi.inference.tracks import embed_tracks
from mirex_vi.inference.recipe import Recipe
from mirex_vi.inference.segments import map_segments, window_starts
from mirex_vi.inference.settings import EmbedSettings
from mirex_vi.model.cqtnet import CQTNet
from mirex_vi.model.weights import load_package
from mirex_vi.synth import melody, write_audio

CPU = torch.device("cpu")
MAP = ScoringConfig(segment_length=172, segment_hop=48, segment_source="map")


@pytest.fixture(scope="module")
def tiny_model() -> CQTNet:
    torch.manual_seed(0)
    return CQTNet(MODEL_SIZES["tiny"]).eval()


def _input(n_frames: int, played: int | None = None, seed: int = 0) -> torch.Tensor:
    """``(1, 1, 84, n_frames)`` random model input, zero after ``played`` frames."""
    x = torch.rand(1, 1, 84, n_frames, generator=torch.Generator().manual_seed(seed))
    x[..., played or n_frames :] = 0
    return x


def test_the_config_s_grid_is_the_model_s():
    assert (MAP_MIN_FRAMES, MAP_STRIDE) == (CQTNet.min_pooled_frames, CQTNet.column_stride)
    assert [CQTNet.map_columns(n) for n in (171, 172, 187, 188, 387)] == [0, 1, 1, 2, 14]


@pytest.mark.parametrize("n", [172, 200, 387])
def test_embed_and_map_gives_forward_s_embeddings_and_a_column_per_16_frames(tiny_model, n):
    x = _input(n)
    with torch.inference_mode():
        emb, fmap = tiny_model.embed_and_map(x)
        assert torch.equal(emb, tiny_model(x))
    assert fmap.shape == (1, 16 * tiny_model.cfg.channels, CQTNet.map_columns(n))


def test_a_column_sees_the_frames_its_docstring_names(tiny_model):
    x, frame = _input(387), 300
    moved = x.clone()
    moved[..., frame] += 5
    with torch.inference_mode():
        changed = (tiny_model.embed_and_map(moved)[1] - tiny_model.embed_and_map(x)[1]).abs()
    changed = set(changed.amax(dim=1)[0].nonzero().flatten().tolist())
    seen = {j for j in range(14) if 16 * j - 15 <= frame <= 16 * j + 186}
    assert changed and changed <= seen and 0 not in changed


def test_a_track_no_longer_than_a_window_is_one_segment_its_embedding(tiny_model):
    x = _input(200, played=150)  # padded as preprocess pads a short track
    with torch.inference_mode():
        emb, fmap = tiny_model.embed_and_map(x)
        rows = map_segments(tiny_model, fmap[0], 150, MAP)
    assert rows.shape == (1, tiny_model.cfg.embedding_dim)
    assert torch.allclose(rows, emb, atol=1e-6)


def test_a_long_track_s_segments_are_its_windows_and_each_sees_only_its_own(tiny_model):
    x = _input(387)
    later = x.clone()
    later[..., 250:] = torch.rand(1, 1, 84, 137)
    with torch.inference_mode():
        before = map_segments(tiny_model, tiny_model.embed_and_map(x)[1][0], 387, MAP)
        after = map_segments(tiny_model, tiny_model.embed_and_map(later)[1][0], 387, MAP)
    assert len(before) == len(window_starts(387, 172, 48)) == 5
    assert torch.allclose(before.norm(dim=1), torch.ones(5))
    assert torch.equal(before[0], after[0])  # column 0 sees frames 0-186 only
    assert not torch.allclose(before[-1], after[-1])


def test_the_pass_s_own_map_and_a_pass_of_its_own_give_the_same_segments(tiny_model):
    recipe = Recipe(tiny_model, FeatureConfig(scoring=MAP), CPU, amp=False)
    inputs = [_input(n, seed=n)[0, 0] for n in (200, 387, 300)]
    maps: dict[int, torch.Tensor] = {}
    embed_inputs(tiny_model, inputs, CPU, False, on_map=maps.__setitem__)
    assert sorted(maps) == [0, 1, 2]
    for i, x in enumerate(inputs):
        assert np.allclose(recipe.extras(x, maps[i])["segments"], recipe.extras(x)["segments"],
                           atol=1e-6)
    with pytest.raises(ValueError, match="one pass at tempo 1"):
        embed_inputs(tiny_model, inputs[:1], CPU, False, tempo_scales=(0.9, 1.0),
                     on_map=maps.__setitem__)


class _Recorded:
    """A recipe's extras that remembers which feature maps it was handed."""

    def __init__(self, recipe: Recipe):
        self.recipe, self.maps = recipe, []

    @property
    def wants_map(self) -> bool:
        return self.recipe.wants_map

    def extras(self, x, fmap=None):
        self.maps.append(fmap)
        return self.recipe.extras(x, fmap)


@pytest.fixture(scope="module")
def long_tracks(tmp_path_factory) -> list:
    """Two 2-min melodies (258 pooled frames each: three windows of 172 frames every 43)."""
    folder = tmp_path_factory.mktemp("long")
    tune = [60, 62, 64, 65, 67, 65, 64, 62]
    return [write_audio(folder / f"{k}.wav", melody([n + k for n in tune] * 60)) for k in (0, 3)]


def test_embedding_tracks_reads_their_segments_off_the_same_pass(long_tracks, tiny_package):
    weights = load_package(tiny_package)
    settings = EmbedSettings.resolve(CPU, amp=False, batch_size=2, workers=1,
                                     cqt_backend="librosa")
    recorded = _Recorded(Recipe(weights.model, FeatureConfig(scoring=MAP), CPU, amp=False))
    run = embed_tracks(long_tracks, weights, settings, extras=recorded)
    assert not run.errors and len(recorded.maps) == 2
    assert all(fmap is not None for fmap in recorded.maps)
    for i in range(2):
        assert run.extras[i]["segments"].shape == (3, weights.model.cfg.embedding_dim)
        assert run.extras[i]["chroma"].shape[1] == 12


def test_a_stream_of_stored_inputs_hands_each_its_own_pass_s_map_in_order(tiny_model):
    """``embed_stream`` (``evaluate_cliques``' path) reads segments off the embedding pass,
    across chunks and lengths, as a pass of their own would make them."""
    recipe = Recipe(tiny_model, FeatureConfig(scoring=MAP), CPU, amp=False)
    recorded = _Recorded(recipe)
    inputs = [_input(n, seed=k)[0, 0] for k, n in enumerate((300, 200, 300, 387, 200))]
    kept: dict[int, dict] = {}
    emb = embed_stream(tiny_model, iter(inputs), CPU, False, chunk_size=2, extras=recorded,
                       on_extras=kept.__setitem__)
    assert sorted(kept) == list(range(5)) and all(m is not None for m in recorded.maps)
    assert torch.equal(emb, embed_inputs(tiny_model, inputs, CPU, False))
    for i, x in enumerate(inputs):
        alone = recipe.extras(x)  # a pass of its own
        assert np.allclose(kept[i]["segments"], alone["segments"], atol=1e-6), i
        assert np.array_equal(kept[i]["chroma"], alone["chroma"]), i


def _identify(tmp_path, tracks, package, out: str, *extra):
    collection = write_list(tmp_path / "collection.txt", [str(p) for p in tracks])
    return run_cli("identify", collection, collection, tmp_path / out, "--weights", package,
                   "--workers", "1", "--quiet", "--workdir", tmp_path / "work", *extra)


def test_identify_scores_by_map_segments_and_caches_them(tmp_path, long_tracks, tiny_package):
    options = ("--segments", "172,48", "--segment-source", "map", "--segment-weight", "1")
    code, text = _identify(tmp_path, long_tracks, tiny_package, "a.txt", *options)
    assert code == 0, text
    first = (tmp_path / "a.txt").read_text()
    assert "scored by segments 172,48 map diag2 w=1" in first.splitlines()[0]
    code, text = _identify(tmp_path, long_tracks, tiny_package, "b.txt", *options)
    assert code == 0 and "(2 embeddings from cache)" in text, text
    assert (tmp_path / "b.txt").read_text() == first
    code, text = _identify(tmp_path, long_tracks, tiny_package, "c.txt", *options[:2],
                           "--segment-weight", "1")
    assert code == 0 and "(0 embeddings from cache)" in text, text  # windows: other extras
    assert (tmp_path / "c.txt").read_text().splitlines()[1:] != first.splitlines()[1:]


@pytest.mark.parametrize("extra, message", [
    (("--segments", "172,86"), "hop that is a multiple of 16, got 172,86"),
    (("--segments", "180,48"), "length of 172 + 16k pooled frames"),
    (("--segments", "172,48", "--segment-tempo-scales", "0.9,1"),
     "come from the pass at tempo 1"),
])
def test_a_recipe_off_the_map_s_grid_is_refused(tmp_path, long_tracks, tiny_package, extra,
                                                message):
    code, text = _identify(tmp_path, long_tracks, tiny_package, "out.txt", *extra,
                           "--segment-source", "map")
    assert code == 2 and message in text, text
    assert not (tmp_path / "out.txt").exists()


def test_a_three_tempo_package_cannot_read_segments_off_the_map(tmp_path, long_tracks,
                                                                tiny_package):
    code, text = run_cli("weights", "copy", tiny_package, "three", "--root", tmp_path,
                         "--tempo-scales", "0.9,1,1.1")
    assert code == 0, text
    code, text = _identify(tmp_path, long_tracks, tmp_path / "three", "out.txt",
                           "--segments", "172,48", "--segment-source", "map")
    assert code == 2 and "need one pass at tempo 1, not tempo_scales [0.9, 1.0, 1.1]" in text
    assert not (tmp_path / "out.txt").exists()
    code, text = run_cli("weights", "copy", tmp_path / "three", "bad", "--root", tmp_path,
                         "--segments", "172,48", "--segment-source", "map")
    assert code == 2 and "need one pass at tempo 1" in text, text
    assert not (tmp_path / "bad").exists()


def test_an_index_keeps_map_segments_and_searches_as_identify_scores(tmp_path, long_tracks,
                                                                     tiny_package):
    pytest.importorskip("faiss")
    from mirex_vi.io.matrix import read_distance_matrix

    options = ("--segments", "172,48", "--segment-source", "map", "--segment-weight", "0.5")
    code, text = _identify(tmp_path, long_tracks, tiny_package, "m.txt", *options)
    assert code == 0, text
    matrix = read_distance_matrix(tmp_path / "m.txt")
    collection = tmp_path / "collection.txt"
    code, text = run_cli("index", "build", collection, tmp_path / "index", "--weights",
                         tiny_package, "--workers", "1", "--quiet", *options)
    assert code == 0, text
    code, text = run_cli("index", "info", tmp_path / "index")
    assert code == 0 and "segments 172,48 map diag2 w=0.5" in text, text
    code, text = run_cli("search", tmp_path / "index", collection, "--top-k", "2", "--quiet")
    assert code == 0, text
    rows = [line.split("\t") for line in text.splitlines()]
    for q, distances in zip(matrix.query_indices, matrix.distances):
        hits = [r for r in rows if r[0] == matrix.paths[q]]
        assert [h[2] for h in hits] == [matrix.paths[i] for i in np.argsort(distances, kind="stable")]
        np.testing.assert_allclose(np.array([float(h[3]) for h in hits]) ** 2,
                                   np.sort(distances) ** 2, atol=1e-5)
