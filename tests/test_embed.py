"""Inference paths agree: the torch (GPU-capable) front end and the librosa one."""

import numpy as np
import torch

from mirex_vi.config import MODEL_SIZES, FeatureConfig
from mirex_vi.features.frontend import TorchFrontEnd, compute_cqt, preprocess, preprocess_tensor
from mirex_vi.inference.embed import embed_inputs
from mirex_vi.model.cqtnet import CQTNet
from mirex_vi.synth import melody

CFG = FeatureConfig()


def test_preprocess_tensor_equals_numpy_preprocess():
    cqt = np.random.default_rng(0).random((4321, 84)).astype(np.float16)
    for min_frames in (None, 5000):
        expected = preprocess(cqt, CFG, min_frames)
        got = preprocess_tensor(torch.from_numpy(cqt), CFG, min_frames).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_torch_front_end_matches_librosa_inputs_and_embeddings():
    audio = melody([60, 64, 67, 72, 71, 67, 64, 62] * 12, note_seconds=0.3)  # ~29 s
    expected = preprocess(compute_cqt(audio, CFG), CFG)
    got = TorchFrontEnd(CFG, torch.device("cpu"))(audio).numpy()
    assert got.shape == expected.shape
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-3
    torch.manual_seed(0)
    model = CQTNet(MODEL_SIZES["mirex"]).eval()
    emb = embed_inputs(model, [expected, got], torch.device("cpu"), amp=False)
    assert float(emb[0] @ emb[1]) >= 0.9999
