"""One version's audio fetched with yt-dlp (the ``download`` extra): options, retries with
exponential backoff, the rate shared by every worker, and why a fetch failed.

A fetch writes under a hidden temporary name in the version's own folder
(``audio/<id[:2]>/.<id>.dl.<ext>``, ``.part`` while yt-dlp writes it); only a complete file
that probes as audio is renamed to ``<id>.<ext>``, so a file at its final name is always
whole. yt-dlp is imported only here, and only when a fetch runs.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .metadata import AUDIO_EXTENSIONS

log = logging.getLogger(__name__)

DEFAULT_URL_TEMPLATE = "https://www.youtube.com/watch?v={id}"
INSTALL_HINT = "pip install 'mirex-vi[download]'"
TEMP_MARK = ".dl."  # temporaries are ".<id>.dl.<ext>[.part|.ytdl|...]"
# --audio-format: yt-dlp's FFmpegExtractAudio codecs whose files extract reads.
AUDIO_FORMATS = {"mp3": ".mp3", "m4a": ".m4a", "opus": ".opus", "vorbis": ".ogg",
                 "flac": ".flac", "wav": ".wav"}


@dataclass(frozen=True)
class FetchOptions:
    """How every version is fetched (``mirex-vi download``'s options)."""

    url_template: str = DEFAULT_URL_TEMPLATE
    format: str = "bestaudio/best"
    audio_format: str | None = None  # re-encode with ffmpeg (a key of AUDIO_FORMATS)
    audio_quality: str | None = None  # with audio_format: VBR 0 (best)..10, or a rate, "96K"
    per_minute: float = 0.0  # downloads started per minute, all workers together; 0: no limit
    bytes_per_s: float = 0.0  # bandwidth, all workers together; 0: no limit
    workers: int = 4
    retries: int = 3  # further attempts after a transient failure
    backoff_s: float = 5.0  # the first wait; it doubles with each retry
    cookies: Path | None = None
    proxy: str | None = None
    socket_timeout_s: float = 30.0


# Failure kinds: the first word of each errors-file row. PERMANENT ones are not tried again
# by a rerun (unless asked); TRANSIENT ones are retried within the run, with backoff.
PERMANENT = frozenset({"unavailable", "private", "removed", "geo-blocked", "not-found"})
TRANSIENT = frozenset({"network", "throttled", "forbidden", "truncated", "undecodable"})
# (kind, lower-case fragments of yt-dlp's message); the first that matches names the kind.
_KINDS = (
    ("geo-blocked", ("your country", "geo restrict", "geo-restrict")),
    ("private", ("private video", "members-only", "join this channel")),
    ("removed", ("has been removed", "has been terminated", "no longer available",
                 "violating youtube")),
    ("age-restricted", ("confirm your age", "age-restricted", "inappropriate for some users")),
    ("throttled", ("http error 429", "too many requests", "not a bot", "rate-limit")),
    ("not-found", ("http error 404", "http error 410")),
    ("forbidden", ("http error 403",)),
    ("truncated", ("more expected", "content too short", "incompleteread", "bytes, expected")),
    ("format", ("requested format", "no video formats", "does not read")),
    ("unavailable", ("video unavailable", "is unavailable", "not available", "premieres in",
                     "live event")),
    ("unsupported", ("unsupported url", "is not a valid url")),
    ("network", ("http error 5", "timed out", "connection", "unable to download",
                 "name resolution", "network is unreachable", "transporterror")),
)


def classify(message: str) -> str:
    """The failure kind of a yt-dlp error message ("other" when none matches)."""
    text = message.lower()
    return next((kind for kind, marks in _KINDS if any(m in text for m in marks)), "other")


class FetchError(Exception):
    """A failed fetch: ``kind`` (see ``classify``) and the message."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Stopped(Exception):
    """Raised inside yt-dlp's progress hook to abandon a download when the run stops."""


def require_ytdlp() -> None:
    """Raises ImportError, saying how to install it, when yt-dlp is missing."""
    try:
        import yt_dlp  # noqa: F401
    except ImportError as err:
        raise ImportError(f"yt-dlp is not installed: {INSTALL_HINT}") from err


def probe(path: Path) -> str | None:
    """Why ``path`` is not an audio file, or None: a header read (soundfile, else ffprobe),
    never a full decode."""
    import soundfile as sf

    try:
        if sf.info(str(path)).frames > 0:
            return None
        return "no audio frames"
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass
    if shutil.which("ffprobe") is None:
        return "unreadable by soundfile, and ffprobe is not installed"
    proc = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                           "stream=codec_type", "-of", "csv=p=0", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or "audio" not in proc.stdout:
        return "not an audio file (no audio stream found by ffprobe)"
    return None


def find_audio(folder: Path, youtube_id: str) -> Path | None:
    """The version's audio in ``folder`` that probes as audio, if there is one."""
    for ext in AUDIO_EXTENSIONS:
        path = folder / f"{youtube_id}{ext}"
        if path.is_file() and probe(path) is None:
            return path
    return None


def temporaries(folder: Path, youtube_id: str | None = None) -> list[Path]:
    """The fetch temporaries in ``folder`` (of one version, or of all)."""
    pattern = f".{glob.escape(youtube_id)}{TEMP_MARK}*" if youtube_id else f".*{TEMP_MARK}*"
    return [p for p in folder.glob(pattern) if p.is_file()]


class RateLimiter:
    """At most ``per_minute`` starts a minute, evenly spaced, shared by every worker thread."""

    def __init__(self, per_minute: float):
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        """Block until this start's turn (or until ``stop`` is set)."""
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        stop.wait(start - now)


def fetch(youtube_id: str, folder: Path, opts: FetchOptions, limiter: RateLimiter,
          stop: threading.Event) -> Path:
    """Fetch one version into ``folder`` as ``<id>.<ext>``, retrying transient failures
    ``opts.retries`` times after ``backoff_s``, ``2 * backoff_s``... (with jitter).

    Raises:
        FetchError: the last attempt's failure; no temporary of the version is left.
        Stopped: ``stop`` was set; no temporary is left either.
    """
    folder.mkdir(parents=True, exist_ok=True)
    attempt = 0
    try:
        while True:
            limiter.wait(stop)
            if stop.is_set():
                raise Stopped
            try:
                return _attempt(youtube_id, folder, opts, stop)
            except FetchError as err:
                if err.kind not in TRANSIENT or attempt >= opts.retries:
                    raise
                delay = opts.backoff_s * 2 ** attempt * random.uniform(0.75, 1.25)
                attempt += 1
                log.info("%s: %s (%s); retry %d of %d in %.0f s", youtube_id, err.kind, err,
                         attempt, opts.retries, delay)
                stop.wait(delay)
    finally:
        for tmp in temporaries(folder, youtube_id):
            tmp.unlink(missing_ok=True)


def _attempt(youtube_id: str, folder: Path, opts: FetchOptions, stop: threading.Event) -> Path:
    """One yt-dlp run; the file it wrote, checked and renamed into place."""
    import yt_dlp

    try:
        with _private_copy(opts.cookies) as cookies, \
                yt_dlp.YoutubeDL(_ytdlp_params(youtube_id, folder, opts, cookies, stop)) as ydl:
            info = ydl.extract_info(opts.url_template.format(id=youtube_id), download=True)
    except yt_dlp.utils.DownloadError as err:
        message = " ".join(str(err).replace("ERROR:", "").split())
        raise FetchError(classify(message), message) from None
    downloads = (info or {}).get("requested_downloads") or [{}]
    written = Path(downloads[0].get("filepath") or "")
    if not written.is_file():
        raise FetchError("other", "yt-dlp reported no file")
    ext = written.suffix.lower()
    if ext not in AUDIO_EXTENSIONS:
        raise FetchError("format", f"yt-dlp wrote a {ext} file, which extract does not read "
                         "(choose --format or --audio-format)")
    reason = probe(written)
    if reason is not None:
        raise FetchError("undecodable", reason)
    with open(written, "rb") as f:  # durable before it gets a name that means "done"
        os.fsync(f.fileno())
    final = folder / f"{youtube_id}{ext}"
    os.replace(written, final)
    for other in AUDIO_EXTENSIONS:  # an older file that failed the probe would be read first
        if other != ext:
            (folder / f"{youtube_id}{other}").unlink(missing_ok=True)
    return final


@contextlib.contextmanager
def _private_copy(path: Path | None) -> Iterator[Path | None]:
    """A copy of ``path`` (readable by this user only) for the duration; yt-dlp writes its
    cookies file back when it closes, and the workers must neither race on the user's file
    nor change it."""
    if path is None:
        yield None
        return
    fd, copy = tempfile.mkstemp(prefix="mirex-vi-cookies-", suffix=".txt")
    try:
        with open(fd, "wb") as f, open(path, "rb") as src:
            shutil.copyfileobj(src, f)
        yield Path(copy)
    finally:
        os.unlink(copy)


def _ytdlp_params(youtube_id: str, folder: Path, opts: FetchOptions, cookies: Path | None,
                  stop: threading.Event) -> dict:
    def hook(status: dict) -> None:
        if stop.is_set():
            raise Stopped

    template = f".{youtube_id}{TEMP_MARK}".replace("%", "%%") + "%(ext)s"
    params = {
        "format": opts.format,
        "outtmpl": {"default": str(folder).replace("%", "%%") + os.sep + template},
        "noplaylist": True, "overwrites": True,
        "retries": 0, "fragment_retries": 0, "extractor_retries": 0,  # retried by fetch()
        "socket_timeout": opts.socket_timeout_s,
        "quiet": True, "no_warnings": True, "noprogress": True, "logger": _YtdlpLog(youtube_id),
        "progress_hooks": [hook],
    }
    if opts.bytes_per_s:
        params["ratelimit"] = max(1, int(opts.bytes_per_s / opts.workers))
    if cookies:
        params["cookiefile"] = str(cookies)
    if opts.proxy:
        params["proxy"] = opts.proxy
    if opts.audio_format:
        params["postprocessors"] = [{"key": "FFmpegExtractAudio",
                                     "preferredcodec": opts.audio_format,
                                     "preferredquality": opts.audio_quality}]
    return params


class _YtdlpLog:
    """yt-dlp's messages, to this module's log at debug level (failures are reported once,
    by the caller, from the exception)."""

    def __init__(self, youtube_id: str):
        self.youtube_id = youtube_id

    def debug(self, msg: str) -> None:
        log.debug("%s: %s", self.youtube_id, msg)

    info = warning = error = debug
