"""What every command-line module shares: the error exit, logging and the CPU cores."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import warnings
from collections.abc import Iterator

import click


EXIT_STRICT, EXIT_INPUT, EXIT_OUTPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 3, 130, 143
EXIT_CODES = f"""\b
Exit codes:
  0    success
  {EXIT_STRICT}    a track could not be embedded under --strict
  {EXIT_INPUT}    bad input (lists, output location, weights, config, device),
       found before any audio is read
  {EXIT_OUTPUT}    the result could not be written (disk full, ...); the embedding
       cache is kept, so a rerun only writes it
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {EXIT_TERMINATED}  stopped by SIGTERM"""


def fail(message: str, code: int = EXIT_INPUT) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that everything unwinds as for Ctrl-C."""


@contextlib.contextmanager
def interruptible(kept: str = "") -> Iterator[None]:
    """Turn Ctrl-C and SIGTERM into one ``error:`` line and exit 130 / 143.

    Unwinding stops the worker processes and removes half-written temporaries; ``kept``
    says what survives (e.g. the embedding cache).
    """
    def terminate(signum, frame) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    suffix = f"; {kept}" if kept else ""
    try:
        yield
    except KeyboardInterrupt:
        fail(f"interrupted (Ctrl-C){suffix}", EXIT_INTERRUPTED)
    except _Terminated:
        fail(f"stopped by SIGTERM{suffix}", EXIT_TERMINATED)
    finally:
        signal.signal(signal.SIGTERM, previous)


def share_cores_with_workers() -> None:
    """Let torch's idle OpenMP threads sleep instead of spin, so that the CQT worker
    processes get the cores (README, "Speed"). Effective only before torch is loaded; an
    explicit OMP_WAIT_POLICY wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _LineHandler(logging.StreamHandler):
    """Each message as a ``warning: ...`` or ``info: ...`` line on stderr, in the form of the
    ``error: ...`` lines, starting a line of its own even while a progress bar is drawn
    (``tqdm.write`` clears the bar, writes the line, then draws the bar again)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(f"{record.levelname.lower()}: {self.format(record)}", file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own rule: a failed message never raises
            self.handleError(record)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: a library's warning as one
    ``warning: ...`` line, without its file, line number and source line."""
    logging.getLogger("mirex_vi").warning("%s", " ".join(str(message).split()))


def setup_logging(quiet: bool) -> None:
    """Info messages unless ``quiet``, every message one ``level: ...`` line; library
    warnings of this process become ``warning: ...`` lines too, where this sets up logging
    (not when the command runs inside a program that has, such as a test). With ``quiet``,
    no library warnings, in the worker processes too (they inherit the environment)."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        handlers=[_LineHandler()])
    if any(isinstance(h, _LineHandler) for h in logging.getLogger().handlers):
        warnings.showwarning = _warning_line
    if quiet:
        warnings.simplefilter("ignore")
        os.environ["PYTHONWARNINGS"] = "ignore"


def embed_settings(device: str, workers: int | None, amp: bool = True):
    """The ``EmbedSettings`` of ``--device``, ``--workers`` (and ``--no-amp``), the rest
    default (``EmbedSettings.resolve``).

    Raises:
        ValueError: an unavailable or malformed device.
    """
    from ..inference.settings import EmbedSettings

    return EmbedSettings.resolve(device, amp, workers=workers)


# Off by default: the authors' scoring is the plain inner product of the embeddings.
expand_option = click.option(
    "--expand", type=click.IntRange(0), default=0, show_default=True, metavar="K",
    help="Before scoring, add to each embedding those of its K nearest neighbours among "
         "the tracks scored that have it among their K nearest too, weighted by similarity "
         "(database-side augmentation): higher MAP, but a worse mean rank of the first "
         "version found (model card). 0: plain scoring.")


def require_faiss() -> None:
    """Exit 2 saying how to install FAISS unless it imports: the one check before a command
    imports the ``search`` subpackage's modules."""
    try:
        from ..search import faiss_index  # noqa: F401  (its ImportError says how to install)
    except ImportError as err:
        fail(str(err))
