"""tools/device-train.sh on the CPU: the carried cliques' store compressed and split into
parts, each part received in a call of its own (the last with the train call), the store
assembled and checked, two timed epochs and two tiny runs trained side by side, their packages
carried back as tar parts, one verified under its new name and recording the commit prepare
saw."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mirex_vi.features.pooled import PooledStore, write_store
from mirex_vi.train.checkpoint import git_commit

REPO = Path(__file__).resolve().parent.parent
TINY_RUN = ["--set", "model=tiny", "--set", "cliques_per_batch=2", "--set", "versions_per_clique=2",
            "--set", "epochs=1", "--set", "warmup_epochs=0", "--set", "num_workers=0",
            "--set", "memory_size=8", "--set", "amp=false"]


def _corpus(root: Path) -> Path:
    """A pooled u8 store of 6 training and 3 validation cliques of 2 versions, with the light
    metadata (records with more keys than training reads)."""
    rng = np.random.default_rng(3)
    items, splits = [], {"train": {}, "val": {}}
    for c in range(9):
        split = "train" if c < 6 else "val"
        pattern = rng.random((180, 84)) ** 4
        versions = []
        for v in range(2):
            yt = f"y{c:04d}v{v:02d}xx"
            items.append((yt, (np.roll(pattern, 7 * v, axis=0) + 0.1).astype(np.float32)))
            versions.append({"version_id": f"V-{c}-{v}", "youtube_id": yt, "soundfont": "x.sf2"})
        splits[split][f"C-{c:07d}"] = versions
    write_store(root, items, "u8")
    for split, cliques in splits.items():
        (root / f"Synth-VI-YT-light.json.{split}").write_text(json.dumps(cliques))
    return root


def _script(cwd: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "tools/device-train.sh", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def here(tmp_path):
    """A checkout with the script and the configs (a git repository, as prepare expects)."""
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    shutil.copy(REPO / "tools" / "device-train.sh", repo / "tools")
    shutil.copytree(REPO / "configs", repo / "configs")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "tools", "configs"], cwd=repo, check=True)
    return repo


def test_the_corpus_travels_in_parts_trains_and_comes_back_as_a_package(here, tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    env = dict(os.environ, CORPUS=str(corpus), PART_SIZE="40K", NO_WHEELS="1", INIT="",
               VAL_CLIQUES="2", VAL_INTO_TRAIN="1", PYTHON=sys.executable, PYTHONPATH=str(REPO),
               OUT=str(tmp_path / "out"))
    prepared = _script(here, "prepare", env=env)
    assert prepared.returncode == 0, prepared.stderr
    parts = sorted(p.name for p in (here / ".gpu").glob("part-*"))
    n_parts = len(parts)
    assert n_parts > 1 and prepared.stdout.count("device-train.sh receive") == n_parts - 1
    train = json.loads((here / ".gpu" / "meta" / "train.json").read_text())
    assert set(train["C-0000000"][0]) == {"version_id", "youtube_id"}
    val = json.loads((here / ".gpu" / "meta" / "val.json").read_text())
    assert sorted(val) == ["C-0000006", "C-0000007"]  # the third joined the training set
    assert sorted(train) == [f"C-{c:07d}" for c in (0, 1, 2, 3, 4, 5, 8)]
    recorded = here / ".gpu" / "meta" / "git_commit"
    assert recorded.read_text().strip() == (git_commit() or "unknown")
    recorded.write_text("0123abc\n")  # as if prepared at another commit than the device's .git

    # The device machine: each call brings its own part; .gpu-data stays between calls.
    there = tmp_path / "there"
    shutil.copytree(here, there, ignore=shutil.ignore_patterns(".gpu"))
    for name in parts:
        carried = [here / ".gpu" / name] + ([here / ".gpu" / "meta", here / ".gpu" / "whl"]
                                            if name == "part-00" else [])
        shutil.rmtree(there / ".gpu", ignore_errors=True)
        (there / ".gpu").mkdir()
        for path in carried:
            (shutil.copytree if path.is_dir() else shutil.copy)(path, there / ".gpu" / path.name)
        if name == parts[-1]:  # the train call carries the last part
            break
        received = _script(there, "receive", env=env)
        assert received.returncode == 0, received.stderr
    shutil.rmtree(there / ".gpu")
    early = _script(there, "train", "1", *TINY_RUN, env=env)
    assert early.returncode == 2 and f"only {n_parts - 1} of {n_parts} parts" in early.stderr
    (there / ".gpu").mkdir()
    shutil.copy(here / ".gpu" / parts[-1], there / ".gpu")
    # Two runs side by side, the second with its own seed.
    trained = _script(there, "train", "5", *TINY_RUN, "--vs", *TINY_RUN, "--set", "seed=5", env=env)
    assert trained.returncode == 0, trained.stderr + trained.stdout
    assert "2 run(s) of" in trained.stdout
    result = there / "runs" / "device-result"
    for run in ("1", "2"):
        assert (result / run / "probe.log").read_text().count("info: epoch ") == 2
    metrics = [(result / run / "metrics.jsonl").read_text() for run in ("1", "2")]
    assert metrics[0] != metrics[1]
    three = _script(there, "train", "5", *TINY_RUN, "--vs", *TINY_RUN, "--vs", *TINY_RUN, env=env)
    assert three.returncode == 2 and "at most two runs" in three.stderr
    store = PooledStore.open(there / ".gpu-data")
    assert np.array_equal(store.pooled("y0003v01xx", scaled=False),
                          PooledStore.open(corpus).pooled("y0003v01xx", scaled=False))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["result.tar.0"]

    collected = _script(here, "collect", str(tmp_path / "out"), "gpu-run", "2", env=env)
    assert collected.returncode == 0, collected.stderr
    package = json.loads((here / "weights" / "gpu-run" / "config.json").read_text())
    assert package["name"] == "gpu-run" and package["provenance"]["config"]["seed"] == 5
    assert package["provenance"]["git_commit"] == "0123abc"
    assert (here / "runs" / "device-result" / "1" / "train.log").is_file()
    again = _script(here, "collect", str(tmp_path / "out"), "gpu-run", env=env)
    assert again.returncode == 2 and "exists" in again.stderr
    absent = _script(here, "collect", str(tmp_path / "out"), "run-3", "3", env=env)
    assert absent.returncode == 2 and "no package of run 3" in absent.stderr


def test_a_corrupt_part_is_refused_before_training(here, tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    env = dict(os.environ, CORPUS=str(corpus), PART_SIZE="1M", NO_WHEELS="1", INIT="",
               PYTHON=sys.executable, PYTHONPATH=str(REPO), OUT=str(tmp_path / "out"))
    assert _script(here, "prepare", env=env).returncode == 0
    part = here / ".gpu" / "part-00"
    data = bytearray(part.read_bytes())
    data[-1] ^= 0xFF
    part.write_bytes(bytes(data))
    assert _script(here, "receive", env=env).returncode == 0
    refused = _script(here, "train", "1", *TINY_RUN, env=env)
    assert refused.returncode == 2 and "corrupt" in refused.stderr


def test_an_extension_adds_its_versions_to_the_carried_cliques(here, tmp_path):
    """EXTENSION (cliques with versions or works added by `corpus --extend`, each file's store
    beside it): those cliques carry every version, each version's rows the codes of the store
    that holds it."""
    corpus = _corpus(tmp_path / "corpus")
    kept = json.loads((corpus / "Synth-VI-YT-light.json.train").read_text())
    rng = np.random.default_rng(4)
    added = [(f"y0001v{v:02d}xx", (rng.random((90, 84)) + 0.1).astype(np.float32)) for v in (2, 3)]
    extension = tmp_path / "ext"
    write_store(extension, added, "u8")
    extended = {"C-0000001": kept["C-0000001"] + [{"version_id": f"C-0000001-V{v}", "youtube_id": yt}
                                                  for v, (yt, _) in zip((3, 4), added)]}
    (extension / "Synth-VI-YT-light.json.train").write_text(json.dumps(extended))
    env = dict(os.environ, CORPUS=str(corpus), NO_WHEELS="1", INIT="", PYTHON=sys.executable,
               PYTHONPATH=str(REPO), EXTENSION=str(extension / "Synth-VI-YT-light.json.train"))
    prepared = _script(here, "prepare", env=env)
    assert prepared.returncode == 0, prepared.stderr
    train = json.loads((here / ".gpu" / "meta" / "train.json").read_text())
    assert len(train) == 6 and len(train["C-0000001"]) == 4 and len(train["C-0000000"]) == 2
    carried = PooledStore.open(here / ".gpu" / "store")
    assert len(carried) == 6 * 2 + 2 + 3 * 2
    for source in (PooledStore.open(corpus), PooledStore.open(extension)):
        for yt in source.entries:
            assert np.array_equal(carried.pooled(yt), source.pooled(yt))
    # A second file, a new work (its own store), listed after the first: both join.
    grown = tmp_path / "grown"
    new_work = [(f"ynew0v{v}xxxx", (rng.random((70, 84)) + 0.1).astype(np.float32)) for v in (1, 2)]
    write_store(grown, new_work, "u8")
    (grown / "Synth-VI-YT-light.json.train").write_text(json.dumps({"C-0000099": [
        {"version_id": f"C-0000099-V{v}", "youtube_id": yt} for v, (yt, _) in zip((1, 2), new_work)]}))
    both = dict(env, EXTENSION=f"{extension / 'Synth-VI-YT-light.json.train'} {grown / 'Synth-VI-YT-light.json.train'}")
    assert _script(here, "prepare", env=both).returncode == 0
    train = json.loads((here / ".gpu" / "meta" / "train.json").read_text())
    assert len(train) == 7 and len(train["C-0000001"]) == 4 and len(train["C-0000099"]) == 2
    carried = PooledStore.open(here / ".gpu" / "store")
    assert all(np.array_equal(carried.pooled(yt), PooledStore.open(grown).pooled(yt)) for yt, _ in new_work)
    missing = _script(here, "prepare", env=dict(env, EXTENSION=str(tmp_path / "none.json")))
    assert missing.returncode == 2 and "expected a metadata file" in missing.stderr
    extended["C-0000001"].append({"version_id": "C-0000001-V5", "youtube_id": "notstoredxx"})
    (extension / "Synth-VI-YT-light.json.train").write_text(json.dumps(extended))
    unstored = _script(here, "prepare", env=env)
    assert unstored.returncode == 2 and "1 carried versions are in no store" in unstored.stderr
