"""Segment matching and the alignment re-rank against plain scoring, on one stored split.

    python -m benchmarks.quality.rerank --metadata SPLIT --features-dir STORE \
        [--weights NAME] [--excerpt 20] [--first-cliques N] [--segments 43,22 ...] \
        [--segment-source windows|map] [--rules max,topk3,diag2] \
        [--segment-weights 0.25,0.5] [--shortlists 10,25,50] [--fusion-weights 0.3,0.5,0.7] \
        [--stack 3] [--kappa 0.1] [--key oti] [--rerank-base LENGTH,HOP,RULE,WEIGHT] \
        [--cache DIR] [--json OUT]

Every version of the split is a query against all others, as ``mirex-vi evaluate`` scores
it. The systems, each against ``plain`` (the track embeddings' inner products; every track
embedded at the package's tempi from its stored pooled CQT, as ``evaluate --metadata``
does, batched): for each ``--segments LENGTH,HOP`` (pooled frames) and each rule and
weight, ``(1 - w) * track + w * rule(segment pairs)`` (``inference.segments``; with
``--segment-source map`` the windows are read off each track's own pass); and the
re-rank of each query's K nearest by ``--rerank-base`` (default plain) with Qmax alignment
of chroma folded from the same pooled CQT, fused by per-query z-scores with weight W on
the model (``inference.align``; W = 0: the alignment alone on the shortlist). Each row
gives MAP, MR1, Top-1 and MAP - plain with its 95 % interval from a bootstrap over cliques
(``paired.compare``).

Costs, measured on this run's CPU and printed per 1,000 tracks: the model per track and
per segment, the segment rule per pair of tracks, the alignment per shortlisted pair; and
the bytes per track each system keeps (segments, chroma). Embeddings are cached under
``--cache`` (keyed by package, split, excerpt, cliques and segment config).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.quality.paired import compare
from benchmarks.quality.split_embedding import read_split, split_parser
from mirex_vi.config import CHROMA_KEYS, ScoringConfig
from mirex_vi.config.features import SEGMENT_SOURCES
from mirex_vi.eval.metrics import MetricAccumulator, RetrievalResult
from mirex_vi.features.frontend import model_input
from mirex_vi.features.pooled import open_features
from mirex_vi.inference import align, segments
from mirex_vi.inference.embed import embed_batch
from mirex_vi.model.weights import LoadedWeights, load_weights

CPU = torch.device("cpu")
GROUP = 32  # tracks whose windows are embedded together


@dataclass
class Split:
    """The versions of a split: ``inputs`` ``((F, T') model input, frames)``, ``chromas``
    ``(T, 12)``, ``labels`` clique ids, all in one order; ``maps``, each input's ``(C, T'')``
    feature map from its own pass, once :func:`feature_maps` has made them."""

    ids: list[str]
    labels: list[str]
    inputs: list[tuple[np.ndarray, int]]
    chromas: list[np.ndarray]
    maps: list[torch.Tensor] | None = None


def load_split(args: argparse.Namespace, loaded: LoadedWeights) -> Split:
    """Every version's model input as ``FullTrackDataset`` makes it (first ``--excerpt``
    seconds only, when given) and its chroma."""
    cliques = read_split(args.metadata, args.features_dir)
    if args.first_cliques:
        cliques = {c: cliques[c] for c in sorted(cliques)[: args.first_cliques]}
    cfg = loaded.features
    source = open_features(args.features_dir, cfg.downsample_factor)
    window = round(args.excerpt * cfg.frame_rate) // cfg.downsample_factor if args.excerpt else 0
    split = Split([], [], [], [])
    for versions in cliques.values():
        for v in versions:
            pooled = source.pooled(v.youtube_id)  # (T', F)
            if 0 < window < len(pooled):
                pooled = pooled[:window]
            split.ids.append(v.youtube_id)
            split.labels.append(v.clique_id)
            split.inputs.append((model_input(pooled, cfg.min_frames // cfg.downsample_factor,
                                             cfg.eps), len(pooled)))
            split.chromas.append(align.chroma(pooled, cfg.bins_per_octave, cfg.fmin))
    return split


def cached(path: Path | None, compute):
    """``compute()``'s dict of arrays, kept in ``path`` (``.npz``) when given."""
    if path is not None and path.exists():
        with np.load(path) as f:
            return dict(f)
    out = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out)
    return out


