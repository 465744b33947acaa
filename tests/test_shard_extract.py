"""``extract --shard I/N`` across machines, the merge of the shards' stores with
``--from-features``, and a killed shard rerun to the same bytes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from mirex_vi.features.extract import parse_shard, select_shard
from mirex_vi.features.pooled import PooledStore
from mirex_vi.synth import melody, write_audio

REPO = Path(__file__).resolve().parent.parent
MIREX_VI = REPO / ".venv" / "bin" / "mirex-vi"
IDS = [f"{c}{c}shard{v:04d}" for c in "dab" for v in range(2)]  # listed out of id order
STORE_FILES = ("pooled.u8.npy", "pooled.index.tsv")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    """Light metadata of three cliques of two versions (8 s melodies) and their audio."""
    root = tmp_path_factory.mktemp("shards")
    meta = {}
    for i, yid in enumerate(IDS):
        meta.setdefault(f"C-{i // 2}", []).append({"version_id": f"V-{i}", "youtube_id": yid})
        write_audio(root / "audio" / yid[:2] / f"{yid}.flac",
                    melody([55 + (i * 7 + k) % 19 for k in range(32)]))
    path = root / "light.json"
    path.write_text(json.dumps(meta))
    return path, root


def _extract(dataset, out, *extra) -> list[str]:
    meta, root = dataset
    return [str(MIREX_VI), "extract", str(out), "--metadata", str(meta), "--audio-root",
            str(root), "--pooled", "u8", "--workers", "1", "--quiet", *extra]


def _bytes(store: Path) -> dict[str, bytes]:
    return {name: (store / name).read_bytes() for name in STORE_FILES}


def test_shards_are_disjoint_cover_everything_and_ignore_the_listing_order():
    items = [(yid, Path(f"{yid}.flac")) for yid in IDS]
    shards = [select_shard(items, i, 4) for i in range(1, 5)]
    assert sorted(yid for shard in shards for yid, _ in shard) == sorted(IDS)
    assert [len(s) for s in shards] == [2, 2, 1, 1]
    assert shards[0] == [(yid, Path(f"{yid}.flac")) for yid in sorted(IDS)[::4]]
    assert select_shard(items[::-1], 2, 4) == shards[1]
    assert parse_shard("3/8") == (3, 8)


@pytest.mark.parametrize("shard", ["0/2", "3/2", "1", "a/2", "1/0", "-1/2"])
def test_a_bad_shard_is_one_error_line(dataset, tmp_path, shard):
    code, text = run_cli(*_extract(dataset, tmp_path / "out", "--shard", shard)[1:])
    assert code == 2 and text.strip().startswith("error: --shard") and "\n" not in text.strip()
    assert not (tmp_path / "out").exists()


def test_merged_shards_equal_one_extraction_and_a_killed_shard_reruns_to_the_same_bytes(
        dataset, tmp_path):
    whole = tmp_path / "whole"
    subprocess.run(_extract(dataset, whole), check=True)
    shards = [tmp_path / f"shard{i}" for i in (1, 2)]
    for i, shard in enumerate(shards, 1):
        subprocess.run(_extract(dataset, shard, "--shard", f"{i}/2"), check=True)
    first = _bytes(shards[0])

    # Kill shard 1 once it has begun writing its store, then run it again.
    again = tmp_path / "again"
    proc = subprocess.Popen(_extract(dataset, again, "--shard", "1/2"))
    deadline = time.time() + 60
    while time.time() < deadline and not list(again.glob(".*.tmp")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not any((again / name).exists() for name in STORE_FILES)  # nothing half-written
    subprocess.run(_extract(dataset, again, "--shard", "1/2"), check=True)
    assert _bytes(again) == first

    # The merge: every version once, the same features as the unsharded store, and the same
    # bytes whichever order the shards are named in.
    merged = [tmp_path / f"merged{k}" for k in (1, 2)]
    for out, order in zip(merged, (shards, shards[::-1])):
        code, text = run_cli("extract", out, "--pooled", "u8", *(
            arg for shard in order for arg in ("--from-features", shard)))
        assert code == 0 and f"wrote {len(IDS)} of {len(IDS)} versions" in text, text
    assert _bytes(merged[0]) == _bytes(merged[1])
    store, reference = PooledStore.open(merged[0]), PooledStore.open(whole)
    assert len(store) == len(IDS)
    for yid in IDS:
        np.testing.assert_array_equal(store.pooled(yid, scaled=False),
                                      reference.pooled(yid, scaled=False))


def test_a_shard_of_a_merge_is_refused(tmp_path):
    code, text = run_cli("extract", tmp_path / "out", "--pooled", "u8", "--from-features",
                         tmp_path, "--shard", "1/2")
    assert code == 2 and text.strip().startswith("error: --shard splits the extraction")
