"""Reading the files of a real-audio pool: plain audio, tracker modules, archive members
(``ARCHIVE!MEMBER``) and headerless unsigned 8-bit PCM, as bytes, durations and mono audio."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MEMBER_SEP = "!"  # ARCHIVE!MEMBER

RawFormat = tuple[int, int]  # (sample rate in Hz, channels) of unsigned 8-bit PCM


def read_bytes(path: str) -> bytes:
    """The bytes of a file or of an ``ARCHIVE!MEMBER``."""
    archive, sep, member = path.partition(MEMBER_SEP)
    if not sep:
        return Path(path).read_bytes()
    with zipfile.ZipFile(archive) as z:
        return z.read(member)


def probe_duration(path: str, data: bytes, raw: RawFormat | None = None) -> float:
    """Duration in seconds of the audio in ``data`` (the bytes of ``path``).

    Raises:
        ValueError: neither soundfile nor ffprobe finds an audio stream.
    """
    import soundfile as sf

    if raw is not None:
        return len(data) / (raw[0] * raw[1])
    try:
        return float(sf.info(io.BytesIO(data)).duration)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass  # MP3, Opus and tracker modules: ffprobe
    with _as_file(path, data) as file:
        proc = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                               "-of", "csv=p=0", file], capture_output=True, text=True)
    try:
        return float(proc.stdout.strip())
    except ValueError:
        raise ValueError("not decodable audio (ffprobe found no duration)") from None


def decode(path: str, sample_rate: int, raw: RawFormat | None = None) -> np.ndarray:
    """``path`` decoded to ``(N,)`` float32 mono at ``sample_rate``.

    Raises:
        AudioError: as ``io.audio.load_audio`` (unreadable, silent...).
    """
    from ..io.audio import load_audio

    if raw is None:
        if MEMBER_SEP not in path:
            return load_audio(path, sample_rate)
        with _as_file(path, read_bytes(path)) as file:
            return load_audio(file, sample_rate)
    import soxr

    rate, channels = raw
    pcm = np.frombuffer(read_bytes(path), dtype=np.uint8)
    pcm = pcm[: len(pcm) // channels * channels].reshape(-1, channels)
    mono = ((pcm.astype(np.float32) - 128.0) / 128.0).mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.asarray(mono, dtype=np.float32)


@contextlib.contextmanager
def _as_file(path: str, data: bytes) -> Iterator[str]:
    """A real file path for ``path``: itself, or a temporary copy of an archive member's
    ``data`` (with the member's extension, which decoders go by)."""
    if MEMBER_SEP not in path:
        yield path
        return
    suffix = os.path.splitext(path.partition(MEMBER_SEP)[2])[1]
    fd, tmp = tempfile.mkstemp(prefix="mirex-real-", suffix=suffix)
    try:
        with open(fd, "wb") as f:
            f.write(data)
        yield tmp
    finally:
        os.unlink(tmp)
