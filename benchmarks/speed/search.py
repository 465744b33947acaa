"""Catalogue search on FAISS: build time, size, queries/s and recall of `flat` and `ivfpq`.

    python -m benchmarks.speed.search --tracks 100000 --threads 2 [--json out.json]
    python -m benchmarks.speed.search --demo

Synthetic collection (512-d unit vectors, so that recall means something): works of
``--versions`` versions each; a work's versions lie around its centre with a spread drawn
per work from ``--spread LO,HI`` (version = normalise(centre + spread * random unit
vector)); centres lie around ``--styles`` style centres (default one per 1,000 tracks;
0: centres uniform on the sphere) with ``--style-spread``. Queries are new versions of
random works, outside the index, so the exact top 10 of a query is mostly its work.

For each structure: build time (training included), index file bytes per track, the time
to open it memory-mapped, queries/s for a batch of ``--queries`` and one query at a time,
and for ivfpq the recall@10 against the exact (flat) top 10 at each ``--nprobe``. Both
searches read the index memory-mapped, as ``mirex-vi search`` does.

``--demo`` runs ``mirex-vi identify`` on examples/demo, builds a flat index of the same
tracks (sharing the embedding cache) and checks that ``mirex-vi search`` lists every
query's tracks in the matrix's order; it also prints the similarity statistics of these
real embeddings, to set beside the synthetic ones.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# As the CLI does: idle OpenMP threads sleep instead of spinning, which on a shared machine
# would take the cores from the threads that have work (FAISS's k-means most of all).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import REPO, random_units, unit_rows  # noqa: E402
from mirex_vi.io.matrix import read_distance_matrix  # noqa: E402
from mirex_vi.search import faiss_index  # noqa: E402

DEMO = REPO / "examples" / "demo"
K = 10


def work_centres(rng, n_works: int, dim: int, styles: int, style_spread: float) -> np.ndarray:
    """``(n_works, dim)`` unit centres, around ``styles`` style centres (0: uniform)."""
    if styles == 0:
        return random_units(rng, n_works, dim)
    style = random_units(rng, styles, dim)[rng.integers(0, styles, n_works)]
    return unit_rows(style + style_spread * random_units(rng, n_works, dim))


def versions(rng, centres: np.ndarray, spreads: np.ndarray, works: np.ndarray,
             chunk: int = 100_000) -> np.ndarray:
    """One version (``(len(works), dim)`` float32) of each work in ``works``."""
    out = np.empty((len(works), centres.shape[1]), dtype=np.float32)
    for start in range(0, len(works), chunk):
        w = works[start : start + chunk]
        out[start : start + len(w)] = unit_rows(centres[w] + spreads[w, None]
                                           * random_units(rng, len(w), centres.shape[1]))
    return out


def collection(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``tracks (N, dim)``, their works ``(N,)``, ``queries (Q, dim)`` and their works."""
    rng = np.random.default_rng(args.seed)
    n_works = args.tracks // args.versions
    styles = args.tracks // 1000 if args.styles is None else args.styles
    centres = work_centres(rng, n_works, args.dim, styles, args.style_spread)
    lo, hi = map(float, args.spread.split(","))
    spreads = rng.uniform(lo, hi, n_works).astype(np.float32)
    works = np.repeat(np.arange(n_works), args.versions)
    query_works = rng.integers(0, n_works, args.queries)
    return (versions(rng, centres, spreads, works), works,
            versions(rng, centres, spreads, query_works), query_works)


def statistics(x: np.ndarray, works: np.ndarray, seed: int = 1) -> dict:
    """Cosine of random pairs of distinct tracks and of pairs of versions of one work."""
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, len(x), (20_000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    same = [np.flatnonzero(works == w)[:2] for w in rng.choice(works, 2000)]
    same = np.array([p for p in same if len(p) == 2])
    cos = np.sum(x[pairs[:, 0]] * x[pairs[:, 1]], axis=1)
    return {"random_pair_cos_mean": float(np.mean(cos)), "random_pair_cos_std": float(np.std(cos)),
            "same_work_cos_mean": float(np.mean(np.sum(x[same[:, 0]] * x[same[:, 1]], 1)))}


def timed_queries(index, queries: np.ndarray, nprobe: int | None = None) -> tuple[np.ndarray, dict]:
    """Top-10 ids of a batch, with batch and one-at-a-time queries/s."""
    start = time.perf_counter()
    _, ids = faiss_index.top_k(index, queries, K, nprobe)
    batch = len(queries) / (time.perf_counter() - start)
    singles = queries[: min(len(queries), 100)]
    start = time.perf_counter()
    for q in singles:
        faiss_index.top_k(index, q[None], K, nprobe)
    return ids, {"queries_per_s": batch, "single_queries_per_s": len(singles) / (time.perf_counter() - start)}


def build_and_open(kind: str, x: np.ndarray, folder: Path, params) -> tuple[object, dict]:
    """Build ``kind``, write it, reopen it memory-mapped; times and bytes per track."""
    start = time.perf_counter()
    index = faiss_index.build(kind, x, params)
    built = time.perf_counter() - start
    path = folder / f"{kind}.faiss"
    with open(path, "wb") as f:
        faiss_index.write(index, f)
    del index
    start = time.perf_counter()
    mapped = faiss_index.read(path, mmap=True)
    return mapped, {"build_s": built, "open_s": time.perf_counter() - start,
                    "bytes_per_track": path.stat().st_size / len(x)}


def recall_at_k(exact: np.ndarray, approx: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / K for a, e in zip(approx, exact)]))


