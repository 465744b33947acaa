"""Segments read off the track's own feature map, against plain scoring, on one stored split.

    python -m benchmarks.quality.column_segments --metadata SPLIT --features-dir STORE \
        [--weights NAME] [--excerpt 20] [--columns 1,3 3,3 5,5] [--rules diag2,max] \
        [--segment-weights 0.5,0.75]

CQT-Net's convolutions have no time padding, so each column of its last feature map
``(C, F'', T'')`` sees about 172 pooled frames of input, one window's worth. A window of W
columns every H, max-pooled over frequency and those columns and projected by the last
layer, is then close to the embedding of the matching 172-frame window (though not equal:
a separately embedded window is max-normalised on its own), and costs nothing beyond the
track's own pass. Each row scores every version of the split as a query against all others
with ``(1 - w) * track + w * rule`` over those column segments (``inference.segments``'
rules and blend), beside the plain inner product of the same pass.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.quality.rerank import figures, load_split, parse_rule
from mirex_vi.config import ScoringConfig
from mirex_vi.inference import segments
from mirex_vi.model.weights import load_weights


def feature_maps(model: torch.nn.Module, inputs: list[tuple[np.ndarray, int]]) -> list[torch.Tensor]:
    """``(C, T'')`` per track: the last feature map, max-pooled over frequency."""
    out = []
    with torch.inference_mode():
        for x, _ in inputs:
            fmap = model.front_end(torch.from_numpy(x)[None, None].contiguous(
                memory_format=torch.channels_last))  # (1, C, F'', T'')
            out.append(fmap.amax(dim=2)[0].float())
    return out


def column_segments(model: torch.nn.Module, fmap: torch.Tensor, width: int, hop: int) -> torch.Tensor:
    """``(S, D)`` unit embeddings of windows of ``width`` columns every ``hop`` (the last
    one flush with the end) of one ``(C, T'')`` map."""
    n = fmap.shape[1]
    starts = list(range(0, max(n - width, 0) + 1, hop))
    if starts[-1] + width < n:
        starts.append(n - width)
    pooled = torch.stack([fmap[:, s : s + width].amax(dim=1) for s in starts])  # (S, C)
    return F.normalize(model.proj(pooled).float(), dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metadata", required=True)
    parser.add_argument("--features-dir", required=True)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--excerpt", type=float, default=0.0)
    parser.add_argument("--columns", nargs="+", default=["1,3", "3,3", "5,5"], metavar="W,H")
    parser.add_argument("--rules", default="diag2,max")
    parser.add_argument("--segment-weights", default="0.5,0.75")
    args = parser.parse_args()
    args.first_cliques = 0
    loaded = load_weights(args.weights)
    model = loaded.model.eval()
    split = load_split(args, loaded)
    maps = feature_maps(model, split.inputs)
    with torch.inference_mode():
        track = F.normalize(model.proj(torch.stack([m.amax(dim=1) for m in maps])).float(), dim=1)
        plain = track @ track.T
        everyone = list(range(len(maps)))
        print(f"{args.metadata}: {len(maps)} versions, {np.mean([m.shape[1] for m in maps]):.1f} "
              f"columns a track; plain MAP {figures(plain, split.labels).summary()['map']:.4f}")
        for spec in args.columns:
            width, hop = (int(v) for v in spec.split(","))
            packed = segments.PackedSegments.pack(
                [column_segments(model, m, width, hop) for m in maps])
            alone = segments.one_window_pairs(packed, everyone)
            for name, k in map(parse_rule, args.rules.split(",")):
                rule = segments.segment_scores(packed, everyone, ScoringConfig(segment_rule=name,
                                                                               segment_k=k))
                for w in (float(v) for v in args.segment_weights.split(",")):
                    scores = segments.blend(plain, rule, alone, ScoringConfig(segment_weight=w))
                    print(f"  columns {width},{hop} ({packed.counts.float().mean():.1f} a track) "
                          f"{name}{k} w={w:g}: MAP "
                          f"{figures(scores, split.labels).summary()['map']:.4f}")


if __name__ == "__main__":
    main()
