"""The GPU path's throughput (issue #44): 1,000 synthetic 3.5-min WAVs through ``identify``.

    python -m benchmarks.device.throughput --out throughput.json            # one CUDA device
    python -m benchmarks.device.throughput --smoke --device cpu --out s.json  # any machine

1. versions: torch, CUDA, the GPU, the cores;
2. synthesis: ``--tracks`` random melodies (``mirex_vi.synth.random_melody``) of
   ``--seconds`` as 16-bit 22.05 kHz WAVs, written in parallel, then ``os.sync()`` (so no
   file-system sync inside a timed run writes them);
3. ``mirex-vi identify`` (a fresh process, as MIREX runs it: start-up included) with the
   package (the shipped default: one pass with its scoring recipe), then with a plain
   copy at one tempo (the authors' scoring);
4. the package's embedding in this process (``embed_tracks``), timed per track: the steady
   rate between the first tenth of the tracks and the last;
5. each stage alone, on the same files: decoding in the workers, the torch front end in
   batches, the model in batches at the package's tempi (which stage bounds the rest);
6. agreement: the fp32 CPU path (librosa CQT, fp32 model) on ``--cpu-tracks`` of the tracks
   against step 3's matrix, as the largest ``|d²|`` change, within
   ``runtime.tolerance(device, amp).backend``;
7. the authors' recipe (``benchmarks.speed.identify.serial_reference``: one track at a time,
   their model class, one pass) on ``--serial-tracks`` tracks: the speed-up of step 3.

The JSON report is rewritten after every step. On the CPU (``--smoke``: a random tiny
model, seconds of audio) it checks the script's code in about 20 s.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import plain_one_pass, sync
from benchmarks.device.gpu_check import versions
from benchmarks.device.harness import (Report, device_run_parser, random_tiny_package,
                                       run_device, write_track)
from benchmarks.speed.identify import serial_reference
from mirex_vi.core.runtime import tolerance
from mirex_vi.features.frontend import TorchFrontEnd
from mirex_vi.features.workers import iter_files
from mirex_vi.inference.embed import embed_inputs
from mirex_vi.inference.tracks import embed_tracks
from mirex_vi.inference.settings import EmbedSettings
from mirex_vi.io.matrix import read_distance_matrix
from mirex_vi.model.weights import load_weights


@dataclasses.dataclass(frozen=True)
class Sizes:
    tracks: int
    seconds: float
    cpu_tracks: int  # step 6
    serial_tracks: int  # step 7
    stage_tracks: int  # step 5: files decoded; also the front end's and model's inputs
    workers: int


FULL = Sizes(tracks=1000, seconds=210.0, cpu_tracks=16, serial_tracks=32, stage_tracks=256,
             workers=os.cpu_count() or 1)
SMOKE = Sizes(tracks=3, seconds=6.0, cpu_tracks=2, serial_tracks=2, stage_tracks=3, workers=1)


def synthesis(work: Path, sizes: Sizes) -> dict:
    paths = [work / "audio" / f"track{i:05d}.wav" for i in range(sizes.tracks)]
    (work / "audio").mkdir(parents=True, exist_ok=True)
    jobs = [(str(p), i, sizes.seconds) for i, p in enumerate(paths)]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(sizes.workers) as pool:
        pool.map(write_track, jobs, chunksize=4)
    os.sync()
    (work / "collection.txt").write_text("".join(f"{p}\n" for p in paths))
    return dict(tracks=len(paths), seconds_each=sizes.seconds,
                gib=round(sum(p.stat().st_size for p in paths) / 2**30, 2),
                synthesis_s=round(time.perf_counter() - t0, 1))


def cli_identify(work: Path, name: str, weights: str | None, device: torch.device,
                 sizes: Sizes) -> dict:
    """``mirex-vi identify`` of the collection against itself in a fresh process."""
    collection = work / "collection.txt"
    cmd = [sys.executable, "-m", "mirex_vi", "identify", str(collection), str(collection),
           str(work / f"{name}.txt"), "--workdir", str(work / f"{name}.work"), "--quiet",
           "--device", str(device), "--workers", str(sizes.workers)]
    cmd += ["--weights", weights] if weights else []
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"identify exited {done.returncode}: {done.stderr[-2000:]}")
    return dict(seconds=round(seconds, 2), tracks_per_s=round(sizes.tracks / seconds, 1),
                stderr=done.stderr[-1500:], target_100_tracks_per_s=sizes.tracks / seconds >= 100)


def _paths(work: Path) -> list[Path]:
    return [Path(line) for line in (work / "collection.txt").read_text().splitlines()]


def steady_rate(work: Path, weights: str | None, device: torch.device, sizes: Sizes) -> dict:
    """The package's embedding run in this process, with the time of every finished track."""
    loaded, paths = load_weights(weights), _paths(work)
    settings = EmbedSettings.resolve(device, workers=sizes.workers)
    stamps: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    run = embed_tracks(paths, loaded, settings, on_track=lambda: stamps.append(time.perf_counter()))
    first = len(stamps) // 10
    steady = (len(stamps) - 1 - first) / max(stamps[-1] - stamps[first], 1e-9)
    out = dict(settings=str(settings), errors=len(run.errors), seconds=round(stamps[-1] - t0, 2),
               first_track_s=round(stamps[0] - t0, 2), steady_tracks_per_s=round(steady, 1))
    if device.type == "cuda":
        out["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return out


def stage_limits(work: Path, weights: str | None, device: torch.device, sizes: Sizes) -> dict:
    """Tracks/s of each stage alone: workers' decoding, the front end, the model."""
    loaded, paths = load_weights(weights), _paths(work)[: sizes.stage_tracks]
    settings = EmbedSettings.resolve(device, workers=sizes.workers)
    t0 = time.perf_counter()
    audios = [r.audio for r in iter_files(paths, loaded.features, sizes.workers, decode_only=True)]
    decode = len(audios) / (time.perf_counter() - t0)
    front_end, b = TorchFrontEnd(loaded.features, device), settings.batch_size
    front_end.batch(audios[:b])  # first-call costs (cuFFT plans)
    sync(device)
    t0, inputs = time.perf_counter(), []
    for start in range(0, len(audios), b):
        inputs += front_end.batch(audios[start : start + b])
    sync(device)
    cqt = len(audios) / (time.perf_counter() - t0)
    model, scales = loaded.model.to(device).eval(), loaded.features.tempo_scales
    embed_inputs(model, inputs[:b], device, settings.amp, b, scales)
    sync(device)
    t0 = time.perf_counter()
    embed_inputs(model, inputs, device, settings.amp, b, scales)
    sync(device)
    return dict(batch=b, tracks=len(audios), decode_tracks_per_s=round(decode, 1),
                front_end_tracks_per_s=round(cqt, 1),
                model_tracks_per_s=round(len(audios) / (time.perf_counter() - t0), 1))


def agreement(work: Path, weights: str | None, device: torch.device, sizes: Sizes) -> dict:
    """The fp32 CPU path against the device's matrix (step 3) on the first tracks."""
    k, paths = sizes.cpu_tracks, _paths(work)[: sizes.cpu_tracks]
    cpu = torch.device("cpu")
    settings = EmbedSettings.resolve(cpu, workers=sizes.workers, cqt_backend="librosa")
    run = embed_tracks(paths, load_weights(weights), settings)
    emb = run.embeddings
    reference = 2 - 2 * emb @ emb.T  # (k, k) d² on the CPU
    d = read_distance_matrix(work / "shipped.txt").distances[:k, :k]
    change = float(np.abs(d**2 - reference)[~np.eye(k, dtype=bool)].max())
    allowed = tolerance(device.type, EmbedSettings.resolve(device).amp).backend
    return dict(tracks=k, cpu_errors=len(run.errors), max_d2_change=change, tolerance=allowed,
                within_tolerance=change <= allowed)


def authors_recipe(work: Path, weights: str | None, device: torch.device, sizes: Sizes,
                   shipped_tracks_per_s: float | None) -> dict:
    paths = _paths(work)[: sizes.serial_tracks]
    t0 = time.perf_counter()
    serial_reference(paths, weights, device, work / "serial.txt")
    rate = len(paths) / (time.perf_counter() - t0)
    out = dict(tracks=len(paths), tracks_per_s=round(rate, 2))
    if shipped_tracks_per_s:
        out["speedup_of_identify"] = round(shipped_tracks_per_s / rate, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = device_run_parser(__doc__.splitlines()[0], "tiny sizes and model (any device)")
    parser.add_argument("--tracks", type=int, help="tracks [default: 1000]")
    parser.add_argument("--seconds", type=float, help="seconds per track [default: 210]")
    parser.add_argument("--weights", help="package [default: the shipped one]")
    args = parser.parse_args(argv)
    device = run_device(parser, args, "run")
    sizes = SMOKE if args.smoke else FULL
    sizes = dataclasses.replace(sizes, tracks=args.tracks or sizes.tracks,
                                seconds=args.seconds or sizes.seconds)
    report = Report(args.out, device, sizes, args.smoke)
    steps = report.data["steps"]
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        weights = str(random_tiny_package(work)) if args.smoke else args.weights
        one_pass = plain_one_pass(weights, work / "one-pass")
        report.run("1_versions", versions, device)
        report.run("2_synthesis", synthesis, work, sizes)
        report.run("3_identify_shipped", cli_identify, work, "shipped", weights, device, sizes)
        report.run("3_identify_one_pass", cli_identify, work, "one-pass", str(one_pass), device,
                   sizes)
        report.run("4_steady_rate", steady_rate, work, weights, device, sizes)
        report.run("5_stage_limits", stage_limits, work, weights, device, sizes)
        report.run("6_agreement", agreement, work, weights, device, sizes)
        report.run("7_authors_recipe", authors_recipe, work, weights, device, sizes,
                   steps["3_identify_shipped"].get("tracks_per_s"))
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
