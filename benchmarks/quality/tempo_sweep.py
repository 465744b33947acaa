"""Which tempi should a package embed at? Its figures on a split for several sets of
``FeatureConfig.tempo_scales``.

    python -m benchmarks.quality.tempo_sweep --metadata SPLIT --features-dir FEATURES --weights W \
        --sets 1 1,1.25 0.8,1,1.25 0.7,1,1.4 [--excerpt 20] [--json OUT]

Every version is embedded once at each scale that a set names (as ``mirex-vi evaluate
--device cpu --no-amp`` would with that scale alone), and each set is scored from the
normalised sum of its scales' embeddings: exactly what embedding at that set gives
(``embed.embed_batch`` sums the unit embeddings of each tempo), so a set costs no further
embedding. Choose on a validation split, then set the package with ``mirex-vi weights copy
W NAME --tempo-scales S1,S2,...``.
"""

from __future__ import annotations

import dataclasses
import json

import torch
import torch.nn.functional as F

from benchmarks.quality.split_embedding import read_split, split_parser
from mirex_vi.config import parse_tempo_scales
from mirex_vi.eval.evaluate import embed_cliques, score_embeddings
from mirex_vi.model.weights import load_weights

CPU = torch.device("cpu")


def main() -> None:
    parser = split_parser(__doc__)
    parser.add_argument("--weights", required=True, help="a weight package (folder or name)")
    parser.add_argument("--sets", type=parse_tempo_scales, nargs="+", required=True,
                        metavar="S1,S2,...", help="tempo scale sets to score")
    parser.add_argument("--excerpt", type=float, metavar="SECONDS",
                        help="use only the first SECONDS of every version")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    cliques = read_split(args.metadata, args.features_dir)
    loaded = load_weights(args.weights)
    at_scale, labels = {}, []
    for scale in sorted({s for scales in args.sets for s in scales}):
        cfg = dataclasses.replace(loaded.features, tempo_scales=(scale,))
        at_scale[scale], labels = embed_cliques(loaded.model, cfg, cliques, args.features_dir,
                                                CPU, amp=False, excerpt=args.excerpt,
                                                progress=False)  # (N, D) each
    rows = []
    for scales in args.sets:
        emb = F.normalize(sum(at_scale[s] for s in scales), p=2, dim=1)  # (N, D)
        summary = score_embeddings(emb, labels, CPU).summary()
        rows.append({"tempo_scales": list(scales), **summary})

    clips = f"first {args.excerpt:g} s" if args.excerpt else "whole clips"
    print(f"{args.metadata}, {clips}, {args.weights}\n")
    print("| tempo scales | MAP | MR1 | Top-1 rate |\n|---|---|---|---|")
    for row in rows:
        print(f"| {', '.join(f'{s:g}' for s in row['tempo_scales'])} | {row['map']:.4f} "
              f"| {row['mr1']:.2f} | {row['top1_rate']:.3f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"metadata": str(args.metadata), "excerpt": args.excerpt,
                       "weights": args.weights, "sets": rows}, f, indent=1)


if __name__ == "__main__":
    main()
