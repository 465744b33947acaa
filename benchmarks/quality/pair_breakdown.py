"""Which version pairs a weight package fails on: each pair of a synthetic corpus's split,
grouped by how its two versions differ.

    python -m benchmarks.quality.pair_breakdown --metadata CORPUS/Synth-VI-YT-light.json.test \
        --features-dir FEATURES [--weights NAME] [--min-pairs 30]

Every version is embedded (CPU, fp32, as ``mirex-vi evaluate --device cpu --no-amp``) and
queries all the others. For each ordered pair (query, another version of its clique) the
rank of that version among the other works' versions is kept (1: no other work's version
scores higher), and the pairs are grouped by what the generator's records say about the
two versions: key distance, tempo ratio, same or other soundfont, parts played,
accompaniment, structure, filter, noise, the score's collection.
Printed per group: pairs, the share ranked first, the share in the first 10, and the mean
reciprocal rank. Needs the generator's version records (``mirex-vi corpus`` metadata).
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import torch

from benchmarks.quality.split_embedding import embed_split, read_split, split_parser


def pair_key(a: dict, b: dict) -> dict[str, object]:
    """How two version records differ, one value per property."""
    both = lambda field: "/".join(sorted(str(v[field]) for v in (a, b)))  # noqa: E731
    tempo = max(a["tempo_factor"], b["tempo_factor"]) / min(a["tempo_factor"], b["tempo_factor"])
    return {
        "key distance (semitones)": abs((a["transpose"] - b["transpose"] + 6) % 12 - 6),
        "tempo ratio": "< 1.1" if tempo < 1.1 else "< 1.3" if tempo < 1.3 else ">= 1.3",
        "soundfont": "same" if a["soundfont"] == b["soundfont"] else "other",
        "parts played": both("voices"),
        "accompaniment": both("accompaniment"),
        "structure": both("structure"),
        "filter": both("filter"),
        "added noise": "/".join(sorted(str(v["snr_db"] is not None) for v in (a, b))),
        "collection": a["source"].removeprefix("music21:").split("/")[0],
    }


def ranks_of_pairs(emb: torch.Tensor, labels: list[str]) -> list[tuple[int, int, int]]:
    """``(query, relevant, rank)`` of every ordered pair of one clique, the rank counted among
    the other cliques' versions only (1: no other work scores higher); ``emb`` is ``(N, D)``."""
    sims = (emb.double() @ emb.double().T).numpy()
    codes = np.unique(labels, return_inverse=True)[1]
    pairs = []
    for q in range(len(labels)):
        same = codes == codes[q]
        others = sims[q, ~same]
        for r in np.flatnonzero(same):
            if r != q:
                pairs.append((q, int(r), int((others > sims[q, r]).sum()) + 1))
    return pairs


def main() -> None:
    parser = split_parser(__doc__)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--min-pairs", type=int, default=30, help="hide smaller groups")
    args = parser.parse_args()

    cliques = read_split(args.metadata, args.features_dir)
    records = {v["youtube_id"]: v for vs in json.loads(args.metadata.read_text()).values() for v in vs}
    ids = [v.youtube_id for vs in cliques.values() for v in vs]
    loaded, emb, labels = embed_split(args.weights, cliques, args.features_dir)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    pairs = ranks_of_pairs(emb, labels)
    for q, r, rank in pairs:
        for prop, value in pair_key(records[ids[q]], records[ids[r]]).items():
            groups[(prop, str(value))].append(rank)
    ranks = np.array([rank for *_, rank in pairs])
    print(f"{loaded.name}: {len(ids)} versions, {len(pairs)} pairs; first {np.mean(ranks == 1):.3f}, "
          f"first 10 {np.mean(ranks <= 10):.3f}, mean 1/rank {np.mean(1 / ranks):.3f}")
    for prop in dict.fromkeys(p for p, _ in groups):
        print(f"\n{prop}")
        for (p, value), rs in sorted(groups.items()):
            rs = np.array(rs)
            if p == prop and len(rs) >= args.min_pairs:
                print(f"  {value:24s} {len(rs):6d} pairs  first {np.mean(rs == 1):.3f}  "
                      f"first 10 {np.mean(rs <= 10):.3f}  1/rank {np.mean(1 / rs):.3f}")


if __name__ == "__main__":
    main()
