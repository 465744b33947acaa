"""Evaluation plots from a :class:`~mirex_vi.eval.metrics.RetrievalResult` (needs matplotlib).

matplotlib is an optional extra (``pip install mirex-vi[plot]``); it is imported only when
plots are written, and without pyplot, so no display or global state is involved.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_open, make_folder
from .metrics import RetrievalResult

log = logging.getLogger(__name__)


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "writing plots needs matplotlib: pip install 'mirex-vi[plot]' (or matplotlib>=3.8)"
        ) from err
    return Figure


def check_can_plot(out_dir: str | os.PathLike) -> None:
    """Fail now, before the work whose figures are plotted, where :func:`write_plots` would
    fail after it: no matplotlib, or a folder that cannot be made (under a file, no
    permission). The folder is made.

    Raises:
        ValueError: saying which.
    """
    try:
        _figure_class()
        make_folder(out_dir, "plot folder")
    except (ImportError, OSError) as err:
        raise ValueError(str(err)) from err


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return path


def _rank1_histogram(figure_class, rank1: np.ndarray):
    """Histogram of the 1-based rank of the first correct version, log-log axes."""
    fig = figure_class(figsize=(7, 4))
    ax = fig.add_subplot()
    top = max(int(rank1.max()), 2) if rank1.size else 2
    bins = np.unique(np.geomspace(1, top + 1, num=min(40, top + 1)).round())
    ax.hist(rank1, bins=bins, color="tab:blue", edgecolor="white")
    ax.set_xscale("log")
    ax.set_yscale("log")  # rank 1 dominates for a good model; keep the tail visible
    ax.set_xlabel("rank of the first correct version (log scale)")
    ax.set_ylabel("queries (log scale)")
    mr1 = float(rank1.mean()) if rank1.size else float("nan")
    ax.set_title(f"First correct version: MR1 = {mr1:.2f}, {rank1.size} queries")
    fig.tight_layout()
    return fig


def _ap_per_clique_plot(figure_class, ap_by_clique: dict[Hashable, float]):
    """AP per clique, sorted in descending order (one point per clique)."""
    fig = figure_class(figsize=(7, 4))
    ax = fig.add_subplot()
    values = np.sort(np.fromiter(ap_by_clique.values(), dtype=np.float64))[::-1]
    x = np.arange(1, values.size + 1)
    ax.fill_between(x, values, step="mid", alpha=0.4, color="tab:orange")
    ax.plot(x, values, drawstyle="steps-mid", color="tab:orange")
    mean = float(values.mean()) if values.size else float("nan")
    ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"mean over cliques {mean:.3f}")
    ax.set_xlabel("clique (sorted by AP)")
    ax.set_ylabel("mean AP of its queries")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"AP per clique ({values.size} cliques)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def write_plots(result: RetrievalResult, labels: Sequence[Hashable],
                out_dir: str | os.PathLike) -> list[Path]:
    """Write ``rank1_histogram.png`` and ``ap_per_clique.png`` into ``out_dir``.

    Args:
        result: per-query statistics (from ``metrics_from_embeddings`` or
            ``metrics_from_distances``).
        labels: the ``(N,)`` labels the result was computed with.
        out_dir: folder, created if missing.

    Returns:
        The paths written.
    """
    figure_class = _figure_class()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        _save(_rank1_histogram(figure_class, result.rank1), out / "rank1_histogram.png"),
        _save(_ap_per_clique_plot(figure_class, result.ap_per_clique(labels)),
              out / "ap_per_clique.png"),
    ]
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths
