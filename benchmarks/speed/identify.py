"""Where an identification run spends its time: the authors' serial recipe vs `mirex-vi identify`.

    python -m benchmarks.speed.identify --tracks 40 --seconds 180 [--device cpu|cuda] [--workers N]

Makes N synthetic tracks (``mirex_vi.synth.write_tracks``: harmonic melodies + noise,
22.05 kHz mono 16-bit WAV, as MIREX provides) once under --data, then times

(a) a serial reference that follows the authors' recipe literally: one track at a time,
    load, librosa CQT, batch-1 forward (one per tempo scale of the package), then all-pairs
    scoring and a plain-Python writer;
(b) ``mirex-vi identify`` (a fresh process and workdir, so nothing is cached),

prints a table, the speed ratio, the peak memory of each, and checks that the two give the
same embeddings (cosine >= 0.9999 per track, read back from (b)'s cache). ``--matrix-size``
also times the matrix writer on an N x N matrix (10,000 in the issue).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mirex_vi.config import FeatureConfig
from mirex_vi.core.runtime import resolve_device
from mirex_vi.features.frontend import compute_cqt, preprocess
from mirex_vi.inference.cache import EmbeddingCache
from mirex_vi.inference.embed import embed_batch
from mirex_vi.inference.settings import EmbedSettings
from mirex_vi.io.audio import file_identity, load_audio
from mirex_vi.io.matrix import write_distance_matrix
from mirex_vi.model.weights import load_weights
from mirex_vi.synth import write_tracks

CFG = FeatureConfig()


def serial_reference(paths: list[Path], weights: str | None, device: torch.device, out: Path):
    """The authors' recipe, one track at a time; returns (embeddings, stage seconds)."""
    loaded = load_weights(weights)
    # The authors' layout: NCHW (CQTNet itself defaults to channels-last).
    model = loaded.model.to(device, memory_format=torch.contiguous_format).eval()
    stages = dict.fromkeys(["decode+resample", "cqt", "model", "scoring", "writing"], 0.0)
    compute_cqt(np.zeros(CFG.sample_rate, dtype=np.float32) + 1e-3, CFG)  # numba warm-up
    embeddings = []
    for path in paths:
        t0 = time.perf_counter()
        audio = load_audio(path, CFG.sample_rate)
        t1 = time.perf_counter()
        x = preprocess(compute_cqt(audio, CFG), CFG)
        t2 = time.perf_counter()
        with torch.inference_mode():
            emb = embed_batch(model, torch.from_numpy(x)[None, None].to(device),
                              loaded.features.tempo_scales)
        embeddings.append(emb[0].float().cpu().numpy())
        t3 = time.perf_counter()
        stages["decode+resample"] += t1 - t0
        stages["cqt"] += t2 - t1
        stages["model"] += t3 - t2
    t0 = time.perf_counter()
    emb = np.stack(embeddings)
    dist = np.sqrt(np.clip(2 - 2 * emb @ emb.T, 0, None))
    np.fill_diagonal(dist, 0)
    stages["scoring"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(out, "w") as f:
        f.write("serial reference\n")
        f.writelines(f"{i}\t{p}\n" for i, p in enumerate(paths, 1))
        f.write("Q/R\t" + "\t".join(map(str, range(1, len(paths) + 1))) + "\n")
        for i, row in enumerate(dist, 1):
            f.write(f"{i}\t" + "\t".join(f"{d:.6f}" for d in row) + "\n")
    stages["writing"] = time.perf_counter() - t0
    return emb, stages


def run_identify(paths: list[Path], args, work: Path) -> float:
    lst = work / "collection.txt"
    lst.write_text("".join(f"{p}\n" for p in paths))
    cmd = [sys.executable, "-m", "mirex_vi", "identify", str(lst), str(lst), str(work / "out.txt"),
           "--workdir", str(work / "cache"), "--device", args.device, "--quiet"]
    cmd += ["--weights", args.weights] if args.weights else []
    cmd += ["--workers", str(args.workers)] if args.workers else []
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def time_writer(n: int, folder: Path) -> float:
    rng = np.random.default_rng(0)
    rows = (rng.random(n, dtype=np.float32) * 2 for _ in range(n))
    paths = [Path(f"/data/track{i:05d}.wav") for i in range(n)]
    t0 = time.perf_counter()
    write_distance_matrix(folder / "big.txt", "writer benchmark", paths, list(range(n)), rows)
    seconds = time.perf_counter() - t0
    (folder / "big.txt").unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--data", type=Path, default=Path("/tmp/mirex-vi-bench"))
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--skip-serial", action="store_true")
    parser.add_argument("--matrix-size", type=int, default=0, help="also time writing an N x N matrix")
    args = parser.parse_args()

    paths = write_tracks(args.data / f"audio-{int(args.seconds)}s", args.tracks, args.seconds)
    work = args.data / "work"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    device = resolve_device(args.device)
    n = len(paths)

    ident_s = run_identify(paths, args, work)
    ident_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"device {device}, {n} tracks of {args.seconds:.0f} s, torch threads {torch.get_num_threads()}")
    print(f"{'pipeline':<28}{'seconds':>10}{'tracks/s':>10}")
    print(f"{'mirex-vi identify':<28}{ident_s:>10.2f}{n / ident_s:>10.2f}   peak RSS {ident_rss:.2f} GiB (largest process)")
    if not args.skip_serial:
        t0 = time.perf_counter()
        emb, stages = serial_reference(paths, args.weights, device, work / "serial.txt")
        serial_s = time.perf_counter() - t0
        serial_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{'serial reference':<28}{serial_s:>10.2f}{n / serial_s:>10.2f}   peak RSS {serial_rss:.2f} GiB")
        for stage, seconds in stages.items():
            print(f"{'  ' + stage:<28}{seconds:>10.2f}{seconds / n:>10.3f} s/track")
        print(f"speed-up of identify over the serial reference: {serial_s / ident_s:.2f}x")
        loaded = load_weights(args.weights)
        cache = EmbeddingCache(work / "cache" / "embeddings", loaded.sha256, loaded.features,
                               loaded.model.cfg.embedding_dim, EmbedSettings.resolve(device))
        ours = np.stack([cache.get(p, file_identity(p)) for p in paths])
        cosine = np.sum(ours * emb, axis=1)
        verdict = "OK" if cosine.min() >= 0.9999 else "MISMATCH"
        print(f"embedding agreement: min cosine {cosine.min():.6f} over {n} tracks: {verdict}")
    if args.matrix_size:
        seconds = time_writer(args.matrix_size, work)
        print(f"writing a {args.matrix_size} x {args.matrix_size} matrix: {seconds:.1f} s")


if __name__ == "__main__":
    main()
