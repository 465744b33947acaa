"""The device route walked on the CPU: packed audio, staging buffers, autocast, fallbacks,
per-device tolerances, the batched cache write, the model thread and the first-contact
self-check."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mirex_vi.config import FeatureConfig
from mirex_vi.core import runtime
from mirex_vi.core.runtime import disable_tf32_without_amp, is_out_of_memory, tolerance
from mirex_vi.features.cqt_torch import TorchCQT
from mirex_vi.features.frontend import PackedAudio, TorchFrontEnd, _HostStaging
from mirex_vi.inference import threads, tracks as track_pipeline
from mirex_vi.inference.cache import EmbeddingCache
from mirex_vi.inference.embed import embed_inputs
from mirex_vi.inference.tracks import embed_tracks
from mirex_vi.inference.selfcheck import PathAgreement, torch_cqt_agrees
from mirex_vi.inference.settings import EmbedSettings
from mirex_vi.io.audio import AudioError, file_identity
from mirex_vi.model.weights import load_weights
from mirex_vi.synth import melody, piano_like

CFG = FeatureConfig()
CPU = torch.device("cpu")


@pytest.fixture()
def weights(tiny_package):
    return load_weights(tiny_package)


# --- audio on its way to the device -----------------------------------------------------


def test_packed_16_bit_pcm_round_trips_exactly():
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32768, size=10000).astype(np.int16)
    pcm[:2] = -32768, 32767  # both extremes of full scale
    audio = pcm.astype(np.float32) / 32768
    for x in (audio, audio / 8):  # full scale and a quieter file
        packed = PackedAudio.pack(x)
        assert packed.samples.dtype == np.int16 and packed.samples.nbytes == x.nbytes // 2
        np.testing.assert_array_equal(packed.unpack(), x)


@pytest.mark.parametrize("peak", [1.0, 0.01, 3000.0, 1e6])
def test_packed_audio_of_any_level_is_within_its_step(peak):
    x = (peak * np.sin(np.arange(5000) * 0.37)).astype(np.float32)
    x[0] = peak  # a positive full-scale peak must not wrap round to -32768
    packed = PackedAudio.pack(x)
    assert np.abs(packed.unpack() - x).max() <= peak * 2.0**-15  # half a step at most


def test_staging_buffers_are_reused_without_touching_earlier_copies():
    staging = _HostStaging(CPU)
    arrays = [np.arange(n, dtype=dtype) for n, dtype in
              ((1000, np.int16), (3000, np.float32), (500, np.int16), (4000, np.int16))]
    copies = [staging.to_device(a) for a in arrays]  # 4 arrays through 2 buffers
    for a, c in zip(arrays, copies):
        assert c.dtype == torch.from_numpy(a).dtype
        np.testing.assert_array_equal(c.numpy(), a)


def test_front_end_gives_the_same_input_from_packed_and_float_audio():
    audio = np.round(melody([60, 64, 67] * 4) * 32768) / 32768  # as a 16-bit WAV decodes
    front_end = TorchFrontEnd(CFG, CPU)
    packed = front_end(PackedAudio.pack(audio.astype(np.float32)))
    assert torch.equal(packed, front_end(audio.astype(np.float32)))


def test_cqt_under_cpu_autocast_stays_float32_and_unchanged():
    audio = torch.from_numpy(piano_like(4.0))[None]
    cqt = TorchCQT.from_config(CFG)
    plain = cqt(audio)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = cqt(audio)
        front = TorchFrontEnd(CFG, CPU)(audio[0].numpy())
    assert autocast.dtype == torch.float32 and torch.equal(autocast, plain)
    assert front.dtype == torch.float32
    assert torch.equal(front, TorchFrontEnd(CFG, CPU)(audio[0].numpy()))


def test_front_end_refuses_a_non_finite_cqt():
    with pytest.raises(AudioError, match="float16 overflow"):
        TorchFrontEnd(CFG, CPU)(3000 * np.sin(np.arange(22050 * 2) * 0.0157).astype(np.float32))


# --- precision, memory, tolerances --------------------------------------------------------


def test_batching_is_bit_exact_on_the_cpu(weights):
    rng = np.random.default_rng(0)
    inputs = [rng.random((84, t), dtype=np.float32) for t in (200, 250, 200, 200, 250, 200)]
    single = embed_inputs(weights.model, inputs, CPU, amp=False, batch_size=1)
    assert torch.equal(embed_inputs(weights.model, inputs, CPU, amp=False, batch_size=8), single)
    assert tolerance("cpu", amp=False).batch == 0.0


def test_tolerances_widen_with_the_device_and_precision():
    cpu, fp32, fp16 = tolerance("cpu", False), tolerance("cuda", False), tolerance("cuda", True)
    assert cpu.batch < fp32.batch < fp16.batch
    assert cpu.backend <= fp32.backend < fp16.backend
    assert fp16.backend <= 1e-3  # cosine >= 0.9995, the AMP-against-fp32 target


def test_no_amp_on_cuda_turns_tf32_off():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        disable_tf32_without_amp(CPU, amp=False)
        disable_tf32_without_amp(torch.device("cuda"), amp=True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        disable_tf32_without_amp(torch.device("cuda"), amp=False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_out_of_memory_errors_are_told_apart():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("cuFFT error: CUFFT_ALLOC_FAILED"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert runtime.unless_out_of_memory(lambda: 3, CPU) == 3
    out_of_memory = _raise(torch.OutOfMemoryError("out of memory"))
    assert runtime.unless_out_of_memory(out_of_memory, CPU) is None
    with pytest.raises(RuntimeError, match="shape"):
        runtime.unless_out_of_memory(_raise(RuntimeError("shape mismatch")), CPU)


def _raise(err: BaseException):
    def fail(*args):
        raise err
    return fail


# --- the embedding run: fallbacks, the model thread, the cache ----------------------------


class _FailingFrontEnd(TorchFrontEnd):
    """A front end that fails as a device can: ``mode`` "oom" raises CUDA's out-of-memory
    error, "nan" returns a NaN model input (a fault past the finite check)."""

    mode = "oom"

    def batch(self, audios):
        if self.mode == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return [torch.full_like(x, float("nan")) for x in super().batch(audios)]


def _settings(backend):
    return EmbedSettings.resolve(CPU, amp=False, batch_size=2, workers=1, cqt_backend=backend)


def _embed(paths, weights, backend, cache=None):
    return embed_tracks(paths, weights, _settings(backend), cache=cache)


def test_out_of_memory_in_the_torch_cqt_falls_back_to_librosa(tracks, weights, monkeypatch,
                                                              caplog):
    pcm = tracks[:3]  # 16-bit files at 22.05 kHz: packed audio is exact
    exact = _embed(pcm, weights, "librosa")
    monkeypatch.setattr(track_pipeline, "TorchFrontEnd", _FailingFrontEnd)
    with caplog.at_level(logging.WARNING, logger="mirex_vi.inference.tracks"):
        run = _embed(pcm, weights, "torch")
    assert not run.errors
    np.testing.assert_array_equal(run.embeddings, exact.embeddings)
    assert caplog.text.count("the device ran out of memory") == len(pcm)


def test_a_nan_embedding_is_an_error_and_never_cached(tracks, weights, monkeypatch, tmp_path):
    monkeypatch.setattr(_FailingFrontEnd, "mode", "nan")
    monkeypatch.setattr(track_pipeline, "TorchFrontEnd", _FailingFrontEnd)
    cache = EmbeddingCache(tmp_path, weights.sha256, weights.features, 16, _settings("torch"))
    run = _embed(tracks, weights, "torch", cache)
    assert sorted(run.errors) == list(range(len(tracks)))
    assert set(run.errors.values()) == {"the embedding is not finite"}
    assert not run.embeddings.any() and not list(tmp_path.rglob("*.npy"))


def test_out_of_memory_in_the_model_retries_alone_then_skips(tracks, weights, monkeypatch):
    exact = _embed(tracks, weights, "librosa")
    real, calls = track_pipeline.embed_inputs, []

    def small_device(model, inputs, device, amp, batch_size=16, tempo_scales=(1.0,),
                     on_map=None):
        calls.append(len(inputs))
        if len(inputs) > 1 or len(calls) == 2:  # no pair fits, nor the first track alone
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(model, inputs, device, amp, batch_size, tempo_scales, on_map)

    monkeypatch.setattr(track_pipeline, "embed_inputs", small_device)
    run = _embed(tracks, weights, "librosa")  # batches of 2 tracks of equal length
    assert run.errors == {0: "the device ran out of memory in the model"}
    np.testing.assert_array_equal(run.embeddings[1:], exact.embeddings[1:])
    assert calls == [2, 1, 1, 2, 1, 1]


def test_tracks_embedded_alone_keep_their_own_feature_maps(tracks, weights, monkeypatch):
    from dataclasses import replace

    from mirex_vi.config import ScoringConfig
    from mirex_vi.inference.recipe import Recipe

    scoring = ScoringConfig(segment_length=172, segment_hop=96, segment_source="map")
    recipe = Recipe(weights.model, replace(weights.features, scoring=scoring), CPU, False)
    exact = embed_tracks(tracks, weights, _settings("librosa"), extras=recipe)
    real = track_pipeline.embed_inputs

    def one_at_a_time(model, inputs, *args):
        if len(inputs) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(model, inputs, *args)

    monkeypatch.setattr(track_pipeline, "embed_inputs", one_at_a_time)
    run = embed_tracks(tracks, weights, _settings("librosa"), extras=recipe)
    assert not run.errors and sorted(run.extras) == list(range(len(tracks)))
    for i in range(len(tracks)):
        np.testing.assert_allclose(run.extras[i]["segments"], exact.extras[i]["segments"],
                                   atol=1e-6)


def test_cache_batch_write_syncs_once_and_reads_back(tracks, weights, tmp_path, monkeypatch):
    calls = {"sync": 0, "fsync": 0}

    def syncfs(fd):
        calls["sync"] += 1
        return True

    monkeypatch.setattr("mirex_vi.core.atomic._syncfs", syncfs)
    monkeypatch.setattr("mirex_vi.core.atomic.os.fsync",
                        lambda fd: calls.__setitem__("fsync", calls["fsync"] + 1))
    cache = EmbeddingCache(tmp_path, weights.sha256, weights.features, 16, _settings("auto"))
    vectors = np.eye(16, dtype=np.float32)[: len(tracks)]
    identities = [file_identity(p) for p in tracks]
    cache.put_many(list(zip(tracks, identities, vectors)))
    assert calls == {"sync": 1, "fsync": 0}
    for path, identity, vector in zip(tracks, identities, vectors):
        np.testing.assert_array_equal(cache.get(path, identity), vector)
    assert not list(tmp_path.rglob("*.tmp"))
    cache.put_many([])
    assert calls["sync"] == 1


def test_model_thread_keeps_order_and_passes_errors_back():
    seen: list[int] = []
    threads.consume_in_thread(iter(range(50)), seen.append, depth=3)
    assert seen == list(range(50))

    drawn: list[int] = []

    def draw():
        for i in range(1000):
            drawn.append(i)
            yield i

    def consume(i):
        if i == 5:
            raise ValueError("track 5")

    with pytest.raises(ValueError, match="track 5"):
        threads.consume_in_thread(draw(), consume, depth=2)
    assert len(drawn) < 20  # drawing stopped soon after the failure

    def broken_draw():
        yield 1
        raise KeyError("drawing")

    seen.clear()
    with pytest.raises(KeyError):
        threads.consume_in_thread(broken_draw(), seen.append, depth=2)
    assert seen == [1]


# --- the first-contact self-check -----------------------------------------------------------


class _SkewedCQT(TorchFrontEnd):
    """A front end whose CQT is 1 % too loud (removed again by max-normalisation)."""

    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        exact = self.cqt
        self.cqt = lambda wave: 1.01 * exact(wave)


class _WrongInput(TorchFrontEnd):
    """A front end whose model input is unrelated to the audio."""

    def __call__(self, audio):
        x = super().__call__(audio)
        return torch.rand(x.shape, generator=torch.Generator().manual_seed(0))


class _BrokenDevice(TorchFrontEnd):
    def __call__(self, audio):
        raise RuntimeError("cuFFT error: CUFFT_INTERNAL_ERROR")


def test_self_check_passes_when_the_paths_agree(weights):
    assert torch_cqt_agrees(weights, CPU, amp=False)


@pytest.mark.parametrize("front_end, reason", [
    (_SkewedCQT, "CQT relative error"),
    (_WrongInput, "embedding cosine"),
    (_BrokenDevice, "the device path failed: cuFFT error"),
])
def test_self_check_disagreement_warns_once_and_refuses(weights, caplog, front_end, reason):
    with caplog.at_level(logging.INFO, logger="mirex_vi.inference.selfcheck"):
        assert not torch_cqt_agrees(weights, CPU, amp=False, front_end=front_end(CFG, CPU))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0].getMessage()
    assert "librosa in the workers" in warnings[0].getMessage()


def test_self_check_treats_nan_as_disagreement():
    tol = tolerance("cuda", amp=True)
    assert PathAgreement(1e-6, 0.99999).problem(tol) is None
    assert "CQT" in PathAgreement(float("nan"), 1.0).problem(tol)
    assert "cosine" in PathAgreement(1e-6, float("nan")).problem(tol)
    assert "cosine" in PathAgreement(1e-6, 0.999).problem(tol)
