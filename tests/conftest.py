"""Shared fixtures: synthetic tracks (from ``mirex_vi.synth``), a tiny weight package,
random and patterned pooled stores, the leftovers of a killed writer, running the command
line in-process (``mirex-vi weights`` commands on a store) and the benchmarks as modules."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mirex_vi.cli import main
from mirex_vi.config import MODEL_SIZES, FeatureConfig
from mirex_vi.features.pooled import write_store
from mirex_vi.model.cqtnet import CQTNet
from mirex_vi.model.packaging import write_package
from mirex_vi.synth import melody, write_audio

ROOT = Path(__file__).resolve().parents[1]


def write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(*args: str | Path) -> tuple[int, str]:
    """``mirex-vi ARGS`` in this process: exit code and stdout + stderr (each line once:
    click >= 8.2 already interleaves stderr into ``output``)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    stderr = result.stderr if result.stderr_bytes else ""
    return result.exit_code, result.output + ("" if stderr in result.output else stderr)


class DiskFull:
    """An ``atomic_open`` stand-in on a full disk: it fails on entry, as the first write would."""

    def __init__(self, path, *args, **kwargs):
        self.path = path

    def __enter__(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    def __exit__(self, *exc) -> bool:
        return False


def random_store(folder: Path, clique_sizes: list[int], seed: int = 2) -> Path:
    """``folder/store``, a u8 pooled store of random CQTs (150 frames), and
    ``folder/meta.json``, light metadata of cliques ``C-0, C-1, ...`` of the given sizes;
    returns ``folder``."""
    rng = np.random.default_rng(seed)
    ids = [f"v{i}xxxxxxxxx" for i in range(sum(clique_sizes))]
    write_store(folder / "store", ((yt, 10 ** rng.uniform(-4, 0, (150, 84)).astype(np.float32))
                                   for yt in ids), "u8")
    versions = iter(range(len(ids)))
    cliques = {f"C-{c}": [{"version_id": f"V-{i}", "youtube_id": ids[i]}
                          for i in (next(versions) for _ in range(size))]
               for c, size in enumerate(clique_sizes)}
    (folder / "meta.json").write_text(json.dumps(cliques))
    return folder


def derive_with_cli(verb: str, package: Path, store: Path, name: str, root: Path,
                    *options: str | Path, metadata: Path | None = None) -> tuple[int, str]:
    """``mirex-vi weights VERB PACKAGE`` on a :func:`random_store` folder (its ``meta.json``,
    or ``metadata``), written as ``name`` under ``root``: exit code and output."""
    return run_cli("weights", verb, package, "--metadata", metadata or store / "meta.json",
                   "--features-dir", store / "store", "--name", name, "--root", root, *options)


def patterned_split(folder: Path, n_cliques: int = 4, n_versions: int = 3) -> tuple[Path, Path]:
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
    path = folder / "split-light.json"
    path.write_text(json.dumps(meta))
    write_store(folder / "store", versions.items(), "u8")
    return path, folder / "store"


def run_benchmark(module: str, *args: str | Path,
                  timeout: float | None = None) -> subprocess.CompletedProcess:
    """``python -m benchmarks.MODULE ARGS`` from the repository root, its output captured."""
    return subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def run_device_smoke(module: str, tmp_path: Path, steps: list[str]) -> dict:
    """``benchmarks.device.MODULE --smoke`` on the CPU: its JSON report, once every one of
    ``steps`` (in that order) is there and ran without error."""
    report_path = tmp_path / "report.json"
    proc = run_benchmark(f"device.{module}", "--smoke", "--device", "cpu", "--out", report_path,
                         "--work", tmp_path / "work", timeout=600)
    report = json.loads(report_path.read_text())
    assert list(report["steps"]) == steps
    failed = {k: v["error"] for k, v in report["steps"].items() if not v["ok"]}
    assert not failed and proc.returncode == 0, (failed, proc.stdout[-2000:], proc.stderr[-2000:])
    return report


def run_test_subsets(meta: Path, store: Path, package: Path, out: Path,
                     *options: str) -> dict[str, dict]:
    """``benchmarks.quality.test_subsets``'s figures of ``package`` on a split, by subset
    (its ``--json``, written to ``out``)."""
    proc = run_benchmark("quality.test_subsets", "--metadata", meta, "--features-dir", store,
                         "--weights", package, *options, "--json", out)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())[str(package)]


def leave_temporaries(folder: Path) -> tuple[Path, Path]:
    """Hidden ``atomic_open``-style temporaries under ``folder`` as a SIGKILLed writer leaves
    them: one two hours old (stale), one just written (a concurrent writer's)."""
    folder.mkdir(parents=True, exist_ok=True)
    stale, fresh = folder / ".entry.npy.abc123.tmp", folder / ".entry.npy.def456.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    two_hours_ago = os.stat(stale).st_mtime - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    return stale, fresh


def noise_tracks(folder: Path, n: int = 12) -> list[Path]:
    """``n`` WAVs of 20 s of seeded noise: slow enough to embed for a run to be killed midway."""
    rng = np.random.default_rng(0)
    return [write_audio(folder / f"{i:02d}.wav",
                        (0.1 * rng.standard_normal(22050 * 20)).astype(np.float32))
            for i in range(n)]


def kill_midway(cmd: list[str], cache: Path, entries: int = 3) -> int:
    """Run ``cmd``, SIGKILL it once ``cache`` holds ``entries`` ``.npy`` files, and return
    how many it holds then."""
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.rglob("*.npy"))) < entries:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list(cache.rglob("*.npy")))


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory) -> Path:
    """A verified package of the tiny model with random (seeded) weights."""
    torch.manual_seed(0)
    model = CQTNet(MODEL_SIZES["tiny"])
    folder = tmp_path_factory.mktemp("weights") / "tiny-test"
    write_package(folder, model.state_dict(), model.cfg, FeatureConfig(),
                  {"note": "random weights for tests"}, "# tiny-test\n")
    return folder


@pytest.fixture()
def tracks(tmp_path) -> list[Path]:
    """Four short WAV tracks: two melodies and their transpositions, one at 44.1 kHz stereo."""
    tune_a = [60, 62, 64, 65, 67, 65, 64, 62] * 2
    tune_b = [57, 57, 64, 64, 66, 66, 64, 62] * 2
    folder = tmp_path / "audio dir"
    paths = [
        write_audio(folder / "a.wav", melody(tune_a)),
        write_audio(folder / "a up 3.wav", melody([n + 3 for n in tune_a])),
        write_audio(folder / "b.flac", melody(tune_b)),
    ]
    stereo = melody([n - 2 for n in tune_b], sr=44100)
    paths.append(write_audio(folder / "b-ünïcode.wav", np.stack([stereo, stereo], 1), sr=44100))
    return paths


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A corpus of two works with two 4-s versions each (``render_support.SMALL``); the tests
    that use it are marked ``needs_render``."""
    from mirex_vi.corpus.driver import CorpusSpec, build_corpus
    from render_support import SMALL

    out = tmp_path_factory.mktemp("small-corpus")
    build_corpus(out, CorpusSpec(**SMALL))
    return out
