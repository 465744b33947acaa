"""Weight-space blends of two packages (``weights blend``): the line between their weights."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from mirex_vi.config import FeatureConfig, ModelConfig
from mirex_vi.model.cqtnet import MODEL_SIZES, CQTNet
from mirex_vi.model.packaging import write_package
from mirex_vi.model.weights import WeightsError, load_package
from mirex_vi.train.blend import blend_states


@pytest.fixture(scope="module")
def two_packages(tmp_path_factory):
    """Two tiny-model packages with different random weights and BatchNorm statistics."""
    folder = tmp_path_factory.mktemp("blend")
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = CQTNet(MODEL_SIZES["tiny"])
        state = model.state_dict()
        for key, value in state.items():
            if key.endswith(("running_mean", "running_var")):
                value.uniform_(0.5, 2.0)
        paths.append(folder / f"p{seed}")
        write_package(paths[-1], state, model.cfg, FeatureConfig(), {"seed": seed}, "# p\n")
    return paths


def blend(source, other, weight, root, name="b"):
    return run_cli("weights", "blend", source, other, "--weight", str(weight), "--name", name,
                   "--root", root)


def test_the_ends_are_the_two_packages_and_the_middle_their_mean(two_packages, tmp_path):
    a, b = (load_package(p).model.state_dict() for p in two_packages)
    for weight, name in ((0, "w0"), (1, "w1"), (0.25, "w25")):
        code, text = blend(*two_packages, weight, tmp_path, name)
        assert code == 0, text
    w0, w1, w25 = (load_package(tmp_path / n).model.state_dict() for n in ("w0", "w1", "w25"))
    floats = [k for k in a if a[k].is_floating_point()]
    assert any(k.endswith("running_var") for k in floats)  # the statistics blend too
    for key in floats:
        assert torch.equal(w0[key], a[key]) and torch.allclose(w1[key], b[key])
        assert torch.allclose(w25[key], 0.75 * a[key] + 0.25 * b[key], atol=1e-6)
    for key in set(a) - set(floats):  # num_batches_tracked: the source's
        assert torch.equal(w25[key], a[key])


def test_the_blend_is_a_package_that_says_what_it_blends(two_packages, tmp_path):
    code, text = blend(*two_packages, 0.5, tmp_path)
    assert code == 0, text
    provenance = json.loads((tmp_path / "b" / "config.json").read_text())["provenance"]
    shas = [load_package(p).sha256 for p in two_packages]
    assert provenance["blend"] == {"from_sha256": shas[0], "other": "p2",
                                   "other_sha256": shas[1], "weight": 0.5}
    assert provenance["seed"] == 1  # the source's provenance is kept
    assert "## Weight-space blend" in (tmp_path / "b" / "MODEL_CARD.md").read_text()
    code, text = blend(*two_packages, 0.5, tmp_path)
    assert code == 2 and "exists" in text  # never replaced


def test_a_weight_outside_zero_to_one_or_another_model_is_refused(two_packages, tmp_path):
    code, text = blend(*two_packages, 1.5, tmp_path)
    assert code == 2 and "1.5" in text and not (tmp_path / "b").exists()
    torch.manual_seed(0)
    small = CQTNet(ModelConfig(channels=MODEL_SIZES["tiny"].channels, embedding_dim=32))
    write_package(tmp_path / "other", small.state_dict(), small.cfg, FeatureConfig(), {}, "#\n")
    code, text = blend(two_packages[0], tmp_path / "other", 0.5, tmp_path)
    assert code == 2 and "only one model's weights blend" in text and "Traceback" not in text
    assert not (tmp_path / "b").exists()


def test_states_with_other_tensors_are_refused():
    a = {"w": torch.ones(2, 2), "v": torch.ones(3)}
    with pytest.raises(WeightsError, match="different tensors"):
        blend_states(a, {"w": torch.ones(2, 2)}, 0.5)
    with pytest.raises(WeightsError, match="shape"):
        blend_states(a, {"w": torch.ones(2, 3), "v": torch.ones(3)}, 0.5)
