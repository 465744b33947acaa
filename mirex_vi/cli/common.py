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


def _segments(ctx, param, value: str | None) -> tuple[int, int] | None:
    """``--segments LENGTH,HOP`` (pooled frames) or ``off`` as ``(length, hop)``."""
    if value is None:
        return None
    if value == "off":
        return 0, 0
    try:
        length, hop = (int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give LENGTH,HOP in pooled frames, or off") from None
    _scoring_check(dict(segment_length=length, segment_hop=hop))
    return length, hop


def _segment_rule(ctx, param, value: str | None) -> tuple[str, int] | None:
    """``--segment-rule max|topkK|diagK`` as ``(rule, k)``."""
    if value is None:
        return None
    rule = value.rstrip("0123456789")
    k = int(value[len(rule):] or 1)
    _scoring_check(dict(segment_rule=rule, segment_k=k))
    return rule, k


def _segment_tempi(ctx, param, value: str | None) -> tuple[float, ...] | None:
    """``--segment-tempo-scales 1`` as a tuple of floats, ``package`` as ``()``."""
    if value is None or value == "package":
        return None if value is None else ()
    try:
        scales = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    _scoring_check(dict(segment_tempo_scales=scales))
    return scales


def _scoring_check(changes: dict) -> None:
    """Raise click.BadParameter with ``ScoringConfig``'s message when ``changes`` are out of
    range on their own."""
    from ..config import ScoringConfig

    try:
        ScoringConfig(**changes)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


SEGMENT_OPTIONS = [
    click.option("--segments", callback=_segments, metavar="LENGTH,HOP|off",
                 help="Also embed every track as windows of LENGTH pooled frames (0.46 s "
                      "each) every HOP, and blend the segment rule into each pair's score "
                      "[default: the package's recipe; for index add, the index's]."),
    click.option("--segment-source", type=click.Choice(["windows", "map"]),
                 help="Embed each window (windows), or read them off the track's own pass "
                      "(map: nearly free; one pass at tempo 1, LENGTH 172+16k, HOP a multiple "
                      "of 16)."),
    click.option("--segment-rule", callback=_segment_rule, metavar="max|topkK|diagK",
                 help="Segment pairs -> a pair's score: the best, the mean of the K best, "
                      "or the best run of K along a diagonal."),
    click.option("--segment-weight", type=click.FloatRange(0, 1), metavar="W",
                 help="Share of the segment rule in a pair's score."),
    click.option("--segment-tempo-scales", callback=_segment_tempi, metavar="S1,S2,...",
                 help="Embed the segments at these tempi (e.g. 1: one pass); 'package': "
                      "at the package's --tempo-scales."),
]
RERANK_OPTIONS = [
    click.option("--rerank", type=click.IntRange(0, 10_000), metavar="K",
                 help="Re-rank each query's K best by chroma alignment (Qmax); 0: off."),
    click.option("--fusion-weight", type=click.FloatRange(0, 1), metavar="W",
                 help="Weight of the model's z-score against the alignment's in the "
                      "re-rank (1: the model's order)."),
]


def with_options(options: list, command):
    """``command`` with ``options`` (click decorators), in the order listed."""
    for option in reversed(options):
        command = option(command)
    return command


def segment_options(command):
    """The options that change a package's segment recipe (``--segments`` and the source,
    rule, weight and tempi of segments); :func:`scoring_changes` collects them."""
    return with_options(SEGMENT_OPTIONS, command)


def scoring_options(command):
    """The options that change a package's scoring recipe (``FeatureConfig.scoring``) for one
    run: the segment options and the alignment re-rank's; :func:`scoring_changes` collects
    them."""
    return with_options(SEGMENT_OPTIONS + RERANK_OPTIONS, command)


def scoring_changes(segments: tuple[int, int] | None, segment_rule: tuple[str, int] | None,
                    segment_weight: float | None, segment_tempo_scales: tuple | None,
                    segment_source: str | None = None, rerank: int | None = None,
                    fusion_weight: float | None = None) -> dict:
    """The ``ScoringConfig`` fields that :func:`scoring_options` change (those given)."""
    changes: dict = {}
    if segments is not None:
        changes.update(segment_length=segments[0], segment_hop=segments[1])
    if segment_rule is not None:
        changes.update(segment_rule=segment_rule[0], segment_k=segment_rule[1])
    for name, value in (("segment_weight", segment_weight), ("rerank", rerank),
                        ("segment_tempo_scales", segment_tempo_scales),
                        ("segment_source", segment_source), ("fusion_weight", fusion_weight)):
        if value is not None:
            changes[name] = value
    return changes


def require_faiss() -> None:
    """Exit 2 saying how to install FAISS unless it imports: the one check before a command
    imports the ``search`` subpackage's modules."""
    try:
        from ..search import faiss_index  # noqa: F401  (its ImportError says how to install)
    except ImportError as err:
        fail(str(err))
