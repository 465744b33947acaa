"""The prepared device check of the GPU path (issue #19): eight steps, one JSON report.

    python -m benchmarks.device.gpu_check --out gpu_check.json                 # one CUDA device
    python -m benchmarks.device.gpu_check --smoke --device cpu --out smoke.json  # any machine

1. versions: Python, torch, CUDA, cuDNN, the driver, the GPU;
2. TorchCQT against librosa on 180-s and 20-min piano-like signals: relative error overall
   and per octave, time, peak device memory of the CQT and of the whole front end;
3. 300 distinct lengths through the front end and the model (AMP): device memory and the
   number of cuFFT plans as they go;
4. AMP against fp32 embeddings (TF32 off) with the shipped weights, batch 16 against batch 1,
   CUDA fp32 against the CPU, and the self-check's figures (``selfcheck.measure_agreement``);
5. ``identify`` on 1,000 synthetic 3.5-min tracks with ``--cqt torch`` and ``--cqt librosa``
   in separate workdirs (in this process: interpreter start not included), against the
   serial reference of ``benchmarks.speed.identify`` on a subset: tracks/s, matrix agreement,
   top-10 overlap;
6. a short AMP training run on a small synthetic pooled store: loss, scaler state, export;
7. a run checkpointed on the CPU resumed on the device;
8. a one-rank NCCL (gloo on the CPU) process group with the model wrapped in DDP.

Each step is timed; one that fails records its error and the next step runs. The report is
rewritten after every step, so a run stopped at its time limit keeps the steps it finished.
On one H200 (16 cores) the full sizes with ``--tracks 200`` took 151 s, step 5 45 s of it
(benchmarks/results/gpu_check-h200-2026-12-04.json); 1,000 tracks have not run there.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import relative_error, sync
from benchmarks.device.gpu_check_training import amp_training, ddp_one_rank, resume_from_cpu
from benchmarks.device.harness import (Report, device_run_parser, random_tiny_package,
                                       run_device, write_track)
from benchmarks.speed.identify import serial_reference
from mirex_vi.config import FeatureConfig
from mirex_vi.core.runtime import FFT_PLAN_CACHE_SIZE, disable_tf32_without_amp, tolerance
from mirex_vi.features.cqt_torch import TorchCQT
from mirex_vi.features.frontend import PackedAudio, TorchFrontEnd, librosa_cqt
from mirex_vi.inference.embed import embed_inputs
from mirex_vi.inference.identify import identify, prepare
from mirex_vi.inference.selfcheck import measure_agreement
from mirex_vi.inference.settings import EmbedSettings
from mirex_vi.io.matrix import read_distance_matrix
from mirex_vi.model.weights import LoadedWeights, load_weights
from mirex_vi.synth import SR, piano_like
from mirex_vi.train.checkpoint import git_commit

CFG = FeatureConfig()


@dataclass(frozen=True)
class Sizes:
    cqt_seconds: tuple[float, ...]  # step 2
    n_lengths: int  # step 3: distinct lengths, drawn from length_seconds
    length_seconds: tuple[float, float]
    compare_seconds: tuple[float, ...]  # step 4: n_per_length inputs of each length
    n_per_length: int
    batch: int
    tracks: int  # step 5
    track_seconds: float
    serial_tracks: int
    workers: int
    model: str  # steps 6-8: step 6's model size and epochs; the store's cliques of versions
    epochs: int
    cliques: int
    versions: int
    cliques_per_batch: int
    loader_workers: int  # the training DataLoader's num_workers


FULL = Sizes(cqt_seconds=(180.0, 1200.0), n_lengths=300, length_seconds=(30.0, 360.0),
             compare_seconds=(180.0, 210.0), n_per_length=16, batch=16, tracks=1000,
             track_seconds=210.0, serial_tracks=48, workers=os.cpu_count() or 1, model="mirex",
             epochs=4, cliques=40, versions=4, cliques_per_batch=8, loader_workers=4)
# Smoke: the steps' code on seconds of audio, a random tiny model instead of the shipped one,
# everything in this process.
SMOKE = Sizes(cqt_seconds=(4.0, 8.0), n_lengths=3, length_seconds=(3.0, 8.0),
              compare_seconds=(6.0,), n_per_length=2, batch=2, tracks=3, track_seconds=5.0,
              serial_tracks=2, workers=1, model="tiny", epochs=2, cliques=4, versions=2,
              cliques_per_batch=2, loader_workers=0)


@functools.lru_cache(maxsize=2)
def _music_base(smoke: bool) -> np.ndarray:
    seeds, seconds = (range(1), 8.0) if smoke else (range(6), 20.0)
    return np.concatenate([piano_like(seconds, SR, seed) for seed in seeds])


def music(seconds: float, smoke: bool) -> np.ndarray:
    """``(N,)`` float32 piano-like music at half full scale: 20-s excerpts of six seeds (one
    8-s excerpt when ``smoke``), repeated to ``seconds``."""
    return (0.5 * np.resize(_music_base(smoke), int(seconds * SR))).astype(np.float32)


def _mib(value: int) -> float:
    return round(value / 2**20, 1)


def _memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return dict(allocated_mib=_mib(torch.cuda.memory_allocated(device)),
                reserved_mib=_mib(torch.cuda.memory_reserved(device)),
                peak_mib=_mib(torch.cuda.max_memory_allocated(device)),
                fft_plans=torch.backends.cuda.cufft_plan_cache[index].size)


# --- steps ----------------------------------------------------------------------------------


def versions(device: torch.device) -> dict:
    import librosa
    import soundfile
    import soxr

    out = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version(), numpy=np.__version__,
               librosa=librosa.__version__, soxr=soxr.__version__, soundfile=soundfile.__version__,
               mirex_vi_commit=git_commit(), cpus=os.cpu_count())
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        smi = subprocess.run(query, capture_output=True, text=True)
        out.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1),
                   driver=smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None)
    return out


def cqt_accuracy(device: torch.device, sizes: Sizes, smoke: bool) -> dict:
    cqt, front_end = TorchCQT.from_config(CFG).to(device), TorchFrontEnd(CFG, device)
    with torch.inference_mode():
        cqt(torch.zeros(1, SR, device=device))  # first-call costs out of the timings
    out: dict = {}
    for seconds in sizes.cqt_seconds:
        y = music(seconds, smoke)
        t0 = time.perf_counter()
        ref = librosa_cqt(y, CFG)  # (84, T)
        t1 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            ours = cqt(torch.from_numpy(y)[None].to(device))[0]
            sync(device)
        t2 = time.perf_counter()
        cqt_memory = _memory(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        front_end(PackedAudio.pack(y))
        ours = ours.cpu().numpy()
        out[f"{seconds:g}s"] = dict(
            rel_error=relative_error(ours, ref),
            octave_rel_errors=[relative_error(ours[o : o + 12], ref[o : o + 12])
                               for o in range(0, 84, 12)],
            librosa_s=round(t1 - t0, 3), torch_s=round(t2 - t1, 4),
            cqt_peak_mib=cqt_memory.get("peak_mib"),
            front_end_peak_mib=_memory(device).get("peak_mib"))
    out["target_rel_error_1e-5"] = all(v["rel_error"] <= 1e-5 for v in out.values())
    return out


def distinct_lengths(device: torch.device, sizes: Sizes, smoke: bool,
                     weights: LoadedWeights) -> dict:
    lo, hi = (int(s * SR) for s in sizes.length_seconds)
    lengths = np.random.default_rng(3).choice(np.arange(lo, hi), sizes.n_lengths, replace=False)
    source = music(sizes.length_seconds[1], smoke)
    front_end, model = TorchFrontEnd(CFG, device), weights.model.to(device).eval()
    every = max(1, sizes.n_lengths // 6)
    marks, t0 = [], time.perf_counter()
    for i, n in enumerate(lengths, 1):
        embed_inputs(model, [front_end(PackedAudio.pack(source[:n]))], device, amp=True)
        if i % every == 0 or i == len(lengths):
            sync(device)
            seconds = round(time.perf_counter() - t0, 2)
            marks.append(dict(tracks=i, seconds=seconds, **_memory(device)))
    on_cuda = device.type == "cuda"
    growth = marks[-1]["reserved_mib"] - marks[0]["reserved_mib"] if on_cuda else None
    return dict(marks=marks, reserved_growth_mib=growth, fft_plan_limit=FFT_PLAN_CACHE_SIZE,
                tracks_per_s=round(len(lengths) / (time.perf_counter() - t0), 1))


def _max_d2_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest change of any pairwise ``d² = 2 - 2 cos`` between two ``(N, D)`` sets."""
    return float(2 * (a @ a.T - b @ b.T).abs().max())


