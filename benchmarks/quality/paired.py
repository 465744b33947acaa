"""Does package B score higher than package A on a split? The paired MAP difference, with a
95 % interval from a bootstrap over cliques.

    python -m benchmarks.quality.paired --metadata SPLIT --features-dir FEATURES --weights A \
        --weights B [--excerpt 20] [--expand K] [--resamples 10000] [--seed 0] [--json OUT]

Each package embeds every version of the split (as ``mirex-vi evaluate --device cpu
--no-amp``), and every version is a query against all others, as ``evaluate`` scores it.
The queries of one clique share their tune and their relevant candidates, so their AP
differences move together: resampling single queries would give too narrow an interval.
Each bootstrap replicate draws whole cliques with replacement and takes the difference of
MAP over the queries of the cliques drawn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch

from benchmarks.quality.split_embedding import (add_scoring_options, embed_split, read_split,
                                                split_parser)
from mirex_vi.eval.evaluate import score_embeddings
from mirex_vi.eval.metrics import RetrievalResult

CPU = torch.device("cpu")


def clique_bootstrap(diff: np.ndarray, cliques: Sequence[str], resamples: int = 10_000,
                     seed: int = 0) -> tuple[float, float]:
    """The 95 % percentile interval of the mean of the ``(Q,)`` per-query differences
    ``diff``, resampling the ``(Q,)`` queries' ``cliques`` as units."""
    names, of_query = np.unique(np.asarray(cliques), return_inverse=True)
    sums = np.bincount(of_query, weights=diff, minlength=len(names))  # (C,)
    counts = np.bincount(of_query, minlength=len(names)).astype(np.float64)  # (C,)
    draws = np.random.default_rng(seed).integers(0, len(names), (resamples, len(names)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)  # (resamples,)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def compare(a: RetrievalResult, b: RetrievalResult, labels: Sequence[str],
            resamples: int, seed: int) -> dict:
    """Figures of B against A, both computed over the same ``(N,)`` clique ``labels``."""
    if not np.array_equal(a.query_index, b.query_index):
        raise ValueError("the two results hold different queries")
    diff = b.ap - a.ap  # (Q,)
    query_cliques = [labels[q] for q in a.query_index.tolist()]
    low, high = clique_bootstrap(diff, query_cliques, resamples, seed)
    per_clique_a, per_clique_b = a.ap_per_clique(labels), b.ap_per_clique(labels)
    return dict(map_a=a.summary()["map"], map_b=b.summary()["map"],
                difference=float(diff.mean()), interval_95=[low, high],
                queries=dict(better=int((diff > 0).sum()), worse=int((diff < 0).sum()),
                             equal=int((diff == 0).sum())),
                cliques=dict(better=sum(per_clique_b[c] > v for c, v in per_clique_a.items()),
                             worse=sum(per_clique_b[c] < v for c, v in per_clique_a.items()),
                             total=len(per_clique_a)))


def main() -> None:
    parser = split_parser(__doc__)
    add_scoring_options(parser, "a weight package (folder or name): give it twice, A then B")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if len(args.weights) != 2:
        parser.error("give --weights exactly twice: A, then B")

    cliques = read_split(args.metadata, args.features_dir)
    results, labels = [], []
    for weights in args.weights:
        _, emb, labels = embed_split(weights, cliques, args.features_dir, args.excerpt)
        results.append(score_embeddings(emb, labels, CPU, args.expand))
    figures = compare(*results, labels, args.resamples, args.seed)

    low, high = figures["interval_95"]
    q, c = figures["queries"], figures["cliques"]
    print(f"{args.metadata}" + (f", first {args.excerpt:g} s" if args.excerpt else ", whole clips")
          + (f", expanded by {args.expand} neighbours" if args.expand else ""))
    print(f"A {args.weights[0]}: MAP {figures['map_a']:.4f}\n"
          f"B {args.weights[1]}: MAP {figures['map_b']:.4f}\n"
          f"B - A: {figures['difference']:+.4f}, 95 % interval over cliques "
          f"[{low:+.4f}, {high:+.4f}] ({args.resamples} resamples)\n"
          f"queries: {q['better']} better, {q['worse']} worse, {q['equal']} equal; "
          f"cliques: {c['better']} better, {c['worse']} worse of {c['total']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
