"""Embedding at several tempi (``FeatureConfig.tempo_scales``): the resampling, the
average, the package setting that turns it on, and the cache key that follows it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli, write_list

from mirex_vi.config import MODEL_SIZES, FeatureConfig, TrainConfig, from_dict, to_dict
from mirex_vi.features.tempo import at_tempo, stretch_time
from mirex_vi.inference.embed import embed_batch
from mirex_vi.model.cqtnet import CQTNet
from mirex_vi.model.weights import load_weights

SCALES = (0.7, 1.0, 1.4)


def _inputs(n: int, frames: int, seed: int = 0) -> torch.Tensor:
    """``(n, 1, 84, frames)`` max-normalised random model inputs."""
    x = torch.rand(n, 1, 84, frames, generator=torch.Generator().manual_seed(seed))
    return x / x.amax(dim=(1, 2, 3), keepdim=True)


def test_tempo_scales_come_from_json_and_yaml_and_go_back_as_lists():
    cfg = from_dict(FeatureConfig, {"tempo_scales": [0.7, 1, 1.4]})
    assert cfg.tempo_scales == SCALES and FeatureConfig().tempo_scales == (1.0,)
    assert to_dict(cfg)["tempo_scales"] == list(SCALES)
    assert "tempo_scales: [1.0]" in yaml.safe_dump(to_dict(TrainConfig()), default_flow_style=None)


@pytest.mark.parametrize("bad", [[], [0], [0.1], [5], [float("nan")], ["1"], [True]])
def test_tempo_scales_out_of_range_are_refused_by_name(bad):
    with pytest.raises(ValueError, match=r"FeatureConfig.tempo_scales must be one or more numbers"):
        from_dict(FeatureConfig, {"tempo_scales": bad})


def test_at_tempo_resamples_time_as_the_training_stretch_does():
    x = _inputs(2, 300)
    slow = at_tempo(x, 1.4, CQTNet.min_pooled_frames)
    assert slow.shape == (2, 1, 84, 420)
    for i in range(2):
        want = stretch_time(x[i, 0].T.numpy(), 1.4).T  # (84, 420)
        np.testing.assert_allclose(slow[i, 0].numpy(), want / want.max(), atol=1e-4)  # fp32 index
    assert torch.allclose(slow.amax(dim=(1, 2, 3)), torch.ones(2))  # max-normalised again


def test_at_tempo_pads_a_short_result_to_the_models_shortest_input():
    x = _inputs(1, 200)
    fast = at_tempo(x, 0.7, CQTNet.min_pooled_frames)
    assert fast.shape[-1] == CQTNet.min_pooled_frames > 140
    assert fast[..., :140].amax() == 1 and not fast[..., 140:].any()


def test_one_plain_pass_is_the_model_itself():
    model = CQTNet(MODEL_SIZES["tiny"]).eval()
    x = _inputs(3, 250)
    with torch.inference_mode():
        assert torch.equal(embed_batch(model, x), model(x))
        twice = embed_batch(model, x, (1.0, 1.0))  # the mean of one embedding with itself
        np.testing.assert_allclose(twice.numpy(), model(x).numpy(), atol=1e-5)


def test_several_tempi_give_a_unit_vector_that_ignores_their_order():
    model = CQTNet(MODEL_SIZES["tiny"]).eval()
    x = _inputs(3, 250)
    with torch.inference_mode():
        several = embed_batch(model, x, SCALES)
        reordered = embed_batch(model, x, SCALES[::-1])
        plain = model(x)
    np.testing.assert_allclose(several.norm(dim=1).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(several.numpy(), reordered.numpy(), atol=1e-6)
    assert not torch.allclose(several, plain, atol=1e-3)


def test_weights_copy_sets_the_tempi_and_identify_follows_them(tmp_path, tracks, tiny_package):
    code, out = run_cli("weights", "copy", tiny_package, "tta", "--root", tmp_path / "w",
                        "--tempo-scales", "0.7,1,1.4")
    assert code == 0, out
    copy, original = load_weights(tmp_path / "w" / "tta"), load_weights(tiny_package)
    assert copy.features.tempo_scales == SCALES and copy.sha256 == original.sha256
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks])
    work = ("--workdir", tmp_path / "work", "--workers", "1")
    matrices = []
    for package in (tiny_package, tmp_path / "w" / "tta"):  # the same weights, one cache
        code, out = run_cli("identify", collection, collection, tmp_path / "out.txt",
                            "--weights", package, *work)
        assert code == 0 and "(0 embeddings from cache)" in out, out  # another key
        matrices.append((tmp_path / "out.txt").read_text())
    assert matrices[0] != matrices[1]


@pytest.mark.parametrize("value, message", [("0.7,x", "not a comma-separated list"),
                                            ("", "not a comma-separated list"),
                                            ("0.7,9", "tempo_scales must be one or more")])
def test_weights_copy_refuses_bad_tempi_and_writes_nothing(tmp_path, tiny_package, value, message):
    code, out = run_cli("weights", "copy", tiny_package, "tta", "--root", tmp_path / "w",
                        "--tempo-scales", value)
    assert code == 2 and message in out, out
    assert not (tmp_path / "w" / "tta").exists()
