"""CPU seconds of a scoring recipe beside plain ``identify``, part by part, per track.

    python -m benchmarks.speed.recipe_cost LIST [--tracks 20] [--weights NAME] \
        [--segments 172,96] [--segment-rule diag2] [--segment-source map] [--rerank 50] \
        [--collection 1000]

For the first ``--tracks`` audio files of LIST (one path a line), in this process on one
thread, so a busy machine changes the figures little (process time, not wall time): decode
and librosa CQT, the plain embedding at the package's tempi (what ``identify`` does per
track), and the recipe's extras (segment embeddings and chroma, ``recipe.Recipe.extras``;
segments read off the feature map come from the plain pass, as in ``identify``); then the
alignment of every ordered pair of those tracks (each track's chroma read once,
``align.Aligned``, as ``identify`` does) and the segment rule over
``--collection`` x ``--collection`` pairs of tracks with as many windows. Prints each
part and the recipe's total per track against plain identify's (each query re-ranks K
candidates, and scores ``--collection`` pairs by its segments). The recipe is the package's
own, changed by the options given.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.quality.rerank import parse_pair, parse_rule
from mirex_vi.cli.common import scoring_changes
from mirex_vi.config.features import SEGMENT_SOURCES
from mirex_vi.features.frontend import checked_cqt, preprocess
from mirex_vi.inference import align, segments
from mirex_vi.inference.embed import embed_inputs
from mirex_vi.inference.recipe import Recipe
from mirex_vi.io.audio import load_audio
from mirex_vi.model.weights import load_weights

CPU = torch.device("cpu")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("list", type=Path)
    parser.add_argument("--tracks", type=int, default=20)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--segments", type=parse_pair, default=None, metavar="LENGTH,HOP")
    parser.add_argument("--segment-rule", type=parse_rule, default=None, metavar="RULE[K]")
    parser.add_argument("--segment-source", default=None, choices=SEGMENT_SOURCES)
    parser.add_argument("--rerank", type=int, default=None)
    parser.add_argument("--collection", type=int, default=1000)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    paths = [line.strip() for line in args.list.read_text().splitlines() if line.strip()]
    paths = paths[: args.tracks]
    loaded = load_weights(args.weights)
    cfg = replace(loaded.features.scoring, **scoring_changes(
        args.segments, args.segment_rule, segment_weight=None, segment_tempo_scales=None,
        segment_source=args.segment_source, rerank=args.rerank))
    recipe = Recipe.of(loaded.model.eval(), loaded.features, cfg, CPU, False)
    spent = dict(cqt=0.0, plain=0.0, extras=0.0)
    extras, seconds = [], 0.0
    for path in paths:
        start = time.process_time()
        audio = load_audio(path, loaded.features.sample_rate)
        x = preprocess(checked_cqt(audio, loaded.features), loaded.features)
        cqt_done = time.process_time()
        maps: dict[int, torch.Tensor] = {}
        embed_inputs(recipe.model, [x], CPU, False, 1, loaded.features.tempo_scales,
                     maps.__setitem__ if recipe.wants_map else None)
        plain_done = time.process_time()
        extras.append(recipe.extras(x, maps.get(0)))
        spent["cqt"] += cqt_done - start
        spent["plain"] += plain_done - cqt_done
        spent["extras"] += time.process_time() - plain_done
        seconds += len(audio) / loaded.features.sample_rate
    n = len(paths)
    start = time.process_time()
    read = [align.Aligned.of(e["chroma"], cfg.chroma_stack) for e in extras]
    spent["extras"] += time.process_time() - start  # read once, for all of a track's pairs
    start, pairs = time.process_time(), 0
    for q in range(n):
        for c in range(n):
            if q != c:
                align.aligned_score(read[q], read[c], cfg)
                pairs += 1
    per_pair = (time.process_time() - start) / pairs
    windows = round(float(np.mean([len(e["segments"]) for e in extras])))
    rows = torch.nn.functional.normalize(torch.randn(args.collection, windows, 512), dim=2)
    packed = segments.PackedSegments(rows, torch.full((args.collection,), windows))
    start = time.process_time()
    for a in range(0, args.collection, 256):
        segments.segment_scores(packed, list(range(a, min(a + 256, args.collection))), cfg)
    rule_per_query = (time.process_time() - start) / args.collection
    plain = (spent["cqt"] + spent["plain"]) / n
    added = spent["extras"] / n + cfg.rerank * per_pair + rule_per_query
    print(f"{n} tracks of {seconds / n:.0f} s on average, CPU seconds per track (one thread):\n"
          f"  decode + CQT {spent['cqt'] / n:.2f}, plain embedding {spent['plain'] / n:.2f}\n"
          f"  recipe extras (segments {cfg.segment_length},{cfg.segment_hop} "
          f"from {cfg.segment_source}, chroma, read for the alignment) "
          f"{spent['extras'] / n:.2f}\n"
          f"  alignment {1000 * per_pair:.2f} ms a pair, x {cfg.rerank} candidates\n"
          f"  segment rule over {args.collection} tracks of {windows} windows: "
          f"{rule_per_query:.3f} a query\n"
          f"plain identify {plain:.2f}; the recipe adds {added:.2f}: {1 + added / plain:.2f}x")


if __name__ == "__main__":
    main()
