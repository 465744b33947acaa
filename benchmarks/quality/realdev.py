"""Packages on real covers beside the synthetic sets: one table, to choose on real music.

    python -m benchmarks.quality.realdev --weights A [--weights B ...] --realdev DIR \
        [--synthetic DIR] [--excerpt 20] [--ood METADATA [--ood-features DIR]] \
        [--recipe] [--resamples 10000] [--seed 0] [--json OUT]

The sets, each a light JSON split and the stored features of its versions:

- ``--realdev DIR``: real covers (a store of real cover recordings made with ``mirex-vi extract --pooled u8``), its ``*-light.json`` and its store;
- ``--synthetic DIR``: the synthetic corpus's test split, its ``*-light.json.test`` and its
  store; again on the first ``--excerpt`` seconds of every version (0: not);
- ``--ood METADATA``: the out-of-distribution set, its features in ``--ood-features``
  (default: the metadata's folder).

A folder given for a file is searched for the one file of that pattern. Every set is
read, and every package loaded, before anything is embedded. Each package embeds every
version and every version is a query against all others as ``mirex-vi evaluate --metadata
--device cpu --no-amp`` does (``evaluate_cliques``): by the plain inner product or, with
``--recipe``, by each package's own scoring recipe, its segments and re-rank made from the
same stored features. Every later package against the first: the paired MAP difference
(B - A, C - A, ...) and its 95 % interval from a bootstrap over cliques
(``paired.compare``); the first is embedded once however many follow. Prints the table
and the time taken.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks.quality.paired import compare
from benchmarks.quality.split_embedding import read_split
from mirex_vi.config import ScoringConfig
from mirex_vi.eval.evaluate import evaluate_cliques
from mirex_vi.io.metadata import Cliques
from mirex_vi.model.weights import LoadedWeights, load_weights

CPU = torch.device("cpu")


@dataclass(frozen=True)
class EvalSet:
    """One row of the table: a split, its features, and how much of each version is used."""

    name: str
    metadata: Path
    features: Path
    cliques: Cliques
    excerpt: float | None = None


def metadata_in(path: Path, pattern: str) -> Path:
    """``path`` itself if it is a file, else the one file of ``pattern`` in that folder.

    Raises:
        ValueError: no such file, or a folder with none or several.
    """
    if path.is_file():
        return path
    found = sorted(path.glob(pattern)) if path.is_dir() else []
    if len(found) != 1:
        raise ValueError(f"{path}: expected a file, or a folder with one {pattern} "
                         f"(found {len(found)})")
    return found[0]


def eval_sets(args: argparse.Namespace) -> list[EvalSet]:
    """The sets the options name, in table order, with their usable cliques.

    Raises:
        ValueError: a set whose metadata cannot be found or read, or that keeps no clique
            of two versions with features.
    """
    named = [("realdev", metadata_in(args.realdev, "*-light.json"), args.realdev, None)]
    if args.synthetic:
        test = metadata_in(args.synthetic, "*-light.json.test")
        named.append(("synthetic test", test, args.synthetic, None))
        if args.excerpt:
            named.append((f"synthetic test, first {args.excerpt:g} s", test, args.synthetic,
                          args.excerpt))
    if args.ood:
        ood = metadata_in(args.ood, "*-light.json")
        named.append(("OOD", ood, args.ood_features or ood.parent, None))
    sets = []
    for name, metadata, features, excerpt in named:
        cliques = read_split(metadata, features)
        if not cliques:
            raise ValueError(f"{metadata}: no clique of two or more versions has features "
                             f"in {features}")
        sets.append(EvalSet(name, metadata, features, cliques, excerpt))
    return sets


def score_set(packages: list[LoadedWeights], s: EvalSet, resamples: int, seed: int,
              recipe: bool = False) -> dict:
    """The figures of each package on set ``s`` (``summary()`` dicts), plain or by its
    ``recipe``, the seconds it took, and each later package's paired comparison with the
    first (``paired``, in order)."""
    t0 = time.perf_counter()
    results, labels = [], []
    for loaded in packages:
        cfg = loaded.features if recipe else replace(loaded.features, scoring=ScoringConfig())
        result, labels = evaluate_cliques(loaded.model, cfg, s.cliques, s.features, CPU,
                                          amp=False, excerpt=s.excerpt, progress=False)
        results.append(result)
    row = dict(set=s.name, metadata=str(s.metadata), features=str(s.features),
               excerpt=s.excerpt, versions=len(labels),
               figures=[r.summary() for r in results])
    row["paired"] = [compare(results[0], later, labels, resamples, seed) for later in results[1:]]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def print_table(names: list[str], rows: list[dict]) -> None:
    """One line per set: versions, queries, each package's MAP, then each later package's
    difference from A with its 95 % interval over cliques."""
    letters = [chr(ord("A") + i) for i in range(len(names))]
    for letter, name in zip(letters, names):
        print(f"{letter}: {name}")
    head = f"{'set':<32} {'versions':>8} {'queries':>7} " + " ".join(
        f"{'MAP ' + letter:>7}" for letter in letters)
    head += "".join(f"  {letter + ' - A  95 % interval':<27}" for letter in letters[1:])
    print("\n" + head + f" {'seconds':>8}")
    for row in rows:
        maps = " ".join(f"{f['map']:>7.4f}" for f in row["figures"])
        line = f"{row['set']:<32} {row['versions']:>8} {row['figures'][0]['n_queries']:>7} {maps}"
        for p in row["paired"]:
            low, high = p["interval_95"]
            line += f"  {p['difference']:+.4f} [{low:+.4f}, {high:+.4f}]"
        print(line + f" {row['seconds']:>8.1f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", action="append", required=True,
                        help="a weight package (folder or name); again for B, C, ...: each "
                             "compared with A")
    parser.add_argument("--realdev", type=Path, required=True, metavar="DIR")
    parser.add_argument("--synthetic", type=Path, metavar="DIR")
    parser.add_argument("--excerpt", type=float, default=20.0, metavar="SECONDS",
                        help="also score the synthetic test split's first SECONDS (0: not)")
    parser.add_argument("--ood", type=Path, metavar="METADATA")
    parser.add_argument("--ood-features", type=Path, metavar="DIR")
    parser.add_argument("--recipe", action="store_true",
                        help="score by each package's recipe (default: the plain inner product)")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    try:
        sets = eval_sets(args)
        packages = [load_weights(w) for w in args.weights]
    except (ValueError, OSError) as err:  # WeightsError is a ValueError
        sys.exit(f"error: {err}")
    rows = [score_set(packages, s, args.resamples, args.seed, args.recipe) for s in sets]
    print("scoring: " + ("each package's recipe" if args.recipe else "plain inner product"))
    print_table(args.weights, rows)
    seconds = time.perf_counter() - t0
    print(f"\n{len(sets)} sets x {len(packages)} package(s) in {seconds:.1f} s "
          f"(CPU, {torch.get_num_threads()} threads)")
    if args.json:
        figures = dict(weights=args.weights, recipe=args.recipe, rows=rows,
                       seconds=round(seconds, 1))
        try:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        except OSError as err:  # the table is printed already
            sys.exit(f"error: --json {args.json}: {err.strerror}")


if __name__ == "__main__":
    main()
