"""WCCN folded into the last layer: the scatter, the transform, the fold, the package."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import derive_with_cli, random_store

from mirex_vi.eval.evaluate import embed_cliques
from mirex_vi.io.metadata import read_metadata
from mirex_vi.model.cqtnet import CQTNet
from mirex_vi.model.weights import load_package
from mirex_vi.train.whiten import LAST_LAYER, within_clique_scatter, wccn_transform


def test_the_scatter_averages_offsets_from_each_cliques_mean_and_skips_singletons():
    emb = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [9.0, 9.0]])
    scatter = within_clique_scatter(emb, ["a", "a", "b", "b", "c"])  # c: one version
    # offsets: (-1, 0), (1, 0), (0, -1), (0, 1) over 4 tracks
    assert torch.allclose(scatter, torch.tensor([[0.5, 0.0], [0.0, 0.5]], dtype=torch.float64))
    with pytest.raises(ValueError, match="no clique has two versions"):
        within_clique_scatter(emb[:2], ["a", "b"])


def test_the_transform_whitens_without_shrinkage_and_tends_to_a_scaled_identity():
    rng = np.random.default_rng(0)
    mix = torch.from_numpy(rng.normal(size=(6, 6)))
    scatter = mix @ mix.T + 0.1 * torch.eye(6, dtype=torch.float64)
    w = wccn_transform(scatter, shrinkage=1e-12)
    assert torch.allclose(w @ scatter @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-6)
    w = wccn_transform(scatter, shrinkage=1e6)
    assert torch.allclose(w / w[0, 0], torch.eye(6, dtype=torch.float64), atol=1e-3)


@pytest.fixture()
def store(tmp_path):
    """A u8 store and light metadata: three cliques of three versions, one of one (random CQTs)."""
    return random_store(tmp_path, [3, 3, 3, 1])


def test_the_command_folds_the_transform_into_the_last_layer_only(store, tiny_package):
    out = store / "weights"
    code, text = derive_with_cli("whiten", tiny_package, store, "w", out,
                                 "--shrinkage", "0.5", "--device", "cpu")
    assert code == 0, text
    assert "measured on 9 tracks" in text  # the one-version clique is left out
    new, old = load_package(out / "w"), load_package(tiny_package)
    old_state, new_state = old.model.state_dict(), new.model.state_dict()
    assert set(old_state) == set(new_state)
    assert [k for k in old_state if not torch.equal(old_state[k], new_state[k])] == [LAST_LAYER]

    x = torch.rand(3, 1, 84, CQTNet.min_pooled_frames)
    with torch.inference_mode():
        before, after = old.model(x), new.model(x)
    # The new model's embedding is the old one, transformed and normalised again.
    emb, labels = embed_cliques(old.model, old.features, {c: v for c, v in read_metadata(
        store / "meta.json").items() if len(v) > 1}, store / "store", torch.device("cpu"),
        amp=False, progress=False)
    w = wccn_transform(within_clique_scatter(emb, labels), 0.5).float()
    assert torch.allclose(after, torch.nn.functional.normalize(before @ w.T, dim=1), atol=1e-5)

    provenance = json.loads((out / "w" / "config.json").read_text())["provenance"]
    assert provenance["wccn"] == {"from_sha256": old.sha256, "metadata": str(store / "meta.json"),
                                  "tracks": 9, "shrinkage": 0.5, "seed": 0}
    card = (out / "w" / "MODEL_CARD.md").read_text()
    assert "## Within-clique covariance normalisation" in card

    code, text = derive_with_cli("whiten", tiny_package, store, "w", out)
    assert code == 2 and "exists" in text  # never replaced


def test_metadata_without_a_clique_of_two_is_one_line_and_leaves_no_package(store, tiny_package):
    singles = store / "singles.json"
    singles.write_text(json.dumps({"C-3": [{"version_id": "V-9", "youtube_id": "v9xxxxxxxxx"}]}))
    code, text = derive_with_cli("whiten", tiny_package, store, "w", store / "out",
                                 metadata=singles)
    assert code == 2 and "no clique has two versions" in text and "Traceback" not in text
    assert not (store / "out" / "w").exists()

