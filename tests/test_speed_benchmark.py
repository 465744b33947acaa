"""benchmarks.speed.identify counts a package's scoring recipe in its bound."""

from __future__ import annotations

import torch

from benchmarks.speed.identify import model_inputs, recipe_cost
from mirex_vi.model.packaging import copy_package
from mirex_vi.model.weights import load_weights

CPU = torch.device("cpu")


def test_the_recipe_adds_its_extras_and_alignments_to_a_track_s_cost(tmp_path, tracks,
                                                                      tiny_package):
    inputs = model_inputs(tracks[:3])
    assert recipe_cost(load_weights(str(tiny_package)), inputs, CPU, 1000) == (0.0, 0.0, 0.0)
    with_recipe = tmp_path / "recipe"
    copy_package(tiny_package, with_recipe, (1.0,), {"segment_length": 43, "segment_hop": 22,
                                                     "rerank": 50})
    loaded = load_weights(str(with_recipe))
    extras_wall, align_wall, cpu = recipe_cost(loaded, inputs, CPU, 1000)
    assert extras_wall > 0 and align_wall > 0 and cpu > 0
    # A collection of 2 tracks re-ranks one candidate a query, not 50.
    _, align_two, _ = recipe_cost(loaded, inputs, CPU, 2)
    assert align_two < align_wall / 5
