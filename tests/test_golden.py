"""Stored reference outputs: a change to the features or the model that moves them fails.

The values come from ``tests/create_golden.py`` (which says when to regenerate them).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from create_golden import GOLDEN, reference, write_authors_checkpoint

from mirex_vi.model.weights import DEFAULT_WEIGHTS, load_weights

ATOL = 1e-5  # fp32 on the CPU, pinned torch and librosa


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def _assert_matches(got: dict, want: dict) -> None:
    assert got["input_shape"] == want["input_shape"], "the model input's shape changed"
    np.testing.assert_allclose(got["input_bin_means"], want["input_bin_means"], atol=ATOL,
                               err_msg="the features changed (CQT or preprocess)")
    np.testing.assert_allclose(got["embedding"], want["embedding"], atol=ATOL,
                               err_msg="the embedding changed (model or weights loading)")


@pytest.mark.slow
def test_shipped_package_gives_the_golden_embedding(golden):
    want = golden["shipped"]
    assert want["name"] == DEFAULT_WEIGHTS
    sha = load_weights(DEFAULT_WEIGHTS).sha256
    assert sha == want["sha256"], (
        "the shipped weights were replaced: regenerate with `python tests/create_golden.py`")
    _assert_matches(reference(DEFAULT_WEIGHTS), want)


@pytest.mark.slow
def test_authors_format_checkpoint_gives_the_golden_embedding(golden, tmp_path):
    checkpoint = write_authors_checkpoint(tmp_path / "model_checkpoint.pth")
    _assert_matches(reference(checkpoint), golden["authors_format"])


def test_golden_record_says_how_it_was_made(golden):
    assert golden["made_by"] == "python tests/create_golden.py"
    assert len(golden["shipped"]["embedding"]) == 512
    assert abs(np.linalg.norm(golden["authors_format"]["embedding"]) - 1) < 1e-5