def embed_tracks(loaded: LoadedWeights, split: Split, batch_size: int) -> dict:
    """``emb`` ``(N, D)``: each whole input at the package's tempi, equal lengths batched;
    ``seconds`` per track."""
    model, scales = loaded.model.eval(), loaded.features.tempo_scales
    out = torch.empty(len(split.inputs), model.cfg.embedding_dim)
    by_length: dict[int, list[int]] = {}
    for i, (x, _) in enumerate(split.inputs):
        by_length.setdefault(x.shape[-1], []).append(i)
    start = time.perf_counter()
    with torch.inference_mode():
        for indices in by_length.values():
            for a in range(0, len(indices), batch_size):
                chunk = indices[a : a + batch_size]
                batch = torch.stack([torch.from_numpy(split.inputs[i][0]) for i in chunk])[:, None]
                out[chunk] = embed_batch(model, batch.contiguous(
                    memory_format=torch.channels_last), scales).float()
    return dict(emb=out.numpy(), seconds=np.float64((time.perf_counter() - start) / len(out)))


def embed_segment_sets(loaded: LoadedWeights, split: Split, cfg: ScoringConfig,
                       batch_size: int) -> dict:
    """``flat`` ``(sum S_i, D)`` and ``counts`` ``(N,)`` segment embeddings windowed by
    ``cfg``; ``seconds`` per segment."""
    parts, model = [], loaded.model.eval()
    features = replace(loaded.features, scoring=cfg)
    start = time.perf_counter()
    if cfg.reads_map:  # the cost is the map's columns, the pass itself being plain's
        maps = feature_maps(model, split)
        start = time.perf_counter()
        with torch.inference_mode():
            parts = [segments.map_segments(model, fmap, n, cfg)
                     for fmap, (_, n) in zip(maps, split.inputs)]
    else:
        for a in range(0, len(split.inputs), GROUP):
            parts += segments.embed_segments(model, split.inputs[a : a + GROUP], features, CPU,
                                             False, batch_size)
    flat = torch.cat(parts)
    return dict(flat=flat.numpy(), counts=np.array([len(p) for p in parts]),
                seconds=np.float64((time.perf_counter() - start) / len(flat)))


def feature_maps(model: torch.nn.Module, split: Split) -> list[torch.Tensor]:
    """``split.maps``, made on the first call: one pass per input, shared by every
    ``--segments`` config read off the map."""
    if split.maps is None:
        with torch.inference_mode():
            split.maps = [segments.feature_map(model, x, CPU) for x, _ in split.inputs]
    return split.maps


def figures(scores: torch.Tensor, labels: list[str]) -> RetrievalResult:
    """Every track a query against all others, by ``(N, N)`` scores."""
    acc = MetricAccumulator(labels)
    acc.add(scores, list(range(len(labels))))
    return acc.result()


def row(name: str, result: RetrievalResult, plain: RetrievalResult, labels: list[str],
        resamples: int) -> dict:
    s = result.summary()
    paired = compare(plain, result, labels, resamples, 0)
    return dict(system=name, map=s["map"], mr1=s["mr1"], top1=s["top1_rate"],
                difference=paired["difference"], interval_95=paired["interval_95"])


def parse_pair(text: str) -> tuple[int, int]:
    length, hop = (int(v) for v in text.split(","))
    return length, hop


def parse_rule(text: str) -> tuple[str, int]:
    """``max``, ``topk3``, ``diag2`` -> (name, k)."""
    name = text.rstrip("0123456789")
    return name, int(text[len(name):] or 1)


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def parse_args() -> argparse.Namespace:
    parser = split_parser(__doc__)
    parser.add_argument("--weights", default=None, help="a package (default: the shipped one)")
    parser.add_argument("--excerpt", type=float, metavar="SECONDS")
    parser.add_argument("--first-cliques", type=int, metavar="N",
                        help="only the first N cliques in sorted order")
    parser.add_argument("--segments", type=parse_pair, action="append", default=[],
                        metavar="LENGTH,HOP")
    parser.add_argument("--segment-source", default="windows", choices=SEGMENT_SOURCES,
                        help="embed each window, or read them off the track's own pass")
    parser.add_argument("--segment-tempi", type=floats, metavar="SCALES",
                        help="embed segments at these tempi (default: the package's)")
    parser.add_argument("--rules", default="max,topk3,diag2", type=lambda s: s.split(","))
    parser.add_argument("--segment-weights", default="0.25,0.5,0.75,1", type=floats)
    parser.add_argument("--shortlists", default="",
                        type=lambda s: [int(v) for v in s.split(",") if v])
    parser.add_argument("--fusion-weights", default="0,0.3,0.5,0.7", type=floats)
    parser.add_argument("--stack", type=int, default=3)
    parser.add_argument("--kappa", type=float, default=0.1)
    parser.add_argument("--key", default="oti", choices=CHROMA_KEYS)
    parser.add_argument("--rerank-base", metavar="LENGTH,HOP,RULE,WEIGHT",
                        help="re-rank this segment scoring instead of plain")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--cache", type=Path, help="keep embeddings here")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def cache_path(args: argparse.Namespace, loaded: LoadedWeights, what: str) -> Path | None:
    if args.cache is None:
        return None
    key = json.dumps([loaded.sha256, str(args.metadata.resolve()), str(args.features_dir.resolve()),
                      args.excerpt, args.first_cliques, what])
    return args.cache / f"{what}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def segment_systems(args, loaded, split, plain_scores, plain, costs) -> tuple[list[dict], dict]:
    """Rows of every segment config x rule x weight, and the ``(N, N)`` scores by name."""
    rows, scores_by_name = [], {}
    everyone = list(range(len(split.labels)))
    tempi = tuple(args.segment_tempi or loaded.features.tempo_scales)
    tempo_key = "" if tempi == loaded.features.tempo_scales else "-" + "-".join(map(str, tempi))
    source_key = "-map" if args.segment_source == "map" else ""
    for length, hop in args.segments:
        cfg = ScoringConfig(segment_length=length, segment_hop=hop, segment_tempo_scales=tempi,
                            segment_source=args.segment_source)
        sets = cached(cache_path(args, loaded, f"segments-{length}-{hop}{tempo_key}{source_key}"),
                      lambda: embed_segment_sets(loaded, split, cfg, args.batch_size))
        parts = torch.from_numpy(sets["flat"]).split(sets["counts"].tolist())
        packed = segments.PackedSegments.pack(parts)
        costs[f"segments {length},{hop}"] = dict(
            model_s_per_segment=float(sets["seconds"]),
            segments_per_track=float(sets["counts"].mean()))
        for name, k in map(parse_rule, args.rules):
            rule = ScoringConfig(segment_rule=name, segment_k=k)
            segments.segment_scores(packed, everyone[:1], rule)  # first-call costs, untimed
            start = time.perf_counter()
            seg = segments.segment_scores(packed, everyone, rule)
            alone = segments.one_window_pairs(packed, everyone)
            costs[f"segments {length},{hop}"][f"{name}{k}_s_per_pair"] = (
                (time.perf_counter() - start) / len(everyone) ** 2)
            for w in args.segment_weights:
                label = f"segments {length},{hop} {name}{k} w={w:g}"
                scores = segments.blend(plain_scores, seg, alone, ScoringConfig(segment_weight=w))
                scores_by_name[f"{length},{hop},{name}{k},{w:g}"] = scores
                rows.append(row(label, figures(scores, split.labels), plain, split.labels,
                                args.resamples))
    return rows, scores_by_name


def rerank_systems(args, split, base_name, base_scores, plain, costs) -> list[dict]:
    """Rows of every shortlist x fusion weight, re-ranking ``base_scores``."""
    if not args.shortlists:
        return []
    everyone = list(range(len(split.labels)))
    cfg = ScoringConfig(rerank=max(args.shortlists), chroma_stack=args.stack,
                        chroma_kappa=args.kappa, chroma_key=args.key)
    short = align.shortlists(base_scores, everyone, cfg.rerank)  # (N, K)
    align.load_kernels()  # first-call costs, untimed
    start = time.perf_counter()
    read = [align.Aligned.of(c, cfg.chroma_stack) for c in split.chromas]
    aligned = torch.tensor([[align.aligned_score(read[q], read[c], cfg) for c in cands]
                            for q, cands in enumerate(short.tolist())])
    costs[f"alignment stack={args.stack} kappa={args.kappa:g} key={args.key}"] = dict(
        s_per_pair=(time.perf_counter() - start) / short.numel(),
        chroma_frames_per_track=float(np.mean([len(c) for c in split.chromas])))
    rows = []
    for k in sorted(args.shortlists):
        model = base_scores.gather(1, short[:, :k])
        for w in args.fusion_weights:
            fused = align.fuse(model, aligned[:, :k], w)
            scores = align.reorder(base_scores, short[:, :k], fused)
            rows.append(row(f"{base_name} + re-rank K={k} W={w:g}", figures(scores, split.labels),
                            plain, split.labels, args.resamples))
    return rows