def precision_and_batching(device: torch.device, sizes: Sizes, smoke: bool,
                           weights: LoadedWeights) -> dict:
    source = music(max(sizes.compare_seconds) + 3 * sizes.n_per_length, smoke)
    front_end = TorchFrontEnd(CFG, device)
    inputs = [front_end(PackedAudio.pack(source[3 * k * SR : 3 * k * SR + int(s * SR)]))
              for s in sizes.compare_seconds for k in range(sizes.n_per_length)]
    model = weights.model.to(device).eval()
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    disable_tf32_without_amp(device, amp=False)
    try:
        emb = {(amp, b): embed_inputs(model, inputs, device, amp, b)
               for amp in (False, True) for b in (1, sizes.batch)}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    cpu = torch.device("cpu")
    on_cpu = embed_inputs(copy.deepcopy(model).to(cpu), [x.cpu() for x in inputs], cpu, amp=False)
    agreement = measure_agreement(weights, device, amp=True)
    amp_cos = float((emb[True, 1] * emb[False, 1]).sum(dim=1).min())
    batch = {name: _max_d2_change(emb[amp, sizes.batch], emb[amp, 1])
             for name, amp in (("fp32", False), ("amp", True))}
    allowed = {name: tolerance(device.type, amp).batch
               for name, amp in (("fp32", False), ("amp", True))}
    return dict(inputs=len(inputs), amp_vs_fp32_min_cosine=amp_cos, batch_max_d2_change=batch,
                batch_tolerance=allowed,
                device_fp32_vs_cpu_max_d2_change=_max_d2_change(emb[False, 1], on_cpu),
                self_check=dict(cqt_rel_error=agreement.cqt_rel_error, cosine=agreement.cosine,
                                problem=agreement.problem(tolerance(device.type, True))),
                target_amp_cosine_0_9995=amp_cos >= 0.9995,
                batch_within_tolerance=all(batch[k] <= allowed[k] for k in batch))


