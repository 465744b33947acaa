"""Weight packages on a grown corpus's split and on the subsets that its earlier sizes held.

    python -m benchmarks.quality.test_subsets --metadata CORPUS/Synth-VI-YT-light.json.test \
        --features-dir FEATURES --weights A [--weights B ...] [--excerpt 20] \
        [--bounds 360,1000,2000] [--expand K] [--distractors OTHER.json] [--json OUT.json]

`mirex-vi corpus` numbers its works in the order it makes them (clique ``C-0000031`` is work
31), and a corpus grown in place keeps every earlier work's split. So the test cliques
below a bound ``b`` are exactly the test split of the corpus at ``b`` works, and those
from ``b`` up are the ones that growing past ``b`` added. For bounds ``b1 < ... < bk`` the
subsets are: all cliques; works ``< bi`` for each bound; ``[bi, bi+1)`` between bounds;
works ``>= bk``. Each package embeds every version once (on the CPU, fp32, as ``mirex-vi
evaluate --device cpu --no-amp``); each subset is then scored among its own versions only,
so its figures equal those of ``mirex-vi evaluate`` on that subset's metadata.

``--distractors OTHER.json`` (a split of the same store, e.g. the training split) adds the
first version of each of its cliques to every subset's gallery, each as a clique of its
own: a candidate for every query, never a query, and never relevant (``mirex-vi evaluate
--metadata`` drops single-version cliques, so it has no such option).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.quality.split_embedding import (add_scoring_options, embed_split, read_split,
                                                split_parser)
from mirex_vi.eval.evaluate import score_embeddings
from mirex_vi.io.metadata import Cliques

CPU = torch.device("cpu")


def work_number(clique_id: str) -> int:
    """The work number in a corpus clique id: ``"C-0000031"`` -> 31."""
    digits = re.sub(r"\D", "", clique_id)
    if not digits:
        raise ValueError(f"clique id {clique_id!r} holds no work number")
    return int(digits)


def subsets(bounds: list[int]) -> dict[str, tuple[int, float]]:
    """Subset name -> half-open range of work numbers, as the module docstring lists them."""
    ranges: dict[str, tuple[int, float]] = {"all": (0, float("inf"))}
    ranges.update({f"< {b}": (0, b) for b in bounds})
    ranges.update({f"{a}-{b - 1}": (a, b) for a, b in zip(bounds, bounds[1:])})
    if bounds:
        ranges[f">= {bounds[-1]}"] = (bounds[-1], float("inf"))
    return ranges


def distractor_cliques(cliques: Cliques) -> Cliques:
    """The first version of each clique of ``cliques``, alone in a clique ``"distractor
    <id>"`` (a prefix no corpus clique id has)."""
    return {f"distractor {cid}": [replace(versions[0], clique_id=f"distractor {cid}")]
            for cid, versions in cliques.items()}


def score_subsets(emb: torch.Tensor, labels: list[str], ranges: dict[str, tuple[int, float]],
                  expand: int = 0, extra: tuple[torch.Tensor, list[str]] | None = None
                  ) -> dict[str, dict]:
    """Figures of the ``(N, D)`` embeddings ``emb`` within each subset of their ``(N,)``
    clique ``labels`` (each subset scored alone, as ``evaluate --expand`` scores it), with
    the ``(M, D)`` embeddings and ``(M,)`` labels ``extra`` (distractors) added to each."""
    works = [work_number(c) for c in labels]
    extra_emb, extra_labels = extra if extra is not None else (emb[:0], [])
    figures = {}
    for name, (lo, hi) in ranges.items():
        rows = [i for i, w in enumerate(works) if lo <= w < hi]
        if rows:
            gallery = torch.cat([emb[rows], extra_emb])  # (len(rows) + M, D)
            subset = [labels[i] for i in rows] + extra_labels
            figures[name] = score_embeddings(gallery, subset, CPU, expand).summary()
    return figures


def main() -> None:
    parser = split_parser(__doc__)
    add_scoring_options(parser, "a weight package (folder or name); repeat to compare")
    parser.add_argument("--bounds", default="360,1000,2000",
                        help="corpus sizes the split was grown through (default: %(default)s)")
    parser.add_argument("--distractors", type=Path, metavar="OTHER.json",
                        help="add the first version of each clique of this split (same "
                             "--features-dir) to every gallery, as a clique of its own")
    args = parser.parse_args()

    ranges = subsets(sorted(int(b) for b in args.bounds.split(",") if b.strip()))
    cliques = read_split(args.metadata, args.features_dir)
    others = (distractor_cliques(read_split(args.distractors, args.features_dir))
              if args.distractors else {})
    results: dict[str, dict] = {}
    for weights in args.weights:
        _, emb, labels = embed_split(weights, cliques, args.features_dir, args.excerpt)
        extra = (embed_split(weights, others, args.features_dir, args.excerpt)[1:]
                 if others else None)
        results[weights] = score_subsets(emb, labels, ranges, args.expand, extra)

    print(f"{args.metadata}" + (f", first {args.excerpt:g} s" if args.excerpt else ", whole clips")
          + (f", {len(others)} distractors" if others else "")
          + (f", expanded by {args.expand} neighbours" if args.expand else ""))
    print("| weights | works | queries | MAP | MR1 | MRR | Top-1 rate |\n|---|---|---|---|---|---|---|")
    for weights, by_subset in results.items():
        for name, f in by_subset.items():
            print(f"| {weights} | {name} | {f['n_queries']} | {f['map']:.3f} | {f['mr1']:.1f} "
                  f"| {f['mrr']:.3f} | {f['top1_rate']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
