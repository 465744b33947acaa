"""Decode any audio file to mono float32 at a target sample rate. Knows nothing of torch.

soundfile reads wav/flac/ogg/mp3; anything it cannot read (m4a/mp4 from YouTube) goes
through ffmpeg when it is installed. Either way the file is read in blocks of
``BLOCK_FRAMES`` frames, each mixed down to mono and resampled as it comes by a streaming
soxr resampler (high quality; skipped when the file is already at the target rate), so
decoding holds the mono output (float32: 5.3 MB a minute at 22.05 kHz) and one block,
whatever the file's length or channel count. The result is bit for bit that of reading the
whole file and resampling it in one call.

Audio with nothing to identify is refused: digital silence, a track shorter than
``MIN_SECONDS``, or a constant (DC) level. A WAV or FLAC holding fewer frames than its
header promises (a cut-off copy) is decoded as far as it goes, with a warning.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr

# Frames read (and resampled) at a time: 2 MB for 8 channels of float32.
BLOCK_FRAMES = 1 << 16
# The shortest track decoded. With the default front end (docs/REFERENCE.md §1), librosa
# computes the lowest octave's CQT (C1-B1) on the signal decimated 64 times, in frames of
# 256 samples: under 16321 samples (0.74 s at 22.05 kHz) that octave is shorter than one
# frame, librosa warns and pads, and the lowest filter (0.53 s long at C1) sees mostly
# padding. One second is the round figure above both; a 1-ms clip or a single sample would
# give an embedding of padding, close to every other such track.
MIN_SECONDS = 1.0
# A track whose spread about its mean (RMS) is this far below its peak is a constant level
# (DC) to the front end: 80 dB, well below any music's dynamics, well above rounding.
CONSTANT_DB = 80.0


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




class Decoded(NamedTuple):
    """A decoded track: ``samples``, ``(N,)`` float32 at the rate asked for, and
    ``warnings``, one line each (naming no path), about faults that do not stop its use."""

    samples: np.ndarray
    warnings: tuple[str, ...] = ()


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """The ``(N,)`` float32 samples of :func:`decode_audio`, without its warnings."""
    return decode_audio(path, sample_rate).samples


def decode_audio(path: str | Path, sample_rate: int) -> Decoded:
    """Decode ``path`` to mono float32 at ``sample_rate``, block by block.

    Returns:
        The samples, with a warning when a WAV or FLAC is cut short of its header's length.

    Raises:
        AudioError: missing, unreadable, empty, undecodable, shorter than ``MIN_SECONDS``,
            digital silence, or a constant level.
    """
    path = Path(path)
    file_identity(path)
    notes: list[str] = []
    try:
        mono, promised = _read_soundfile(path, sample_rate, notes)
    except _SoundfileFailed as failed:
        if shutil.which("ffmpeg") is None:
            raise AudioError(f"unreadable by soundfile ({failed}); ffmpeg is not installed") from None
        mono, promised, notes = _read_ffmpeg(path, sample_rate), failed.promised, []
    samples = mono.samples()
    warnings = (f"the decoder's notes: {' '.join(notes)}",) if notes else ()
    if promised is None or mono.frames >= promised:
        return Decoded(samples, warnings)
    return Decoded(samples, (f"cut short: its header promises {promised / mono.rate:.2f} s "
                             f"({promised} frames), only {mono.frames / mono.rate:.2f} s "
                             f"({mono.frames} frames) could be decoded", *warnings))


class _Mono:
    """Blocks of ``(frames, channels)`` float32 samples at ``rate`` -> ``(N,)`` mono float32 at
    ``target``: each block mixed down (the channels' float32 mean) and resampled as it comes,
    into one array grown in place. Also keeps what :meth:`samples` checks."""

    # The most output allocated up front (virtual memory until written); past it, it grows.
    PREALLOCATED_SECONDS = 3600.0

    def __init__(self, rate: int, target: int, expected_frames: int = 0):
        self.rate = rate
        self.frames = 0  # input frames so far
        self._stream = (None if rate == target
                        else soxr.ResampleStream(rate, target, 1, dtype="float32", quality="HQ"))
        seconds = min(expected_frames / rate, self.PREALLOCATED_SECONDS)
        self._out = np.empty(math.ceil(seconds * target) + 1, dtype=np.float32)
        self._size = 0
        self._finite, self._nonzero = True, False
        # Sums of (sample - the first sample) and of its square, in float64: exactly zero for
        # a constant level, however far from zero it lies.
        self._origin, self._sum, self._sum_sq, self._peak = 0.0, 0.0, 0.0, 0.0

    def add(self, block: np.ndarray) -> None:
        """Append ``(frames, channels)`` float32 samples."""
        mono = block.mean(axis=1, dtype=np.float32)  # (frames,)
        if not mono.size:
            return
        if not self.frames:
            self._origin = float(mono[0])
        self.frames += mono.size
        shifted = mono.astype(np.float64) - self._origin
        self._sum += float(shifted.sum())
        self._sum_sq += float(np.square(shifted, out=shifted).sum())  # not BLAS: no threads
        self._peak = max(self._peak, float(np.abs(mono).max()))
        self._append(mono if self._stream is None else self._stream.resample_chunk(mono))

    def finish(self) -> None:
        """After the last block: the resampler's tail."""
        if self._stream is not None:
            self._append(self._stream.resample_chunk(np.empty(0, np.float32), last=True))

    def _append(self, chunk: np.ndarray) -> None:
        self._finite &= bool(np.isfinite(chunk).all())
        self._nonzero |= bool(chunk.any())
        end = self._size + chunk.size
        if end > self._out.size:  # a realloc: in place where it can be (mremap, on Linux)
            self._out.resize(max(end, self._out.size * 3 // 2), refcheck=False)
        self._out[self._size : end] = chunk
        self._size = end

    def samples(self) -> np.ndarray:
        """The ``(N,)`` float32 output, after :meth:`finish`.

        Raises:
            AudioError: no samples, non-finite ones, shorter than ``MIN_SECONDS``, digital
                silence, or a constant level.
        """
        seconds = self.frames / self.rate
        if not self.frames:
            raise AudioError("no audio samples")
        if not self._finite:
            raise AudioError("audio contains NaN or infinite samples")
        if seconds < MIN_SECONDS:
            raise AudioError(f"too short ({seconds:.2f} s; tracks under {MIN_SECONDS:g} s hold "
                             "too little to identify)")
        if not self._nonzero:
            raise AudioError("digital silence (every sample is zero)")
        mean = self._sum / self.frames
        spread = math.sqrt(max(0.0, self._sum_sq / self.frames - mean * mean))
        if spread <= self._peak * 10 ** (-CONSTANT_DB / 20):
            raise AudioError(f"a constant level (DC {self._origin + mean:.3g}): what varies lies "
                             f"over {CONSTANT_DB:g} dB below its peak; nothing to identify")
        self._out.resize(self._size, refcheck=False)
        return self._out


class _SoundfileFailed(Exception):
    """soundfile could not open a file or read it to its end; ``promised``: the frames its
    header promises (:func:`_promised_frames`), when it could be opened."""

    def __init__(self, reason: str, promised: int | None):
        super().__init__(reason)
        self.promised = promised


def _read_soundfile(path: Path, sample_rate: int, notes: list[str]) -> tuple[_Mono, int | None]:
    """The file through soundfile, block by block, and the frames its header promises;
    what the decoder writes to stderr meanwhile (libmpg123's notes on an MP3) goes to
    ``notes``, one line each."""
    promised = None
    try:
        # libmpg123 writes its notes on a damaged MP3 to fd 2 from C: caught for MP3s only,
        # since catching fd 2 catches every thread's stderr meanwhile (a progress bar).
        catch = _stderr_lines(notes) if path.suffix.lower() == ".mp3" else contextlib.nullcontext()
        with catch, sf.SoundFile(path) as f:
            promised = _promised_frames(f)
            mono = _Mono(f.samplerate, sample_rate, f.frames)
            block = np.empty((BLOCK_FRAMES, f.channels), dtype=np.float32)
            while len(read := f.read(dtype="float32", always_2d=True, out=block)):
                mono.add(read)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise _SoundfileFailed(str(err).strip() or type(err).__name__, promised) from err
    mono.finish()
    return mono, promised


@contextlib.contextmanager
def _stderr_lines(lines: list[str]) -> Iterator[None]:
    """Append to ``lines`` what is written to file descriptor 2 meanwhile, instead of letting
    it reach the terminal: C libraries (libmpg123 inside libsndfile) write there directly.
    Best left to one thread: in a process with others, their stderr is caught too. Without
    a temporary file (a full TMPDIR) nothing is caught."""
    try:
        sink = tempfile.TemporaryFile()
    except OSError:
        yield
        return
    saved = os.dup(2)
    with sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += [t for t in sink.read().decode(errors="replace").splitlines() if t.strip()]


# libsndfile's log of a WAV header: the data chunk's length, where the file holds less.
_WAV_DATA_CUT = re.compile(r"^data : (\d+) \(should be \d+\)$", re.MULTILINE)
_WAV_BLOCK_ALIGN = re.compile(r"^ +Block Align +: (\d+)$", re.MULTILINE)
# The data lengths a writer leaves in the header of a WAV written to a pipe (ffmpeg, sox).
_WAV_LENGTH_OPEN = {0, 0x7FFFF000, 0xFFFFFFFF}


def _promised_frames(f: sf.SoundFile) -> int | None:
    """The frames the header of a WAV or FLAC promises; None for other formats, and for a
    WAV that holds what its header says or whose header leaves its length open.

    soundfile gives a cut WAV's length as what the file holds, so the header's data length
    is read from libsndfile's log of the header (``extra_info``).
    """
    if f.format == "FLAC":
        return f.frames or None  # 0: the FLAC does not say
    if f.format not in ("WAV", "WAVEX"):
        return None
    data, align = _WAV_DATA_CUT.search(f.extra_info), _WAV_BLOCK_ALIGN.search(f.extra_info)
    if data is None or align is None or not int(align[1]) or int(data[1]) in _WAV_LENGTH_OPEN:
        return None
    return int(data[1]) // int(align[1])


def _read_ffmpeg(path: Path, sample_rate: int) -> _Mono:
    """The file through ffmpeg at its own rate and channel count: interleaved float32 read
    from its output block by block, then mixed down and resampled as soundfile's blocks are."""
    rate, channels = _probe(path)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vn",
           "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(channels), "-ar", str(rate), "-"]
    mono, frame_bytes = _Mono(rate, sample_rate), 4 * channels
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        errors: deque[bytes] = deque(maxlen=20)  # ffmpeg's last lines, drained as they come
        reader = threading.Thread(target=errors.extend, args=(proc.stderr,), daemon=True)
        reader.start()
        try:
            while data := proc.stdout.read(BLOCK_FRAMES * frame_bytes):
                frames = len(data) // frame_bytes
                mono.add(np.frombuffer(data, np.float32, frames * channels).reshape(frames, channels))
        except BaseException:
            proc.kill()
            raise
        proc.wait()
        reader.join()
    if proc.returncode != 0:
        reason = b"".join(errors).decode(errors="replace").strip().splitlines()
        raise AudioError(f"ffmpeg could not decode it: {reason[-1] if reason else 'unknown error'}")
    mono.finish()
    return mono


def _probe(path: Path) -> tuple[int, int]:
    """Sample rate and channel count of the first audio stream, via ffprobe."""
    cmd = ["ffprobe", "-v", "error", "-select_streams", "a:0",
           "-show_entries", "stream=sample_rate,channels", "-of", "csv=p=0", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    fields = proc.stdout.strip().split(",")
    if proc.returncode != 0 or len(fields) != 2 or not all(f.isdigit() and int(f) for f in fields):
        raise AudioError("not an audio file (neither soundfile nor ffmpeg found an audio stream)")
    rate, channels = int(fields[0]), int(fields[1])
    return rate, channels
