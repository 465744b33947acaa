"""The pooled store against the authors' layout: size, training-crop reads, uint8 error.

Three measurements, printed as tables (docs/pooled-store.md gives a run's figures):

1. Bytes on disk of the authors' layout, a float16 and a uint8 store: for the demo
   collection's CQTs, for a synthetic set of 4-minute versions, and scaled by its
   per-version sizes to Discogs-VI-YT (493k versions, ~4 min each; sizes are linear in
   length).
2. Seconds to read N random training crops (``TrainDataset`` items, ``crop_frames`` 7600)
   from each source of the synthetic set, cold (every file of the source evicted from
   the page cache with ``posix_fadvise(DONTNEED)`` first) and warm (the same crops again);
   beside them the pre-store read (a raw crop of the memmap, then ``preprocess``).
3. The model-input error of uint8 against float16 on the demo CQTs: max abs and relative
   error of the ``(84, T')`` inputs, and the cosine of their embeddings through the
   shipped weights (and, for reference, against ``preprocess`` of the raw CQT).

    python -m benchmarks.speed.pooled_store [--versions 200] [--crops 500] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import REPO
from mirex_vi.config import FeatureConfig
from mirex_vi.features.extract import extract_features
from mirex_vi.features.frontend import model_input, preprocess
from mirex_vi.features.layout import load_feature, save_feature
from mirex_vi.features.pooled import PooledStore, convert_features, layout_ids
from mirex_vi.io.metadata import Version, items_from_list
from mirex_vi.model.weights import load_weights
from mirex_vi.train.data import TrainDataset, random_crop

DISCOGS_VERSIONS, DISCOGS_SECONDS = 493_000, 240.0
FORMATS = ("authors' layout", "f16 store", "u8 store")


def disk_bytes(folder: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of every file under ``folder``."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files)


def build_sources(layout: Path, work: Path, name: str) -> dict[str, Path]:
    """The authors' layout at ``layout`` converted to a float16 and a uint8 store."""
    ids = layout_ids(layout)
    folders = {FORMATS[0]: layout}
    for fmt, enc in zip(FORMATS[1:], ("f16", "u8")):
        folders[fmt] = work / f"{name}-{enc}"
        convert_features([layout], ids, folders[fmt], enc)
    return folders


def synthetic_layout(folder: Path, n_versions: int, cfg: FeatureConfig, seed: int = 0) -> None:
    """``n_versions`` float16 CQTs of 2-6 minutes (4 on average) of random magnitudes."""
    rng = np.random.default_rng(seed)
    for i in range(n_versions):
        frames = int(rng.uniform(120, 360) * cfg.frame_rate)
        cqt = rng.gamma(1.0, 0.05, (frames, cfg.n_bins)).astype(np.float16)
        save_feature(folder, f"s{i:06d}xxxx", cqt)


def human(n_bytes: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:,.1f} {unit}"
    return f"{n_bytes:.0f} B"


def size_rows(sources: dict[str, Path], scale: float = 1.0) -> list[list[str]]:
    rows = []
    base = disk_bytes(sources[FORMATS[0]])[1]
    for fmt, folder in sources.items():
        apparent, allocated = disk_bytes(folder)
        rows.append([fmt, human(apparent * scale), human(allocated * scale), f"{base / allocated:.1f}x"])
    return rows


def evict(folder: Path) -> None:
    """Drop ``folder``'s files from the page cache (they are fsynced by their writers)."""
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def time_crops(read, draws: list[tuple[int, int]]) -> float:
    start = time.perf_counter()
    for item in draws:
        read(item)
    return time.perf_counter() - start


def read_rows(sources: dict[str, Path], n_crops: int, cfg: FeatureConfig) -> list[list[str]]:
    """Cold and warm seconds for ``n_crops`` random training crops from each source."""
    ids = layout_ids(sources[FORMATS[0]])
    cliques = {f"C-{i}": [Version(f"C-{i}", f"V-{i}", yt)] for i, yt in enumerate(ids)}
    rng = np.random.default_rng(1)
    draws = [(int(rng.integers(len(ids))), int(rng.integers(2**62))) for _ in range(n_crops)]
    layout = sources[FORMATS[0]]

    def before_store(item: tuple[int, int]) -> np.ndarray:
        crop = random_crop(load_feature(layout, ids[item[0]]), cfg.crop_frames,
                           np.random.default_rng(item[1]))
        return preprocess(crop, cfg, min_frames=cfg.crop_frames)

    # Bytes one crop reads: the raw crop before; a whole version through a source.
    lengths = [load_feature(layout, yt).shape[0] for yt in ids]
    crop_bytes = np.mean([min(n, cfg.crop_frames) * cfg.n_bins * 2 for n in lengths])
    readers = [("authors' layout, raw crop + preprocess (before)", layout, before_store, crop_bytes)]
    readers += [(fmt, folder, TrainDataset(cliques, folder, cfg).__getitem__,
                 disk_bytes(folder)[0] / len(ids)) for fmt, folder in sources.items()]
    rows = []
    for name, folder, read, per_crop in readers:
        os.sync()
        evict(folder)
        cold = time_crops(read, draws)
        warm = time_crops(read, draws)
        rows.append([name, human(per_crop), f"{cold:.2f}", f"{1e3 * cold / n_crops:.2f}",
                     f"{1e3 * warm / n_crops:.2f}"])
    return rows


