"""A lossy codec pass: encode with ffmpeg as MP3 or AAC at a low bitrate, decode back.

This is what a low-quality upload does to a recording: the encoder's low-pass and its
quantisation noise, and a decoder delay (the encoder's priming samples, kept as heard).
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

# codec -> (ffmpeg encoder, container that ffmpeg decodes again)
ENCODERS = {"mp3": ("libmp3lame", "mp3"), "aac": ("aac", "adts")}
BITEXACT = ["-fflags", "+bitexact", "-flags:a", "+bitexact"]  # no version strings, same bytes


def _ffmpeg(args: list[str]) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def codec_pass(audio: np.ndarray, sample_rate: int, codec: str, kbps: int,
               codec_rate: int = 0) -> np.ndarray:
    """``audio`` (S, C) float32 through ``codec`` at ``kbps``, back as (S, C) float32.

    ``codec_rate`` is the rate the encoder runs at (0: ``sample_rate``); the decoded audio
    is resampled back to ``sample_rate`` and cut or zero-padded to S samples.
    """
    encoder, container = ENCODERS[codec]
    n, channels = audio.shape
    raw = ["-f", "f32le", "-ar", str(sample_rate), "-ac", str(channels)]
    with tempfile.TemporaryDirectory(prefix="mkcorpus-codec-") as tmp:
        pcm, coded, decoded = Path(tmp, "in.f32"), Path(tmp, f"coded.{container}"), Path(tmp, "out.f32")
        pcm.write_bytes(np.ascontiguousarray(audio, dtype="<f4").tobytes())
        _ffmpeg([*raw, "-i", str(pcm), "-ar", str(codec_rate or sample_rate), "-c:a", encoder,
                 "-b:a", f"{kbps}k", *BITEXACT, "-f", container, str(coded)])
        _ffmpeg(["-i", str(coded), *raw, *BITEXACT, str(decoded)])
        out = np.frombuffer(decoded.read_bytes(), dtype="<f4").reshape(-1, channels)
    return np.pad(out[:n], ((0, max(0, n - len(out))), (0, 0))).astype(np.float32)
