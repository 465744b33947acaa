"""mirex_vi: the Discogs-VINet-MIREX cover song identification system."""

__version__ = "0.1.0"
