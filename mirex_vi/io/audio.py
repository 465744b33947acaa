"""Decode any audio file to mono float32 at a target sample rate. Knows nothing of torch.

soundfile reads wav/flac/ogg/mp3; anything it cannot read (m4a/mp4 from YouTube) goes
through ffmpeg when it is installed. Resampling uses soxr (high quality) and is skipped
when the file is already at the target rate.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr


class AudioError(Exception):
    """A file that cannot be turned into usable audio; the message says why."""


class FileIdentity(NamedTuple):
    """What identifies a file's content without reading it; part of every cache key."""

    size: int
    mtime_ns: int


def file_identity(path: str | Path) -> FileIdentity:
    """The identity of a readable, non-empty regular file, taken before it is read.

    Raises:
        AudioError: missing, not a regular file, empty, or refused by the system (the
            system's reason: permission denied, file name too long...).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError as err:
        raise AudioError("file not found") from err
    except OSError as err:
        raise AudioError(f"cannot access it ({err.strerror})") from err
    if not stat.S_ISREG(st.st_mode):
        raise AudioError("not a regular file")
    if st.st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as err:
        raise AudioError(f"cannot read it ({err.strerror})") from err
    return FileIdentity(st.st_size, st.st_mtime_ns)


def changed_since(path: str | Path, identity: FileIdentity) -> str | None:
    """Why ``path`` no longer holds what had ``identity`` (removed, changed), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "removed while it was being processed"
    except OSError as err:
        return f"could no longer be accessed after it was read ({err.strerror})"
    if FileIdentity(st.st_size, st.st_mtime_ns) != identity:
        return "changed while it was being processed (rerun to use the new content)"
    return None


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate``.

    Returns:
        ``(N,)`` float32 samples.

    Raises:
        AudioError: missing, unreadable, empty, undecodable, or digital silence.
    """
    path = Path(path)
    file_identity(path)
    samples, rate = _decode(path)  # (N, C)
    if samples.shape[0] == 0:
        raise AudioError("no audio samples")
    mono = samples.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    if not np.all(np.isfinite(mono)):
        raise AudioError("audio contains NaN or infinite samples")
    if not np.any(mono):
        raise AudioError("digital silence (every sample is zero)")
    return mono


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """``(N, C)`` float32 samples and their rate, via soundfile, else ffmpeg."""
    try:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
        return samples, rate
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        soundfile_reason = str(err).strip() or type(err).__name__
    if shutil.which("ffmpeg") is None:
        raise AudioError(f"unreadable by soundfile ({soundfile_reason}); ffmpeg is not installed")
    return _decode_ffmpeg(path)


def _decode_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """Decode with ffmpeg at the file's own rate, as interleaved float32."""
    rate, channels = _probe(path)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vn",
           "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(channels), "-ar", str(rate), "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"ffmpeg could not decode it: {reason[-1] if reason else 'unknown error'}")
    samples = np.frombuffer(proc.stdout, dtype=np.float32).reshape(-1, channels)
    return samples, rate


def _probe(path: Path) -> tuple[int, int]:
    """Sample rate and channel count of the first audio stream, via ffprobe."""
    cmd = ["ffprobe", "-v", "error", "-select_streams", "a:0",
           "-show_entries", "stream=sample_rate,channels", "-of", "csv=p=0", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    fields = proc.stdout.strip().split(",")
    if proc.returncode != 0 or len(fields) != 2 or not all(f.isdigit() for f in fields):
        raise AudioError("not an audio file (neither soundfile nor ffmpeg found an audio stream)")
    rate, channels = int(fields[0]), int(fields[1])
    return rate, channels