def _top_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each query's ``k`` nearest others that two square matrices agree on."""
    k = min(k, len(a) - 1)
    tops = []
    for d in (a.copy(), b.copy()):
        np.fill_diagonal(d, np.inf)
        tops.append(np.argsort(d, axis=1, kind="stable")[:, :k])
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(*tops)]))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _synthetic_collection(work: Path, sizes: Sizes) -> tuple[list[Path], Path]:
    """``sizes.tracks`` random melodies as 16-bit WAVs (written in parallel, kept if there)
    and the list file naming them."""
    paths = [work / "audio" / f"track{i:05d}.wav" for i in range(sizes.tracks)]
    (work / "audio").mkdir(parents=True, exist_ok=True)
    jobs = [(str(p), i, sizes.track_seconds) for i, p in enumerate(paths)]
    if sizes.workers > 1:
        with mp.get_context("spawn").Pool(sizes.workers) as pool:
            pool.map(write_track, jobs)
    else:
        list(map(write_track, jobs))
    collection = work / "collection.txt"
    collection.write_text("".join(f"{p}\n" for p in paths))
    return paths, collection


def identify_end_to_end(device: torch.device, sizes: Sizes, work: Path,
                        weights: str | None) -> dict:
    t0 = time.perf_counter()
    paths, collection = _synthetic_collection(work, sizes)
    out: dict = dict(tracks=len(paths), track_seconds=sizes.track_seconds,
                     synthesis_s=round(time.perf_counter() - t0, 1))
    records, package_log = _Records(), logging.getLogger("mirex_vi")
    package_log.addHandler(records)
    package_log.setLevel(logging.INFO)  # the self-check's figures are INFO
    for backend in ("torch", "librosa"):
        t0 = time.perf_counter()
        job = prepare(collection, collection, work / f"{backend}.txt", work / f"{backend}.work",
                      weights, str(device))
        settings = EmbedSettings.resolve(device, workers=sizes.workers, cqt_backend=backend)
        summary = identify(job, settings, progress=False)
        seconds = time.perf_counter() - t0
        out[backend] = dict(seconds=round(seconds, 2), errors=len(summary.errors),
                            tracks_per_s=round(len(paths) / seconds, 2))
    package_log.removeHandler(records)
    package_log.setLevel(logging.NOTSET)
    out["log"] = records.lines[-20:]
    t0 = time.perf_counter()
    serial_reference(paths[: sizes.serial_tracks], weights, device, work / "serial.txt")
    out["serial_tracks_per_s"] = round(sizes.serial_tracks / (time.perf_counter() - t0), 2)
    a, b = (read_distance_matrix(work / f"{k}.txt").distances for k in ("torch", "librosa"))
    speedup = out["torch"]["tracks_per_s"] / out["serial_tracks_per_s"]
    out.update(matrix_max_abs_diff=float(np.abs(a - b).max()),
               matrix_max_d2_diff=float(np.abs(a**2 - b**2).max()),
               top10_overlap=_top_overlap(a, b), speedup_over_serial=round(speedup, 1))
    out["target_under_60s"] = out["torch"]["seconds"] < 60 * len(paths) / 1000
    out["target_10x_serial"] = out["speedup_over_serial"] >= 10
    return out


# --- the run --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = device_run_parser(__doc__.splitlines()[0], "tiny sizes (CI, any device)")
    parser.add_argument("--tracks", type=int, help="step 5's track count [default: 1000]")
    args = parser.parse_args(argv)
    device = run_device(parser, args, "check")
    sizes = SMOKE if args.smoke else FULL
    if args.tracks:
        sizes = dataclasses.replace(sizes, tracks=args.tracks)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = Report(args.out, device, sizes, args.smoke)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        spec = str(random_tiny_package(work)) if args.smoke else None  # None: the shipped one
        weights = load_weights(spec)
        report.run("1_versions", versions, device)
        report.run("2_cqt_accuracy", cqt_accuracy, device, sizes, args.smoke)
        report.run("3_distinct_lengths", distinct_lengths, device, sizes, args.smoke, weights)
        report.run("4_precision_and_batching", precision_and_batching, device, sizes, args.smoke,
                   weights)
        report.run("5_identify", identify_end_to_end, device, sizes, work, spec)
        report.run("6_amp_training", amp_training, device, sizes, work)
        report.run("7_resume_from_cpu", resume_from_cpu, device, sizes, work)
        report.run("8_ddp_one_rank", ddp_one_rank, device, sizes, work)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
