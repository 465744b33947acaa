"""Two pooled stores, version by version: how far a re-extraction is from a kept store.

    python -m benchmarks.quality.compare_stores NEW_STORE KEPT_STORE

For every version of the first store that the second holds: whether the pooled lengths
match, whether the rows are identical, and how far apart their magnitudes are, in dB
relative to each version's own peak over the uint8 store's 80 dB range (one uint8 step is
80/255 = 0.31 dB). Used to check that ``mirex-vi corpus --rerender`` and ``mirex-vi extract
--pooled u8`` give back the kept corpus (tools/README.md).
"""

from __future__ import annotations

import argparse

import numpy as np

from mirex_vi.features.pooled import PooledStore

RANGE_DB = 80.0


def relative_db(pooled: np.ndarray) -> np.ndarray:
    """``(T', bins)`` magnitudes in dB below their peak, floored at -80 dB."""
    peak = float(pooled.max())
    scaled = pooled / peak if peak > 0 else pooled
    return 20 * np.log10(np.maximum(scaled, 10 ** (-RANGE_DB / 20)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("new", help="pooled store folder")
    parser.add_argument("kept", help="pooled store folder")
    args = parser.parse_args()
    new, kept = PooledStore.open(args.new), PooledStore.open(args.kept)
    shared = [y for y in new.entries if kept.has(y)]
    other_length = identical = differing = cells = 0
    worst = 0.0
    for yid in shared:
        a, b = new.pooled(yid, scaled=False), kept.pooled(yid, scaled=False)
        if a.shape != b.shape:
            other_length += 1
            continue
        gap = np.abs(relative_db(a) - relative_db(b))
        identical += int(gap.max() == 0)
        differing += int((gap > 1e-3).sum())
        cells += gap.size
        worst = max(worst, float(gap.max()))
    print(f"{len(shared)} versions in both ({len(new) - len(shared)} only in {args.new}); "
          f"other pooled length: {other_length}; identical: {identical}; cells differing: "
          f"{differing} of {cells} ({differing / max(cells, 1):.1e}); largest gap {worst:.2f} dB")


if __name__ == "__main__":
    main()