def print_table(rows: list[dict]) -> None:
    print("| system | MAP | MR1 | Top-1 | MAP - plain [95 % interval] |\n|---|---|---|---|---|")
    for r in rows:
        low, high = r["interval_95"]
        print(f"| {r['system']} | {r['map']:.3f} | {r['mr1']:.2f} | {r['top1']:.3f} | "
              f"{r['difference']:+.3f} [{low:+.3f}, {high:+.3f}] |")


def print_costs(costs: dict, n_tracks: int, dim: int) -> None:
    """Per 1,000 tracks of this split's lengths, and the memory of 10,000."""
    print("\ncosts on this CPU (per 1,000 tracks; memory for 10,000 tracks):")
    track = costs["plain"]["model_s_per_track"]
    print(f"  plain: model {1000 * track:.0f} s; embeddings {10_000 * dim * 4 / 2**20:.0f} MiB")
    for name, c in costs.items():
        if name.startswith("segments"):
            per_track = c["model_s_per_segment"] * c["segments_per_track"]
            pairs = {k: v for k, v in c.items() if k.endswith("_s_per_pair")}
            rules = ", ".join(f"{k[:-11]} {1e6 * v:.0f} s per 1,000 x 1,000 pairs"
                              for k, v in pairs.items())
            memory = 10_000 * c["segments_per_track"] * dim * 4 / 2**20
            print(f"  {name}: {c['segments_per_track']:.1f} segments a track, model "
                  f"{1000 * per_track:.0f} s ({per_track / track:.2f}x plain); {rules}; "
                  f"{memory:.0f} MiB")
        elif name.startswith("alignment"):
            memory = 10_000 * c["chroma_frames_per_track"] * 12 * 4 / 2**20
            print(f"  {name}: {1000 * c['s_per_pair']:.2f} ms a pair, so 1,000 queries x K "
                  f"candidates take K x {1000 * c['s_per_pair']:.2f} s on one core; chroma of "
                  f"{c['chroma_frames_per_track']:.0f} frames a track, {memory:.0f} MiB")


def main() -> None:
    args = parse_args()
    loaded = load_weights(args.weights)
    split = load_split(args, loaded)
    print(f"{args.metadata}: {len(split.ids)} versions of {len(set(split.labels))} cliques, "
          + (f"first {args.excerpt:g} s" if args.excerpt else "whole clips"))
    tracks = cached(cache_path(args, loaded, "tracks"),
                    lambda: embed_tracks(loaded, split, args.batch_size))
    emb = torch.from_numpy(tracks["emb"])
    costs = {"plain": dict(model_s_per_track=float(tracks["seconds"]))}
    plain_scores = emb @ emb.T  # (N, N)
    plain = figures(plain_scores, split.labels)
    rows = [row("plain", plain, plain, split.labels, args.resamples)]
    seg_rows, by_name = segment_systems(args, loaded, split, plain_scores, plain, costs)
    rows += seg_rows
    base_name, base = "plain", plain_scores
    if args.rerank_base:
        length, hop, rule, weight = args.rerank_base.split(",")
        base_name, base = f"segments {args.rerank_base}", by_name[f"{length},{hop},{rule},{weight}"]
    rows += rerank_systems(args, split, base_name, base, plain, costs)
    print_table(rows)
    print_costs(costs, len(split.ids), emb.shape[1])
    if args.json:
        args.json.write_text(json.dumps(dict(rows=rows, costs=costs), indent=2) + "\n")


if __name__ == "__main__":
    main()
