"""Peak memory and time of ``metrics_from_embeddings`` on a synthetic collection.

The authors' evaluation builds an N x N class matrix (about 54 GB for the 116k test set);
this checks that the chunked metrics stay within a few GB.

    python -m benchmarks.speed.evaluate_memory --n 100000 --dim 512 --cliques 20000 --threads 1

Peak RSS comes from ``resource.getrusage`` (``ru_maxrss``, KiB on Linux) and covers the
whole process; the peak after building the embeddings is printed too, so the share of the
evaluation itself can be read off. On a GPU (``--device cuda``) the CUDA peak is printed.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from mirex_vi.eval.metrics import metrics_from_embeddings


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_embeddings(n: int, dim: int, cliques: int, noise: float,
                         seed: int) -> tuple[torch.Tensor, list[int]]:
    """``(n, dim)`` unit vectors scattered around ``cliques`` random centres, and labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % cliques  # (n,) every clique gets n // cliques versions or more
    emb = torch.randn(cliques, dim, generator=gen)[labels]  # (n, dim) centres
    emb += noise * torch.randn(n, dim, generator=gen)
    return torch.nn.functional.normalize(emb, dim=1), labels.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="collection size")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--cliques", type=int, default=20_000)
    parser.add_argument("--noise", type=float, default=2.0, help="version spread around centre")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    emb, labels = synthetic_embeddings(args.n, args.dim, args.cliques, args.noise, args.seed)
    rss_data = _peak_rss_mib()
    start = time.perf_counter()
    result = metrics_from_embeddings(emb, labels, chunk_size=args.chunk_size,
                                     device=args.device, progress=True)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    report = {
        "n": args.n, "dim": args.dim, "cliques": args.cliques, "chunk_size": args.chunk_size,
        "threads": args.threads, "device": args.device,
        "seconds": round(seconds, 1),
        "peak_rss_mib_after_data": round(rss_data),
        "peak_rss_mib": round(_peak_rss_mib()),
        **result.summary(),
    }
    if args.device.startswith("cuda"):
        report["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
