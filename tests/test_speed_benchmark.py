"""benchmarks.speed.identify counts a package's scoring recipe in its bound, and start-up apart."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.speed.identify import model_inputs, recipe_cost, row
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


def test_the_share_after_start_up_leaves_out_only_the_start_up():
    # 100 tracks in 40 s, 5 of them start-up, on 2 cores at 0.5 core-seconds a track: the
    # bound is 4 tracks/s, the share 100 / 40 / 4, and 100 / 35 / 4 after start-up.
    r = row("p", 100, 40.0, 70.0, 0.5, 0.6, 2, startup=5.0)
    assert (r.tracks_per_s, r.bound) == (2.5, 4.0)
    assert r.share == pytest.approx(0.625)
    assert r.share_after_startup == pytest.approx(100 / 35 / 4)
    assert row("p", 100, 40.0, 70.0, 0.5, 0.6, 2).share_after_startup == pytest.approx(r.share)
    # A run no longer than its start-up (a loaded machine) has no share after it.
    assert math.isnan(row("p", 3, 4.0, 7.0, 0.5, 0.6, 2, startup=5.0).share_after_startup)