def error_rows(sources: dict[str, Path], cfg: FeatureConfig) -> list[list[str]]:
    """u8 against f16 (and f16 against inference's ``preprocess``) on whole-track inputs."""
    f16, u8 = PooledStore.open(sources[FORMATS[1]]), PooledStore.open(sources[FORMATS[2]])
    k = cfg.downsample_factor
    ids = sorted(f16.entries)
    x16 = [model_input(f16.pooled(yt), cfg.min_frames // k, cfg.eps) for yt in ids]
    x8 = [model_input(u8.pooled(yt), cfg.min_frames // k, cfg.eps) for yt in ids]
    xpre = [preprocess(load_feature(sources[FORMATS[0]], yt), cfg) for yt in ids]
    flat16, flat8 = np.concatenate([x.ravel() for x in x16]), np.concatenate([x.ravel() for x in x8])
    # Values that u8 keeps: above 80 dB less half a step below the track's max (inputs are
    # max-normalised, so the max is ~1).
    within = flat16 >= 10 ** (-(80 - 80 / 255 / 2) / 20)
    rel = np.abs(flat8[within] - flat16[within]) / flat16[within]
    model = load_weights(REPO / "weights" / "vinet-mirex-synth").model.eval()
    with torch.inference_mode():
        emb = [model(torch.from_numpy(np.stack(xs))[:, None]) for xs in (x16, x8, xpre)]
    cos_u8 = (emb[0] * emb[1]).sum(1)
    cos_pre = (emb[0] * emb[2]).sum(1)
    return [
        ["tracks / input values", f"{len(ids)} / {flat16.size:,}"],
        ["max abs error, u8 - f16", f"{np.abs(flat8 - flat16).max():.2e}"],
        ["max / mean relative error, values within 79.8 dB of the max",
         f"{rel.max():.4f} / {rel.mean():.4f}"],
        ["f16 values that u8 zeroes (further below)", f"{np.mean(~within & (flat16 > 0)):.2e}"],
        ["largest of those (model input)", f"{flat16[~within].max():.2e}"],
        ["embedding cosine u8 vs f16: min / mean", f"{cos_u8.min():.6f} / {cos_u8.mean():.6f}"],
        ["embedding cosine f16 store vs preprocess: min / mean",
         f"{cos_pre.min():.6f} / {cos_pre.mean():.6f}"],
    ]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=200, help="synthetic 4-min versions")
    parser.add_argument("--crops", type=int, default=500, help="random training crops timed")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    cfg = FeatureConfig()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        demo_list = REPO / "examples" / "demo" / "collection.txt"
        extract_features(items_from_list(demo_list), work / "demo", cfg, workers=2, progress=False)
        demo = build_sources(work / "demo", work, "demo")
        synthetic_layout(work / "synth", args.versions, cfg)
        synth = build_sources(work / "synth", work, "synth")
        size_header = ["format", "apparent", "allocated", "smaller by"]
        print(f"## Bytes on disk: the demo collection ({len(layout_ids(work / 'demo'))} clips of 20 s)")
        print(table(size_header, size_rows(demo)))
        print(f"\n## Bytes on disk: {args.versions} synthetic versions of 2-6 min (4 on average)")
        print(table(size_header, size_rows(synth)))
        seconds = np.mean([load_feature(work / "synth", yt).shape[0] for yt in layout_ids(work / "synth")]) / cfg.frame_rate
        scale = DISCOGS_VERSIONS / args.versions * DISCOGS_SECONDS / seconds
        print(f"\n## Bytes on disk: Discogs-VI-YT, {DISCOGS_VERSIONS:,} versions x "
              f"{DISCOGS_SECONDS / 60:.0f} min, from the synthetic set's per-version sizes")
        print(table(size_header, size_rows(synth, scale)))
        print(f"\n## {args.crops} random training crops ({cfg.crop_frames} frames) from the synthetic set")
        print(table(["source", "read / crop", "cold s", "cold ms / crop", "warm ms / crop"],
                    read_rows(synth, args.crops, cfg)))
        print("\n## Model-input error of u8 against f16 (demo CQTs, whole tracks, shipped weights)")
        print(table(["figure", "value"], error_rows(demo, cfg)))


if __name__ == "__main__":
    main()
