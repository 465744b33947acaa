"""Issue #46, faults 1, 3, 4 and 5 (and 9's cut-short files): concurrent pooled stores,
decoding in bounded memory, content-free audio, duplicate paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import run_cli, write_list
from mirex_vi.config import FeatureConfig
from mirex_vi.features.frontend import compute_cqt
from mirex_vi.features.pooled import PooledStore, write_store
from mirex_vi.io.audio import BLOCK_FRAMES, MIN_SECONDS, AudioError, decode_audio
from mirex_vi.io.matrix import read_distance_matrix
from mirex_vi.synth import piano_like

SR = 22050


def identify(collection, output, package, *extra):
    return run_cli("identify", collection, collection, output, "--weights", package,
                   "--workers", "1", *extra)


# --- fault 3: decoding in blocks --------------------------------------------------------------


def one_shot(samples: np.ndarray, rate: int) -> np.ndarray:
    """What decoding did before it went block by block: mean of all channels, one resample."""
    mono = samples.mean(axis=1, dtype=np.float32)
    return mono if rate == SR else soxr.resample(mono, rate, SR, quality="HQ")


@pytest.mark.parametrize("rate, channels", [(22050, 1), (44100, 2), (48000, 6), (96000, 8)])
def test_decoding_in_blocks_equals_decoding_at_once(tmp_path, rate, channels):
    """The streaming resampler gives soxr's one-shot output bit for bit (measured: max abs
    difference 0.0 on noise and piano at 8-192 kHz, 1-8 channels, WAV/FLAC/MP3/OGG/M4A)."""
    n = 3 * BLOCK_FRAMES + 1234
    piano = np.resize(piano_like(3.0, sr=rate), n)
    rng = np.random.default_rng(channels)
    samples = np.stack([0.4 * piano + 0.1 * rng.standard_normal(n) for _ in range(channels)],
                       axis=1).astype(np.float32)
    path = tmp_path / "x.wav"
    sf.write(path, samples, rate, subtype="FLOAT")
    decoded = decode_audio(path, SR)
    assert decoded.warnings == ()
    np.testing.assert_array_equal(decoded.samples, one_shot(samples, rate))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_decoding_through_ffmpeg_in_blocks_equals_decoding_at_once(tmp_path):
    wav = tmp_path / "x.wav"
    sf.write(wav, np.stack([piano_like(4.0, sr=44100)] * 2, axis=1) * 0.5, 44100)
    m4a = tmp_path / "x.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(m4a), "-f", "f32le", "-ac", "2",
                          "-ar", "44100", "-"], capture_output=True, check=True).stdout
    expected = one_shot(np.frombuffer(raw, np.float32).reshape(-1, 2), 44100)
    np.testing.assert_array_equal(decode_audio(m4a, SR).samples, expected)


MEASURE = """
import resource, sys
from mirex_vi.io.audio import decode_audio
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
samples = decode_audio(sys.argv[1], 22050).samples
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024, samples.nbytes)
"""


@pytest.mark.slow
def test_decoding_a_long_multichannel_file_holds_only_its_mono_output(tmp_path):
    """10 minutes of 4-channel 48 kHz PCM (230 MB; 460 MB as float32): the decoder's peak
    grows by its 53 MB mono output and a few MB, not by the file's size (docs/cli.md)."""
    path, rate, channels, minutes = tmp_path / "long.wav", 48000, 4, 10
    second = (0.2 * np.random.default_rng(0).standard_normal((rate, channels))).astype(np.float32)
    with sf.SoundFile(path, "w", rate, channels, subtype="PCM_16") as f:
        for _ in range(60 * minutes):
            f.write(second)
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True,
                          text=True, check=True)
    path.unlink()
    grown, output = map(int, proc.stdout.split())
    assert output == 60 * minutes * SR * 4
    assert grown < output + 32 * 2**20, f"peak grew by {grown / 2**20:.0f} MB"


