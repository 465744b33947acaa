"""What the benchmarks that score weight packages on a labelled split share: their command
line's split options, and one package's embeddings of every version of that split.

Imported by ``paired``, ``tempo_sweep``, ``test_subsets`` and ``pair_breakdown``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mirex_vi.eval.evaluate import embed_cliques
from mirex_vi.features.pooled import filter_available
from mirex_vi.io.metadata import Cliques, read_metadata
from mirex_vi.model.weights import LoadedWeights, load_weights


def split_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the script's docstring as help and the required ``--metadata`` (a light
    JSON split) and ``--features-dir`` (its pooled store or the authors' layout)."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metadata", type=Path, required=True)
    parser.add_argument("--features-dir", type=Path, required=True)
    return parser


def add_scoring_options(parser: argparse.ArgumentParser, weights_help: str) -> None:
    """The options of the scripts that score packages as ``mirex-vi evaluate`` does:
    ``--weights`` (repeated), ``--excerpt SECONDS``, ``--expand K`` and ``--json OUT``."""
    parser.add_argument("--weights", action="append", required=True, help=weights_help)
    parser.add_argument("--excerpt", type=float, metavar="SECONDS",
                        help="use only the first SECONDS of every version")
    parser.add_argument("--expand", type=int, default=0, metavar="K",
                        help="score as `evaluate --expand K` does (default: plain scoring)")
    parser.add_argument("--json", type=Path, help="also write the figures here")


def read_split(metadata: Path, features_dir: Path) -> Cliques:
    """The cliques of ``metadata`` whose versions have stored features."""
    return filter_available(read_metadata(metadata), features_dir)


def embed_split(weights: str | None, cliques: Cliques, features_dir: Path,
                excerpt: float | None = None) -> tuple[LoadedWeights, torch.Tensor, list[str]]:
    """The package ``weights`` (folder, name, or None: the default), the ``(N, D)``
    embeddings of every version of ``cliques`` and their ``(N,)`` clique ids, embedded as
    ``mirex-vi evaluate --device cpu --no-amp`` does (whole tracks, or their first
    ``excerpt`` seconds)."""
    loaded = load_weights(weights)
    emb, labels = embed_cliques(loaded.model, loaded.features, cliques, features_dir,
                                torch.device("cpu"), amp=False, excerpt=excerpt, progress=False)
    return loaded, emb, labels