def run_synthetic(args) -> dict:
    faiss.omp_set_num_threads(args.threads)
    start = time.perf_counter()
    x, works, queries, query_works = collection(args)
    report = {"tracks": len(x), "queries": len(queries), "threads": args.threads,
              "generate_s": time.perf_counter() - start, **statistics(x, works)}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        flat, report["flat"] = build_and_open("flat", x, Path(tmp), None)
        exact, timing = timed_queries(flat, queries)
        report["flat"].update(timing)
        report["exact_top10_share_of_own_work"] = float(np.mean(works[exact] == query_works[:, None]))
        del flat
        params = faiss_index.ivfpq_params(len(x), x.shape[1])
        report["ivfpq_params"] = params.to_dict()
        ivfpq, report["ivfpq"] = build_and_open("ivfpq", x, Path(tmp), params)
        report["ivfpq"]["by_nprobe"] = {}
        for nprobe in map(int, args.nprobe.split(",")):
            approx, timing = timed_queries(ivfpq, queries, nprobe)
            report["ivfpq"]["by_nprobe"][nprobe] = {**timing, "recall_at_10": recall_at_k(exact, approx)}
    report["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return report


def print_synthetic(r: dict) -> None:
    print(f"{r['tracks']:,} tracks, {r['queries']:,} queries outside the index, {r['threads']} "
          f"threads; generated in {r['generate_s']:.1f} s; peak RSS {r['peak_rss_gib']:.2f} GiB")
    print(f"cosine: random pairs {r['random_pair_cos_mean']:.3f} +- {r['random_pair_cos_std']:.3f}, "
          f"versions of one work {r['same_work_cos_mean']:.3f}; exact top 10 in the query's "
          f"work: {r['exact_top10_share_of_own_work']:.3f}")
    print(f"ivfpq parameters: {r['ivfpq_params']}")
    print("| index | build s | open s | bytes/track | nprobe | q/s (batch) | q/s (one by one) | recall@10 |")
    print("|---|---|---|---|---|---|---|---|")
    f = r["flat"]
    print(f"| flat | {f['build_s']:.1f} | {f['open_s']:.2f} | {f['bytes_per_track']:.1f} | | "
          f"{f['queries_per_s']:.0f} | {f['single_queries_per_s']:.1f} | 1 |")
    p = r["ivfpq"]
    for nprobe, s in p["by_nprobe"].items():
        print(f"| ivfpq | {p['build_s']:.1f} | {p['open_s']:.2f} | {p['bytes_per_track']:.1f} | "
              f"{nprobe} | {s['queries_per_s']:.0f} | {s['single_queries_per_s']:.1f} | "
              f"{s['recall_at_10']:.4f} |")
    scale = 1e8 / r["tracks"]
    print(f"at 10^8 tracks: flat {f['bytes_per_track'] * 1e8 / 2**30:.0f} GiB, batch "
          f"{f['queries_per_s'] / scale:.2f} q/s (a scan grows with N); ivfpq "
          f"{p['bytes_per_track'] * 1e8 / 2**30:.1f} GiB")


def run_demo(tmp: Path) -> None:
    """identify's matrix against ``search`` on the demo collection."""
    mirex_vi = [sys.executable, "-m", "mirex_vi"]
    collection = DEMO / "collection.txt"
    subprocess.run([*mirex_vi, "identify", collection, DEMO / "queries.txt", tmp / "out.txt",
                    "--workdir", tmp / "work", "--quiet"], check=True)
    cache = ["--cache", tmp / "work" / "embeddings"]
    subprocess.run([*mirex_vi, "index", "build", collection, tmp / "index", "--quiet", *cache], check=True)
    out = subprocess.run([*mirex_vi, "search", tmp / "index", DEMO / "queries.txt", "--top-k", "1000",
                          "--format", "json", "--quiet", *cache], check=True, capture_output=True)
    matrix = read_distance_matrix(tmp / "out.txt")
    same, gap = 0, 0.0
    for q, row, result in zip(matrix.query_indices, matrix.distances, json.loads(out.stdout)):
        order = [matrix.paths[i] for i in np.argsort(row, kind="stable")]
        same += order == [h["path"] for h in result["results"]]
        where = {p: i for i, p in enumerate(matrix.paths)}
        gap = max(gap, max(abs(h["distance"] - row[where[h["path"]]]) for h in result["results"]))
    print(f"demo: {same} of {len(matrix.query_indices)} queries list every track in the "
          f"matrix's order; largest distance difference {gap:.1e}")
    from mirex_vi.io.lists import read_labels
    from mirex_vi.search.folder import open_index

    opened = open_index(tmp / "index")
    labels = {str(p): c for p, c in read_labels(DEMO / "labels.tsv").items()}
    works = np.array([labels[t.path] for t in opened.tracks])
    stats = statistics(faiss_index.vectors_of(opened.index), np.unique(works, return_inverse=True)[1])
    print("demo embeddings: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--versions", type=int, default=10, help="versions per work")
    parser.add_argument("--spread", default="0.5,1.0", help="LO,HI of a work's version spread")
    parser.add_argument("--styles", type=int, default=None, help="style centres [N / 1000]; 0: none")
    parser.add_argument("--style-spread", type=float, default=1.0)
    parser.add_argument("--nprobe", default="1,2,4,8,16,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, default=None, help="where the index files go")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--demo", action="store_true", help="check search against identify on the demo")
    args = parser.parse_args()
    if args.demo:
        with tempfile.TemporaryDirectory() as tmp:
            run_demo(Path(tmp))
        return
    report = run_synthetic(args)
    print_synthetic(report)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json), "tmp": None},
                                         **report}, indent=2, default=str))


if __name__ == "__main__":
    main()
