"""Segment embeddings and the rules that score pairs from them (inference.segments)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import patterned_split, run_cli, write_list

from mirex_vi.config import MODEL_SIZES, FeatureConfig, ScoringConfig
from mirex_vi.features.frontend import model_input
from mirex_vi.inference.segments import (PackedSegments, blend, cut_windows, embed_segments,
                                         one_window_pairs, segment_scores, track_frames,
                                         window_starts)
from mirex_vi.model.cqtnet import CQTNet

CPU = torch.device("cpu")


def _features(length: int, hop: int, tempi=(1.0,), **scoring) -> FeatureConfig:
    return FeatureConfig(tempo_scales=tempi, scoring=ScoringConfig(
        segment_length=length, segment_hop=hop, **scoring))


def _rule(name: str, k: int = 1, weight: float = 0.5) -> ScoringConfig:
    return ScoringConfig(segment_rule=name, segment_k=k, segment_weight=weight)


@pytest.fixture(scope="module")
def tiny_model() -> CQTNet:
    torch.manual_seed(0)
    return CQTNet(MODEL_SIZES["tiny"]).eval()


@pytest.mark.parametrize("settings, match", [
    (dict(segment_length=7, segment_hop=3), "segment_length"),
    (dict(segment_length=2001, segment_hop=10), "segment_length"),
    (dict(segment_length=43, segment_hop=0), "segment_hop"),
    (dict(segment_length=43, segment_hop=44), "segment_hop"),
    (dict(segment_length=43.0, segment_hop=22), "segment_length: expected int"),
    (dict(segment_length=True, segment_hop=1), "segment_length: expected int"),
    (dict(segment_rule="mean"), "segment_rule must be one of"),
    (dict(segment_k=0), "segment_k"), (dict(segment_k=65), "segment_k"),
    (dict(segment_weight=1.5), "segment_weight"), (dict(segment_weight=-0.1), "segment_weight"),
    (dict(segment_tempo_scales=(0.1,)), "segment_tempo_scales"),
])
def test_segment_settings_are_refused_out_of_range(settings, match):
    with pytest.raises(ValueError, match=match):
        ScoringConfig(**settings)


@pytest.mark.parametrize("n, length, hop, expected", [
    (10, 43, 22, [0]), (43, 43, 22, [0]), (44, 43, 22, [0, 1]), (86, 43, 22, [0, 22, 43]),
    (100, 43, 22, [0, 19, 38, 57]), (130, 86, 43, [0, 44]), (130, 43, 22, [0, 22, 44, 65, 87]),
    (200, 50, 50, [0, 50, 100, 150]), (174, 50, 50, [0, 41, 83, 124]),
    (2000, 43, 22, [round(i * 1957 / 15) for i in range(16)]),  # MAX_WINDOWS, gaps between
])
def test_windows_cover_the_track_evenly(n, length, hop, expected):
    starts = window_starts(n, length, hop)
    assert starts == expected
    assert starts[-1] + min(length, n) == n
    assert all(b - a <= length for a, b in zip(starts, starts[1:])) or len(starts) == 16


def test_windows_are_padded_and_normalised_like_training_crops():
    rng = np.random.default_rng(0)
    pooled = rng.random((100, 84)).astype(np.float32)
    x = model_input(pooled, 200, 1e-6)  # (84, 200): the track and its padding
    windows = cut_windows(x, 100, ScoringConfig(segment_length=43, segment_hop=22), 1e-6)
    assert windows.shape == (4, 84, CQTNet.min_pooled_frames)
    for window, start in zip(windows, [0, 19, 38, 57]):
        expected = model_input(pooled[start : start + 43], CQTNet.min_pooled_frames, 1e-6)
        np.testing.assert_allclose(window.numpy(), expected, atol=1e-5)


def test_a_tracks_own_cropped_segment_scores_it_above_every_other(tiny_model):
    rng = np.random.default_rng(1)
    features = _features(43, 22, (0.7, 1.0, 1.4))
    pooled = [rng.random((150, 84)).astype(np.float32) ** 4 for _ in range(6)]
    tracks = [(model_input(p, 200, 1e-6), len(p)) for p in pooled]
    crop = pooled[3][43:86]  # one of track 3's windows (0, 21, 43, 64, 86, 107), alone
    query = (model_input(crop, 200, 1e-6), len(crop))
    parts = embed_segments(tiny_model, tracks + [query], features, CPU, False)
    assert [len(p) for p in parts] == [6] * 6 + [1]
    for rule in (_rule("max"), _rule("topk", 3), _rule("diag", 2)):
        scores = segment_scores(PackedSegments.pack(parts), [6], rule)[0, :6]
        assert int(scores.argmax()) == 3, rule


def test_embedding_alone_or_with_others_agrees(tiny_model):
    rng = np.random.default_rng(2)
    features = _features(50, 25)
    tracks = [(model_input(rng.random((n, 84)).astype(np.float32), 200, 1e-6), n)
              for n in (120, 30, 260)]
    together = embed_segments(tiny_model, tracks, features, CPU, False, batch_size=4)
    for track, expected in zip(tracks, together):
        alone = embed_segments(tiny_model, [track], features, CPU, False, batch_size=4)[0]
        torch.testing.assert_close(alone, expected, atol=1e-5, rtol=0)
        assert torch.equal(alone, embed_segments(tiny_model, [track], features, CPU, False,
                                                 batch_size=4)[0])


def test_segments_follow_the_recipe_s_tempi_else_the_package_s(tiny_model):
    x = model_input(np.random.default_rng(4).random((60, 84)).astype(np.float32), 200, 1e-6)
    packages = _features(43, 22, (0.7, 1.0), segment_tempo_scales=())
    own = embed_segments(tiny_model, [(x, 60)], packages, CPU, False)[0]
    one = embed_segments(tiny_model, [(x, 60)], _features(43, 22, (0.7, 1.0)), CPU, False)[0]
    plain = embed_segments(tiny_model, [(x, 60)], _features(43, 22), CPU, False)[0]
    assert torch.equal(one, plain) and not torch.allclose(own, plain)


def test_track_frames_leave_out_the_padding():
    x = model_input(np.ones((57, 84), np.float32), 200, 1e-6)
    assert x.shape[-1] == 200 and track_frames(x) == 57
    assert track_frames(np.zeros((84, 200), np.float32)) == 1


def test_rules_on_known_matrices():
    e = torch.eye(4)  # segments along axes: each segment pair's similarity is 0 or 1
    query = e[[0, 1, 2]]
    along = e[[0, 1, 2, 3]]  # the query's three segments in order: a diagonal run of 3
    shifted = e[[2, 0, 1, 3]]  # a run of 2, then the third out of place
    scattered = e[[1, 3, 0, 3]]  # two of them, out of order
    packed = PackedSegments.pack([query, along, shifted, scattered, e[[3]]])
    score = {rule: segment_scores(packed, [0], _rule(*rule))[0, 1:].tolist()
             for rule in [("max", 1), ("topk", 3), ("diag", 3), ("diag", 2)]}
    assert score[("max", 1)] == [1.0, 1.0, 1.0, 0.0]
    assert score[("topk", 3)] == pytest.approx([1.0, 1.0, 2 / 3, 0.0])
    assert score[("diag", 3)] == pytest.approx([1.0, 2 / 3, 0.0, 0.0])
    assert score[("diag", 2)] == pytest.approx([1.0, 1.0, 0.5, 0.0])


def test_topk_of_a_short_pair_is_the_mean_of_what_it_has():
    e = torch.eye(3)
    packed = PackedSegments.pack([e[[0]], e[[0, 1]]])
    assert segment_scores(packed, [0], _rule("topk", 5))[0].tolist() == [1.0, 0.5]


def test_blend_weights_the_segment_score_unless_both_tracks_are_one_window():
    e = torch.eye(3)
    packed = PackedSegments.pack([e[[0]], e[[0, 1]], e[[2]]])
    alone = one_window_pairs(packed, [0])
    assert alone.tolist() == [[True, False, True]]
    track, seg = torch.tensor([[1.0, 0.2, 0.4]]), torch.tensor([[1.0, 1.0, 0.0]])
    assert blend(track, seg, alone, _rule("max", 1, 0.25))[0].tolist() == pytest.approx(
        [1.0, 0.4, 0.4])


def test_packing_refuses_a_track_without_segments():
    with pytest.raises(ValueError, match="at least one segment"):
        PackedSegments.pack([torch.zeros(0, 4)])


# --- a package's scoring recipe in identify and evaluate ----------------------------------

RECIPE = ["--segments", "43,22", "--segment-rule", "diag2", "--segment-weight", "0.5",
          "--rerank", "2", "--fusion-weight", "0.7"]


def _identify(tmp_path, tracks, package, out: str, *extra, workdir: str = "work"):
    collection = write_list(tmp_path / "collection.txt", [str(p) for p in tracks])
    code, text = run_cli("identify", collection, collection, tmp_path / out, "--weights",
                         package, "--workers", "1", "--quiet", "--workdir", tmp_path / workdir,
                         *extra)
    assert code == 0, text
    return (tmp_path / out).read_text(encoding="utf-8"), text


def test_identify_names_the_recipe_and_gives_the_same_matrix_with_the_cache_or_without(
        tmp_path, tracks, tiny_package):
    plain, _ = _identify(tmp_path, tracks, tiny_package, "plain.txt")
    first, text = _identify(tmp_path, tracks, tiny_package, "a.txt", *RECIPE)
    assert "(0 embeddings from cache)" in text  # cached vectors without segments: embedded again
    again, text = _identify(tmp_path, tracks, tiny_package, "b.txt", *RECIPE)
    assert "(4 embeddings from cache)" in text
    fresh, _ = _identify(tmp_path, tracks, tiny_package, "c.txt", *RECIPE, workdir="other")
    head = first.splitlines()[0]
    assert "scored by segments 43,22 diag2 w=0.5, re-rank 2 W=0.7" in head
    assert "scored by" not in plain.splitlines()[0]
    assert first == again == fresh
    assert first != plain
    assert len(list((tmp_path / "work").rglob("*.npz"))) == 4


def test_a_package_ships_its_recipe(tmp_path, tracks, tiny_package):
    from mirex_vi.model.packaging import write_package
    from mirex_vi.model.weights import load_package

    tiny = load_package(tiny_package)
    recipe = ScoringConfig(segment_length=43, segment_hop=22, rerank=2)
    write_package(tmp_path / "with-recipe", tiny.model.state_dict(), tiny.model.cfg,
                  FeatureConfig(scoring=recipe), {"note": "a recipe"}, "# with-recipe\n")
    config = json.loads((tmp_path / "with-recipe" / "config.json").read_text())
    assert config["features"]["scoring"]["segment_length"] == 43
    assert load_package(tmp_path / "with-recipe").features.scoring == recipe
    shipped, _ = _identify(tmp_path, tracks, tmp_path / "with-recipe", "shipped.txt")
    assert "scored by segments 43,22 diag2 w=0.75, re-rank 2 W=0.7" in shipped.splitlines()[0]
    off, _ = _identify(tmp_path, tracks, tmp_path / "with-recipe", "off.txt",
                       "--segments", "off", "--rerank", "0")
    plain, _ = _identify(tmp_path, tracks, tiny_package, "plain.txt", workdir="plain")
    assert off.splitlines()[1:] == plain.splitlines()[1:]


@pytest.mark.parametrize("option, value, message", [
    ("--segments", "5,1", "segment_length must be 0 (off) or in [8, 2000]"),
    ("--segments", "43,50", "segment_hop must be in [1, segment_length=43]"),
    ("--segments", "43", "give LENGTH,HOP in pooled frames, or off"),
    ("--segment-rule", "mean", "segment_rule must be one of max, topk, diag"),
    ("--segment-rule", "topk99", "segment_k must be in [1, 64]"),
    ("--segment-weight", "1.5", "1.5 is not in the range 0<=x<=1"),
    ("--rerank", "-1", "-1 is not in the range 0<=x<=10000"),
    ("--fusion-weight", "2", "2.0 is not in the range 0<=x<=1"),
])
def test_scoring_options_are_refused_out_of_range(tmp_path, tracks, tiny_package, option, value,
                                                  message):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks])
    write_list(tmp_path / "labels.tsv", [f"{p}\tC{i // 2}" for i, p in enumerate(tracks)])
    for command in (["identify", collection, collection, tmp_path / "out.txt"],
                    ["evaluate", "--labels", tmp_path / "labels.tsv"]):
        code, text = run_cli(*command, "--weights", tiny_package, option, value)
        assert code == 2 and message in text, text
    assert not (tmp_path / "out.txt").exists()


def test_evaluate_refuses_a_recipe_for_a_matrix(tmp_path):
    (tmp_path / "m.txt").write_text("x\n")
    (tmp_path / "l.tsv").write_text("a\tb\n")
    code, text = run_cli("evaluate", "--matrix", tmp_path / "m.txt", "--labels",
                         tmp_path / "l.tsv", "--rerank", "5")
    assert code == 2 and "score a model's embeddings: not with --matrix" in text


def test_evaluate_scores_stored_features_by_the_recipe(tmp_path, tiny_package):
    from mirex_vi.eval.evaluate import evaluate_features

    meta, store = patterned_split(tmp_path, n_cliques=3, n_versions=3)
    plain = evaluate_features(meta, store, str(tiny_package), "cpu", False, progress=False)[0]
    changes = dict(segment_length=43, segment_hop=22, segment_weight=1.0, rerank=3)
    scored = evaluate_features(meta, store, str(tiny_package), "cpu", False, progress=False,
                               scoring=changes)[0]
    assert scored.n_queries == plain.n_queries == 9
    assert not np.array_equal(scored.ap, plain.ap)
    with pytest.raises(ValueError, match="segment_hop"):
        evaluate_features(meta, store, str(tiny_package), "cpu", False, progress=False,
                          scoring=dict(segment_length=43, segment_hop=0))


def test_weights_copy_sets_the_recipe(tmp_path, tiny_package):
    from mirex_vi.model.weights import load_package

    code, text = run_cli("weights", "copy", tiny_package, "tiny-recipe", "--root", tmp_path,
                         "--segments", "172,86", "--segment-tempo-scales", "1", "--rerank", "50")
    assert code == 0, text
    scoring = load_package(tmp_path / "tiny-recipe").features.scoring
    assert (scoring.segment_length, scoring.segment_hop, scoring.segment_tempo_scales,
            scoring.rerank) == (172, 86, (1.0,), 50)
    code, text = run_cli("weights", "copy", tiny_package, "bad", "--root", tmp_path,
                         "--segment-tempo-scales", "9")
    assert code == 2 and "segment_tempo_scales must be one or more numbers" in text
    assert not (tmp_path / "bad").exists()


def test_every_scoring_field_is_checked_in_a_package_config():
    import dataclasses

    from mirex_vi.config import SCORING_BOUNDS, from_dict

    listed = {f.name for f in dataclasses.fields(ScoringConfig)}
    assert set(SCORING_BOUNDS) == listed - {"segment_tempo_scales", "segment_rule", "chroma_key",
                                             "segment_source"}
    for name, allowed in SCORING_BOUNDS.items():
        below = allowed.low if allowed.low_open else allowed.low - 1
        for value in (below, allowed.high + 1):
            value = type(getattr(ScoringConfig(), name))(value)
            with pytest.raises(ValueError, match=rf"ScoringConfig\.{name} must be"):
                from_dict(FeatureConfig, {"scoring": {name: value}})
    with pytest.raises(ValueError, match="unknown ScoringConfig key"):
        from_dict(FeatureConfig, {"scoring": {"segment_lenght": 43}})
