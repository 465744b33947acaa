"""``download``: the audio of a Discogs-VI-YT metadata file, with yt-dlp (the ``download``
extra), into the layout ``extract`` reads; or, with ``--pooled-store``, straight into a
pooled store (docs/download.md)."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import click

from ..io.ytdlp import AUDIO_FORMATS, DEFAULT_URL_TEMPLATE
from .common import fail, interruptible, setup_logging

_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}


def _bytes_per_s(ctx, param, value: str | None) -> float:
    """``2M`` -> 2097152.0 (bytes/s; K, M, G are powers of 1024); 0 when not given."""
    if value is None:
        return 0.0
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", value, re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise click.BadParameter(f"{value!r} is not a rate in bytes/s such as 500K or 2M")
    return float(match[1]) * _UNITS[match[2].upper()]


@click.command()
@click.argument("metadata", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("audio_root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(1), default=4, show_default=True,
              help="Downloads at a time.")
@click.option("--rate-limit", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Downloads started per minute, all workers together (retries count); "
                   "0: no limit.")
@click.option("--max-bandwidth", callback=_bytes_per_s, metavar="RATE",
              help="Bytes/s, all workers together, e.g. 2M (yt-dlp's --limit-rate, shared "
                   "among the workers) [default: no limit].")
@click.option("--retries", type=click.IntRange(0), default=3, show_default=True,
              help="Further attempts after a transient failure (network, HTTP 429/403/5xx, "
                   "a truncated file).")
@click.option("--backoff", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds before the first retry; each further one waits twice as long.")
@click.option("--format", "format_", default="bestaudio/best", show_default=True,
              help="yt-dlp format selector, e.g. 'bestaudio[abr<=96]/bestaudio' or 'worstaudio'.")
@click.option("--audio-format", type=click.Choice(list(AUDIO_FORMATS)),
              help="Re-encode each file with ffmpeg (yt-dlp's --extract-audio).")
@click.option("--audio-quality", metavar="Q",
              help="With --audio-format: VBR quality 0 (best) to 10, or a bit rate such as 96K.")
@click.option("--pooled-store", type=click.Path(file_okay=False, path_type=Path),
              help="Extract each version into a u8 pooled store in this folder and delete its "
                   "audio once its features are on disk.")
@click.option("--cqt-workers", type=click.IntRange(1),
              help="With --pooled-store: CQT processes [default: CPU count].")
@click.option("--cookies", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Netscape cookies file, passed to yt-dlp.")
@click.option("--proxy", metavar="URL", help="Proxy passed to yt-dlp, e.g. socks5://host:1080.")
@click.option("--url-template", default=DEFAULT_URL_TEMPLATE, show_default=True,
              help="Where a version's media is; {id} is its YouTube id.")
@click.option("--retry-failed", is_flag=True,
              help="Try again the versions an earlier run found unavailable, private, removed, "
                   "geo-blocked or not found.")
@click.option("--quiet", is_flag=True, help="No progress bar or info messages.")
@interruptible("the files already fetched stay; a rerun fetches the rest")
def download(metadata, audio_root, workers, rate_limit, max_bandwidth, retries, backoff, format_,
             audio_format, audio_quality, pooled_store, cqt_workers, cookies, proxy,
             url_template, retry_failed, quiet) -> None:
    """Fetch the audio of every version of METADATA (Discogs-VI-YT light JSON or JSONL) into
    AUDIO_ROOT/audio/<id[:2]>/<id>.<ext>, the layout `extract --audio-root` reads.

    Versions already there (and readable as audio) are skipped; failures go to
    AUDIO_ROOT/download_errors.tsv. Exit 0 when any version was fetched or already there,
    1 when every one failed, 2 on bad input.
    """
    setup_logging(quiet)
    from ..io.metadata import read_metadata
    from ..io.ytdlp import FetchOptions, require_ytdlp

    try:
        require_ytdlp()
        ids = [v.youtube_id for versions in read_metadata(metadata).values() for v in versions]
    except (ImportError, ValueError, OSError) as err:
        fail(str(err))
    _check(ids, metadata, url_template, audio_format, audio_quality)
    opts = FetchOptions(url_template=url_template, format=format_, audio_format=audio_format,
                        audio_quality=audio_quality, per_minute=rate_limit,
                        bytes_per_s=max_bandwidth, workers=workers, retries=retries,
                        backoff_s=backoff, cookies=cookies, proxy=proxy)
    try:
        if pooled_store is None:
            from ..io.download import download as fetch_versions

            summary = fetch_versions(ids, audio_root, opts, retry_failed=retry_failed,
                                     progress=not quiet)
        else:
            summary, stored = _into_store(ids, audio_root, pooled_store, opts, cqt_workers,
                                          retry_failed, quiet)
    except (ValueError, OSError) as err:
        fail(str(err))
    click.echo(summary.describe(audio_root), err=True)
    if pooled_store is not None:
        click.echo(f"pooled store {pooled_store}: {stored} versions", err=True)
    if summary.fetched + summary.present == 0:
        click.echo(f"error: none of the {len(set(ids))} versions could be fetched", err=True)
        sys.exit(1)


def _check(ids: list[str], metadata: Path, url_template: str, audio_format: str | None,
           audio_quality: str | None) -> None:
    """Exit 2 on options that cannot work, before anything is fetched."""
    if not ids:
        fail(f"{metadata}: no versions with a YouTube id")
    try:
        if "{id}" not in url_template or url_template.format(id="x") == url_template:
            raise KeyError("id")
    except (KeyError, IndexError, ValueError):
        fail(f"--url-template {url_template!r}: needs {{id}} (and no other {{...}} field)")
    if audio_quality and not audio_format:
        fail("--audio-quality needs --audio-format (the quality of a re-encoding)")
    if audio_format and shutil.which("ffmpeg") is None:
        fail("--audio-format needs ffmpeg, which is not installed")


def _into_store(ids, audio_root, pooled_store, opts, cqt_workers, retry_failed, quiet):
    from .common import share_cores_with_workers

    share_cores_with_workers()
    from ..features.download import download_to_store
    from ..features.workers import default_workers

    return download_to_store(ids, audio_root, pooled_store, opts,
                             cqt_workers=cqt_workers or default_workers(),
                             retry_failed=retry_failed, progress=not quiet)
