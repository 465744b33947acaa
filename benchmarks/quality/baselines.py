"""Trained weights beside baselines on one labelled split: MAP, MR1, ... for each system.

    python -m benchmarks.quality.baselines --metadata CORPUS/Synth-VI-YT-light.json.test \
        --features-dir FEATURES --audio-root CORPUS [--weights NAME] [--skip-chroma] \
        [--excerpt SECONDS] [--exclude EARLIER.json.test] [--queries-per-clique K] [--expand K]

Systems (the same queries, candidates and metrics for all):

- ``chance``: random unit embeddings, uniform on the sphere (mean over 5 draws);
- ``cqtnet-random``: the MIREX CQT-Net with random (seeded) weights, same features;
- ``chroma-qmax``: essentia's HPCP -> ChromaCrossSimilarity (OTI) -> CoverSongSimilarity
  (Serra et al. 2009 Qmax), the classic chroma alignment baseline (needs
  ``pip install essentia``; all pairs, so O(N^2) alignments, over ``--jobs`` processes);
- ``weights``: the given weight package (default: the shipped one).

The two CQT-Net systems are scored by the package's ``evaluate_cliques``, on the CPU in fp32,
so the ``weights`` figures are those of ``mirex-vi evaluate --metadata ... --features-dir ...
[--excerpt SECONDS] [--expand K] --device cpu --no-amp``; ``--expand`` expands their
embeddings among all versions (every one stays a candidate), and leaves chroma as it is.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import random_units
from mirex_vi.config import MODEL_SIZES
from mirex_vi.eval.evaluate import evaluate_cliques, format_figures
from mirex_vi.eval.metrics import metrics_from_distances, metrics_from_embeddings
from mirex_vi.features.pooled import filter_available
from mirex_vi.io.audio import load_audio
from mirex_vi.io.metadata import items_from_metadata, read_metadata
from mirex_vi.model.cqtnet import CQTNet
from mirex_vi.model.weights import load_weights

CHROMA_RATE = 22050
CHROMA_FRAME = 4096


def hpcp(path: Path, hop: int, seconds: float | None) -> np.ndarray:
    """``(frames, 12)`` HPCP of a file's first ``seconds`` (all if None), essentia's chain."""
    import essentia.standard as es

    audio = load_audio(path, CHROMA_RATE)[: int(seconds * CHROMA_RATE) if seconds else None]
    window = es.Windowing(type="blackmanharris62")
    spectrum = es.Spectrum()
    peaks = es.SpectralPeaks(sampleRate=CHROMA_RATE, minFrequency=100, maxFrequency=5000,
                             magnitudeThreshold=1e-5, orderBy="magnitude", maxPeaks=100)
    chroma = es.HPCP(size=12, sampleRate=CHROMA_RATE, referenceFrequency=440, harmonics=8,
                     bandPreset=True, minFrequency=100, maxFrequency=5000,
                     weightType="cosine", nonLinear=False, windowSize=1.0, normalized="unitMax")
    frames = []
    for frame in es.FrameGenerator(audio, frameSize=CHROMA_FRAME, hopSize=hop):
        freqs, mags = peaks(spectrum(window(frame)))
        frames.append(chroma(freqs, mags))
    return np.asarray(frames, dtype=np.float32)


_WORKER: dict = {}  # per-process essentia algorithms and HPCPs (essentia objects don't pickle)


def _init_qmax_worker(features: list[np.ndarray]) -> None:
    import essentia.standard as es

    _WORKER.update(
        features=features,
        csm=es.ChromaCrossSimilarity(frameStackSize=9, frameStackStride=1,
                                     binarizePercentile=0.095, oti=True),
        align=es.CoverSongSimilarity(disOnset=0.5, disExtension=0.5, alignmentType="serra09",
                                     distanceType="asymmetric"))


def rotating_queries(labels: list[str], per_clique: int) -> list[int]:
    """Indices of ``per_clique`` versions of each clique (all of a smaller one), the i-th
    clique's starting at its version ``i mod size``: every version position is queried
    about equally often."""
    members: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)
    chosen = []
    for i, indices in enumerate(members.values()):
        n = len(indices)
        chosen += [indices[(i + j) % n] for j in range(min(per_clique, n))]
    return sorted(chosen)


def _qmax_row(q: int) -> tuple[int, np.ndarray]:
    features, csm, align = _WORKER["features"], _WORKER["csm"], _WORKER["align"]
    row = np.zeros(len(features))
    for r, reference in enumerate(features):
        if r != q:
            row[r] = align(csm(features[q], reference))[1]
    return q, row


def chroma_qmax_rows(paths: list[Path], hop: int, seconds: float | None, jobs: int,
                     queries: list[int]):
    """Qmax distance rows (query index, (N,) distances) of ``queries`` against every path,
    over ``jobs`` processes."""
    if jobs == 1:
        _init_qmax_worker([hpcp(p, hop, seconds) for p in paths])
        yield from map(_qmax_row, queries)
        return
    with multiprocessing.Pool(jobs) as pool:
        features = pool.starmap(hpcp, [(p, hop, seconds) for p in paths])
    with multiprocessing.Pool(jobs, _init_qmax_worker, (features,)) as pool:
        yield from pool.imap(_qmax_row, queries)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metadata", type=Path, required=True)
    parser.add_argument("--features-dir", type=Path, required=True)
    parser.add_argument("--audio-root", type=Path, help="needed for the chroma baseline")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--skip-chroma", action="store_true")
    parser.add_argument("--only-chroma", action="store_true")
    parser.add_argument("--chroma-hop", type=int, default=4096,
                        help="HPCP hop in samples at 22.05 kHz (4096: ~5.4 frames/s)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes for the chroma baseline")
    parser.add_argument("--excerpt", type=float, metavar="SECONDS",
                        help="use only the first SECONDS of every version (all systems)")
    parser.add_argument("--exclude", type=Path, metavar="METADATA",
                        help="leave out the cliques of this metadata file (e.g. the test split "
                             "of a corpus before it grew, to score only the cliques added since)")
    parser.add_argument("--queries-per-clique", type=int, metavar="K",
                        help="query only K versions of each clique (rotating which), every "
                             "version still a candidate: all systems on the same queries, and "
                             "chroma's O(N^2) alignments cut to K/versions of them")
    parser.add_argument("--expand", type=int, default=0, metavar="K",
                        help="score the CQT-Nets as `evaluate --expand K` does")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.chroma = not args.skip_chroma or args.only_chroma
    if args.chroma and args.audio_root is None:
        parser.error("the chroma baseline needs --audio-root (or give --skip-chroma)")
    return args


def main() -> None:
    args = parse_args()
    cliques = read_metadata(args.metadata)
    if args.exclude:
        excluded = read_metadata(args.exclude)
        cliques = {c: vs for c, vs in cliques.items() if c not in excluded}
    cliques = filter_available(cliques, args.features_dir)
    versions = [v for vs in cliques.values() for v in vs]
    ids, labels = [v.youtube_id for v in versions], [v.clique_id for v in versions]
    queries = (rotating_queries(labels, args.queries_per_clique) if args.queries_per_clique
               else list(range(len(ids))))
    excluding = f" less those of {args.exclude}" if args.exclude else ""
    print(f"{len(ids)} versions of {len(set(labels))} cliques from {args.metadata}{excluding}; "
          f"{len(queries)} queries")
    device = torch.device("cpu")
    results: dict[str, dict] = {}

    def embed_and_score(model, cfg):
        result, order = evaluate_cliques(model, cfg, cliques, args.features_dir, device, amp=False,
                                         excerpt=args.excerpt, progress=False,
                                         expand=args.expand)
        assert order == labels
        return result.of_queries(queries).summary()

    if not args.only_chroma:
        loaded = load_weights(args.weights)
        results[f"weights:{loaded.name}"] = embed_and_score(loaded.model, loaded.features)
        torch.manual_seed(0)
        results["cqtnet-random"] = embed_and_score(CQTNet(MODEL_SIZES["mirex"]).eval(),
                                                   loaded.features)
        rng = np.random.default_rng(0)
        draws = [metrics_from_embeddings(torch.from_numpy(random_units(rng, len(ids), 64)),
                                         labels).of_queries(queries).summary()
                 for _ in range(5)]
        results["chance"] = {k: float(np.mean([d[k] for d in draws])) for k in draws[0]}
        results["chance"]["n_queries"] = draws[0]["n_queries"]
    if args.chroma:
        t0 = time.perf_counter()
        audio = dict(items_from_metadata(args.metadata, args.audio_root))
        paths = [audio[i] for i in ids]
        results["chroma-qmax"] = metrics_from_distances(chroma_qmax_rows(paths, args.chroma_hop,
                                                                         args.excerpt, args.jobs,
                                                                         queries),
                                                        labels).summary()
        print(f"chroma-qmax: {time.perf_counter() - t0:.0f} s")
    for name, figures in results.items():
        print(f"\n== {name}\n{format_figures(figures)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