@pytest.mark.parametrize("subtype, ext", [("PCM_16", "wav"), ("FLOAT", "wav"), ("PCM_16", "flac")])
def test_a_file_cut_short_of_its_header_is_used_with_a_warning(tmp_path, tracks, tiny_package,
                                                               caplog, subtype, ext):
    if ext == "flac" and shutil.which("ffmpeg") is None:
        pytest.skip("a cut FLAC is read through ffmpeg, which is not installed")
    cut = tmp_path / f"cut.{ext}"
    sf.write(cut, 0.5 * piano_like(6.0, sr=44100), 44100, subtype=subtype)
    with open(cut, "r+b") as f:
        f.truncate(os.path.getsize(cut) // 2)
    collection = write_list(tmp_path / "c.txt", [str(tracks[0]), str(cut)])
    code, out = identify(collection, tmp_path / "o.txt", tiny_package, "--quiet")
    assert code == 0, out
    assert f"{cut}: cut short: its header promises 6.00 s (264600 frames), only " in caplog.text
    assert read_distance_matrix(tmp_path / "o.txt").distances[0, 1] < 2.0  # still used


def test_strict_stops_at_a_file_cut_short(tmp_path, tracks, tiny_package):
    cut = tmp_path / "cut.wav"
    sf.write(cut, 0.5 * piano_like(6.0, sr=44100), 44100, subtype="PCM_16")
    with open(cut, "r+b") as f:
        f.truncate(os.path.getsize(cut) // 2)
    collection = write_list(tmp_path / "c.txt", [str(tracks[0]), str(cut)])
    code, out = identify(collection, tmp_path / "o.txt", tiny_package, "--quiet", "--strict")
    assert code == 1 and "cut short" in out and str(cut) in out, out
    assert not (tmp_path / "o.txt").exists()


def test_a_wav_written_to_a_pipe_is_not_cut_short(tmp_path):
    """ffmpeg writing to a pipe cannot fill in the data length: 0xFFFFFFFF is no promise."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    source = tmp_path / "x.flac"
    sf.write(source, 0.5 * piano_like(2.0), SR)
    piped = tmp_path / "piped.wav"
    with open(piped, "wb") as out:
        subprocess.run(f"ffmpeg -v error -i '{source}' -f wav - | cat", shell=True, stdout=out,
                       check=True)
    assert decode_audio(piped, SR).warnings == ()


# --- fault 4: content-free audio --------------------------------------------------------------


def content_free(tmp_path) -> dict[str, tuple[object, str]]:
    """Each content-free file and the start of its reason."""
    ms = np.arange(SR // 1000) / SR
    files = {
        "one-sample.wav": (np.array([0.5]), SR, "PCM_16"),
        "tone-1ms.wav": (0.5 * np.sin(2 * np.pi * 440 * ms), SR, "PCM_16"),
        "noise-1ms.wav": (0.3 * np.random.default_rng(0).standard_normal(ms.size), SR, "PCM_16"),
        "dc-5s.wav": (np.full(5 * SR, 0.25), SR, "PCM_16"),
        "dc-10s.flac": (np.full((10 * 44100, 2), -0.5), 44100, "PCM_24"),
        "dc-float.wav": (np.full(7 * SR, 1e-3), SR, "FLOAT"),
    }
    out = {}
    for name, (samples, rate, subtype) in files.items():
        sf.write(tmp_path / name, samples, rate, subtype=subtype)
        out[name] = (tmp_path / name, "too short" if "dc" not in name else "a constant level")
    return out


def test_content_free_tracks_are_refused_with_a_reason(tmp_path, tracks, tiny_package):
    """They all got an embedding, 0.007-0.07 apart: each was every other's best cover."""
    cases = content_free(tmp_path)
    collection = write_list(tmp_path / "c.txt",
                            [str(tracks[0])] + [str(p) for p, _ in cases.values()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out = identify(collection, tmp_path / "o.txt", tiny_package)
    assert code == 0, out
    for path, reason in cases.values():
        assert f"skipped {path}: {reason}" in out, out
    assert not [w for w in caught if "n_fft" in str(w.message)]  # never reaches librosa
    d = read_distance_matrix(tmp_path / "o.txt").distances
    assert np.all(d[~np.eye(len(d), dtype=bool)] == 2.0)  # every pair holds a refused track


def test_the_minimum_length_is_what_the_cqt_needs():
    """At MIN_SECONDS librosa's lowest octave has a whole frame (no warning); just under
    0.74 s it has none."""
    cfg = FeatureConfig()
    noise = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_cqt(noise[: int(MIN_SECONDS * cfg.sample_rate)], cfg)
    with pytest.warns(UserWarning, match="n_fft"):
        compute_cqt(noise[:16000], cfg)


def test_quiet_music_over_a_dc_offset_is_not_a_constant_level(tmp_path):
    music = 0.01 * piano_like(3.0) + 0.5  # its peak 34 dB below the offset
    path = tmp_path / "offset.wav"
    sf.write(path, music, SR, subtype="FLOAT")
    assert decode_audio(path, SR).samples.shape == (3 * SR,)
    sf.write(path, np.full(3 * SR, 0.5) + 1e-6 * piano_like(3.0), SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="constant level"):
        decode_audio(path, SR)


# --- fault 5: duplicate paths -----------------------------------------------------------------


def test_a_collection_listing_a_track_twice_is_refused(tmp_path, tracks, tiny_package):
    lines = [str(tracks[0]), str(tracks[1]), f"{tracks[0].parent}/./{tracks[0].name}"]
    collection = write_list(tmp_path / "c.txt", lines)
    code, out = identify(collection, tmp_path / "o.txt", tiny_package, "--quiet")
    assert code == 2, out
    assert f"line 3: repeats line 1 ({tracks[0]})" in out
    assert not (tmp_path / "o.txt").exists()


def test_a_query_listed_twice_is_refused(tmp_path, tracks, tiny_package):
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks])
    queries = write_list(tmp_path / "q.txt", [str(tracks[1]), "", str(tracks[1])])
    code, out = run_cli("identify", collection, queries, tmp_path / "o.txt", "--weights",
                        tiny_package, "--quiet")
    assert code == 2 and f"{queries}: bad line(s):\n  line 3: repeats line 1 ({tracks[1]})" in out


def matrix_text(paths: list[str], rows: list[int]) -> str:
    n = len(paths)
    head = "".join(f"{i}\t{p}\n" for i, p in enumerate(paths, 1))
    body = "".join(f"{q}\t" + "\t".join("0.000000" if j == q else "1.000000"
                                          for j in range(1, n + 1)) + "\n" for q in rows)
    return "sys\n" + head + "Q/R\t" + "\t".join(map(str, range(1, n + 1))) + "\n" + body


@pytest.mark.parametrize("paths, rows, message", [
    (["/x/a.wav", "/x/b.wav", "/x/../x/a.wav"], [1, 2, 3], "m.txt:4: repeats the track of "
                                                           "line 2 (/x/a.wav)"),
    (["/x/a.wav", "/x/b.wav", "/x/c.wav"], [1, 2, 1], "m.txt:8: repeats the row of query 1 "
                                                      "(line 6)"),
])
def test_a_matrix_with_a_track_or_a_query_twice_is_refused(tmp_path, paths, rows, message):
    """Scored, one track listed twice turned a P@10 of 1.0 into 0.855."""
    matrix = tmp_path / "m.txt"
    matrix.write_text(matrix_text(paths, rows))
    labels = tmp_path / "labels.tsv"
    labels.write_text("/x/a.wav\t1\n/x/b.wav\t1\n/x/c.wav\t2\n")
    code, out = run_cli("evaluate", "--matrix", matrix, "--labels", labels)
    assert code == 2 and message in out, out


# --- fault 1: concurrent pooled stores ---------------------------------------------------------


def versions(prefix: str, n: int = 4):
    rng = np.random.default_rng(len(prefix))
    return [(f"{prefix}{i:010d}", rng.uniform(0.1, 1, (30 + i, 84)).astype(np.float32))
            for i in range(n)]


def held_store(folder, started: threading.Event, release: threading.Event):
    """A writer of ``folder`` that waits, mid-store, until ``release`` is set."""
    def items():
        yield from versions("a", 2)
        started.set()
        release.wait(30)
        yield from versions("a")[2:]

    thread = threading.Thread(target=write_store, args=(folder, items(), "u8"))
    thread.start()
    assert started.wait(30)
    return thread


def test_a_second_writer_of_a_store_is_refused_while_the_first_writes(tmp_path):
    """Two writers at once left the index of one over the rows of the other (3 in 25)."""
    folder, started, release = tmp_path / "store", threading.Event(), threading.Event()
    first = held_store(folder, started, release)
    try:
        with pytest.raises(ValueError, match=rf"{folder}: this pooled store is being written "
                                             rf"by another process \(pid {os.getpid()}\)"):
            write_store(folder, versions("b"), "u8")
    finally:
        release.set()
        first.join()
    store = PooledStore.open(folder)
    assert sorted(store.entries) == [yt for yt, _ in versions("a")]
    for yt, pooled in versions("a"):
        assert store.pooled(yt).shape == pooled.shape
    assert sorted(p.name for p in folder.iterdir()) == ["pooled.index.tsv", "pooled.u8.npy"]


def test_extract_into_a_store_being_written_exits_2(tmp_path, tracks):
    folder, started, release = tmp_path / "store", threading.Event(), threading.Event()
    first = held_store(folder, started, release)
    try:
        code, out = run_cli("extract", folder, "--list", write_list(tmp_path / "l.txt",
                            [str(p) for p in tracks]), "--pooled", "u8", "--workers", "1",
                            "--quiet")
    finally:
        release.set()
        first.join()
    assert code == 2, out
    assert out.strip() == (f"error: {folder}: this pooled store is being written by another "
                           f"process (pid {os.getpid()}); wait for it to end, or write elsewhere")


def test_a_lock_left_by_a_killed_writer_is_taken_over(tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    (folder / ".lock").write_text("4194304\n")  # a writer killed with SIGKILL
    assert write_store(folder, versions("c"), "f16") == 4
    assert not (folder / ".lock").exists()
