"""The device path's batches, walked on the CPU: the torch front end a bucket of tracks at a
time, the embedding run built on it, and the cache written by a thread of its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mirex_vi.config import FeatureConfig
from mirex_vi.core.runtime import tolerance
from mirex_vi.features.frontend import (NON_FINITE_CQT, ZERO_CQT, PackedAudio, TorchFrontEnd,
                                        length_bucket)
from mirex_vi.inference import threads, tracks as track_pipeline
from mirex_vi.inference.cache import EmbeddingCache
from mirex_vi.inference.tracks import embed_tracks
from mirex_vi.inference.settings import EmbedSettings
from mirex_vi.io.audio import AudioError, file_identity
from mirex_vi.model.weights import load_weights
from mirex_vi.synth import SR, piano_like, write_audio

CFG = FeatureConfig()
CPU = torch.device("cpu")


@pytest.fixture()
def weights(tiny_package):
    return load_weights(tiny_package)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_a_batch_of_lengths_gives_each_track_its_input_and_its_own_refusal():
    music = [0.5 * piano_like(seconds, seed=i) for i, seconds in enumerate((6.3, 9.0, 4.2))]
    loud = 3000 * np.sin(np.arange(5 * SR) * 0.0157).astype(np.float32)  # float16 overflow
    quiet = 1e-12 * music[0]  # every float16 magnitude rounds to zero
    front_end = TorchFrontEnd(CFG, CPU)
    batch = front_end.batch([PackedAudio.pack(a) for a in (music[0], loud, music[1], quiet,
                                                           music[2])])
    assert str(batch[1]) == NON_FINITE_CQT and str(batch[3]) == ZERO_CQT
    for got, audio in zip(batch[::2], music):
        alone = front_end(PackedAudio.pack(audio))
        assert got.shape == alone.shape
        # The CQTs agree to ~1e-6; the float16 rounding of stored features flips a few
        # values by one step (5e-4 relative), and pooling averages them down.
        assert _relative(got, alone) <= 1e-4


def test_one_track_through_batch_is_the_track_alone():
    audio = PackedAudio.pack(piano_like(5.0, seed=3))
    front_end = TorchFrontEnd(CFG, CPU)
    assert torch.equal(front_end.batch([audio])[0], front_end(audio))
    with pytest.raises(AudioError, match="float16 overflow"):
        front_end(3000 * np.sin(np.arange(2 * SR) * 0.0157).astype(np.float32))


def test_buckets_hold_lengths_within_nine_percent():
    assert length_bucket(SR * 180) == length_bucket(int(SR * 180 * 1.04))
    assert length_bucket(SR * 180) != length_bucket(int(SR * 180 * 1.1))
    assert length_bucket(SR * 180) < length_bucket(SR * 200)


class _RecordingFrontEnd(TorchFrontEnd):
    """The torch front end, recording the length (in seconds) of every track per batch."""

    batches: list[list[float]] = []

    def batch(self, audios):
        type(self).batches.append([round(len(a.samples) / SR, 2) for a in audios])
        return super().batch(audios)


def _settings(batch_size: int) -> EmbedSettings:
    return EmbedSettings.resolve(CPU, amp=False, batch_size=batch_size, workers=1,
                                 cqt_backend="torch")


def test_torch_cqt_run_batches_by_bucket_and_matches_one_track_at_a_time(tmp_path, weights,
                                                                        monkeypatch):
    seconds = (4.0, 6.0, 4.1, 9.0, 4.05, 6.2)  # buckets: 4.x, 6.x, 9.0
    paths = [write_audio(tmp_path / f"{i}.wav", 0.5 * piano_like(s, seed=i), subtype="PCM_16")
             for i, s in enumerate(seconds)]
    monkeypatch.setattr(track_pipeline, "TorchFrontEnd", _RecordingFrontEnd)
    monkeypatch.setattr(_RecordingFrontEnd, "batches", [])
    batched = embed_tracks(paths, weights, _settings(batch_size=3))
    assert _RecordingFrontEnd.batches == [[4.0, 4.1, 4.05], [6.0, 6.2], [9.0]]
    monkeypatch.setattr(_RecordingFrontEnd, "batches", [])
    alone = embed_tracks(paths, weights, _settings(batch_size=1))
    assert _RecordingFrontEnd.batches == [[s] for s in seconds]
    assert not batched.errors and not alone.errors
    a, b = torch.from_numpy(batched.embeddings), torch.from_numpy(alone.embeddings)
    assert float(2 * (a @ a.T - b @ b.T).abs().max()) <= tolerance("cpu", amp=False).backend


def test_scattered_lengths_never_hold_more_than_the_waiting_limit(tmp_path, weights,
                                                                 monkeypatch):
    seconds = (2.0, 3.0, 2.05, 4.0, 5.0, 6.0, 7.0)  # one pair of a bucket, the rest alone
    paths = [tmp_path / f"{i}.wav" for i in range(len(seconds))]
    audios = [PackedAudio.pack(0.5 * piano_like(s, seed=i)) for i, s in enumerate(seconds)]
    for path, audio in zip(paths, audios):
        write_audio(path, audio.unpack(), subtype="PCM_16")
    monkeypatch.setattr(_RecordingFrontEnd, "batches", [])
    monkeypatch.setattr(track_pipeline, "WAITING_BATCHES", 2)  # at most 2 x 2 tracks wait
    run = track_pipeline.EmbeddingRun(np.zeros((len(paths), 16), np.float32), {}, 0)
    embedder = track_pipeline._Embedder(
        model=weights.model, cfg=CFG, settings=_settings(batch_size=2), paths=paths, run=run,
        front_end=_RecordingFrontEnd(CFG, CPU), cache=None, writer=None, strict=False,
        on_track=lambda: None)
    assert embedder.look_up() == list(range(len(paths)))
    waiting = []
    for i, audio in enumerate(audios):
        embedder.add((i, track_pipeline.FileResult(i, audio=audio)))
        waiting.append(sum(map(len, embedder.waiting.values())))
    assert waiting == [1, 2, 1, 2, 3, 3, 3]  # a full bucket goes; so does the fullest at 4
    assert _RecordingFrontEnd.batches == [[2.0, 2.05], [3.0], [4.0]]
    embedder.finish()
    assert _RecordingFrontEnd.batches[3:] == [[5.0], [6.0], [7.0]]
    assert not run.errors and np.all(np.linalg.norm(run.embeddings, axis=1) > 0.99)


def test_cache_writer_writes_every_batch_before_close(tmp_path, weights, tracks):
    settings = EmbedSettings.resolve(CPU, amp=False)
    cache = EmbeddingCache(tmp_path / "cache", weights.sha256, weights.features, 16, settings)
    writer = threads.CacheWriter(cache)
    vectors = np.eye(16, dtype=np.float32)[: len(tracks)]
    for path, vector in zip(tracks, vectors):
        writer.put_many([(path, file_identity(path), vector)])
    writer.close()
    for path, vector in zip(tracks, vectors):
        np.testing.assert_array_equal(cache.get(path, file_identity(path)), vector)


def test_cache_writer_raises_what_stopped_it(tmp_path):
    class Broken:
        def put_many(self, entries):
            if entries:
                raise KeyError("broken cache")

    writer = threads.CacheWriter(Broken())
    writer.put_many([("a", None, None)])
    with pytest.raises(KeyError, match="broken cache"):
        writer.close()
