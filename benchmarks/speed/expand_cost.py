"""Time of ``--expand K`` beside the scoring it precedes, on random unit embeddings.

    python -m benchmarks.speed.expand_cost [--n 5000 20000] [--k 3] [--threads 2] [--device cpu]

For each collection size N it times ``scoring.expand_by_neighbours`` (N x N inner products
and a top-K per row) and then what every ``identify`` run does after embedding: the
distance rows of all N queries, formatted as the matrix's text (``io.matrix.format_row``;
the file itself is not written).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import random_units
from mirex_vi.inference.scoring import distance_rows, expand_by_neighbours
from mirex_vi.io.matrix import format_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print("| tracks | expand (s) | distances + text (s) |\n|---|---|---|")
    for n in args.n:
        emb = random_units(np.random.default_rng(0), n, args.dim)
        valid = np.ones(n, dtype=bool)
        start = time.perf_counter()
        expand_by_neighbours(emb, valid, args.k, device)
        expand_s = time.perf_counter() - start
        start = time.perf_counter()
        for row in distance_rows(emb, list(range(n)), valid, device):
            format_row(row)
        print(f"| {n} | {expand_s:.1f} | {time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
