"""The benchmarks that score packages on a labelled split (benchmarks/split_embedding.py and
its users): their figures are ``mirex-vi evaluate``'s on the same cliques."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from mirex_vi.evaluate import evaluate_features
from mirex_vi.pooled import write_store

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from pair_breakdown import ranks_of_pairs  # noqa: E402


def _split(tmp_path: Path, n_cliques: int = 4, n_versions: int = 3) -> tuple[Path, Path]:
    """A light JSON split of works ``C-0000000`` ... and a u8 store of their pooled CQTs, each
    clique a noisy copy of its own random pattern."""
    rng = np.random.default_rng(0)
    meta, versions = {}, {}
    for c in range(n_cliques):
        pattern = rng.random((180, 84))
        clique = f"C-{c:07d}"
        meta[clique] = [{"version_id": f"{clique}-V{v}", "youtube_id": f"yt{c:04d}v{v:04d}"}
                        for v in range(n_versions)]
        for record in meta[clique]:
            noise = rng.random((180, 84))
            versions[record["youtube_id"]] = (0.6 * pattern + 0.4 * noise).astype(np.float32)
    path = tmp_path / "split-light.json"
    path.write_text(json.dumps(meta))
    write_store(tmp_path / "store", versions.items(), "u8")
    return path, tmp_path / "store"


def test_test_subsets_scores_each_subset_as_evaluate_does(tmp_path, tiny_package):
    meta, store = _split(tmp_path)
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "test_subsets.py"), "--metadata", meta,
                           "--features-dir", store, "--weights", tiny_package, "--bounds", "2",
                           "--json", out], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())[str(tiny_package)]
    assert set(figures) == {"all", "< 2", ">= 2"}
    first_two = tmp_path / "first-two.json"
    first_two.write_text(json.dumps({c: v for c, v in json.loads(meta.read_text()).items()
                                     if c < "C-0000002"}))
    for name, subset in (("all", meta), ("< 2", first_two)):
        expected = evaluate_features(subset, store, str(tiny_package), "cpu", amp=False,
                                     progress=False)[0].summary()
        assert figures[name]["n_queries"] == expected["n_queries"]
        assert figures[name]["map"] == expected["map"]


def test_pair_ranks_count_only_other_works_above():
    # Two works of two versions each, on the unit circle.
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    pairs = ranks_of_pairs(emb, ["a", "a", "b", "b"])
    ranks = {(q, r): rank for q, r, rank in pairs}
    assert ranks[(0, 1)] == 2  # 0.6 < 0.8 (version 2, work b)
    assert ranks[(1, 0)] == 3  # 0.6 < 0.96 and 0.8
    assert ranks[(2, 3)] == 3  # 0.6 < 0.8 and 0.96
    assert ranks[(3, 2)] == 2  # 0.6 < 0.8 (version 1, work a)
    assert len(pairs) == 4
