"""What every command-line module shares: the error exit, logging and the CPU cores."""

from __future__ import annotations

import logging
import os
import sys

import click


def fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def share_cores_with_workers() -> None:
    """Let torch's idle OpenMP threads sleep instead of spin, so that the CQT worker
    processes get the cores (README, "Speed"). Effective only before torch is loaded; an
    explicit OMP_WAIT_POLICY wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
