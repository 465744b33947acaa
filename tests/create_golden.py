"""Write ``tests/data/golden.json``: reference embeddings that pin the features and the model.

    python tests/create_golden.py

For one fixed synthetic input (:func:`golden_audio`), it records the model input's shape and
per-bin means and the embedding of two weight sets: the shipped package
(``weights/vinet-mirex-synth``) and an authors'-format ``model_checkpoint.pth`` of seeded
random weights (:func:`write_authors_checkpoint`, rebuilt by the test itself). Everything
runs in fp32 on the CPU with the librosa CQT, the exact path.

Regenerate only when a change to the features or the model is intended (or the shipped
weights are replaced), and say so in the commit; ``tests/test_golden.py`` fails loudly on any
other change.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from mirex_vi.config import MODEL_SIZES
from mirex_vi.features.frontend import compute_cqt, preprocess
from mirex_vi.inference.embed import embed_inputs
from mirex_vi.model.cqtnet import CQTNet
from mirex_vi.model.weights import DEFAULT_WEIGHTS, load_weights
from mirex_vi.synth import piano_like

GOLDEN = Path(__file__).parent / "data" / "golden.json"
AUTHORS_SEED = 1234


def golden_audio() -> np.ndarray:
    """``(N,)`` float32: 30 s of the piano-like test signal at 22.05 kHz, peak 0.5."""
    return 0.5 * piano_like(30.0, seed=7)


def write_authors_checkpoint(path: Path) -> Path:
    """A ``model_checkpoint.pth`` in the authors' format with seeded random MIREX weights."""
    torch.manual_seed(AUTHORS_SEED)
    model = CQTNet(MODEL_SIZES["mirex"])
    torch.save(dict(epoch=0, model_state_dict=model.state_dict(), optimizer_state_dict={},
                    scheduler_state_dict={}, scaler_state_dict={}, train_loss=0.0, mAP=0.0,
                    date_time="golden"), path)
    return path


def model_input(cfg) -> np.ndarray:
    """``(84, T')`` float32: the golden audio through the librosa CQT and ``preprocess``."""
    return preprocess(compute_cqt(golden_audio(), cfg), cfg)


def reference(weights: str | Path) -> dict:
    """The model input's shape and per-bin means, and the fp32 CPU embedding (at the
    package's tempo scales, as every command embeds), of ``weights``."""
    loaded = load_weights(weights)
    x = model_input(loaded.features)
    emb = embed_inputs(loaded.model.eval(), [x], torch.device("cpu"), amp=False,
                       tempo_scales=loaded.features.tempo_scales)[0].numpy()  # (D,)
    return dict(sha256=loaded.sha256, input_shape=list(x.shape),
                input_bin_means=[round(float(v), 7) for v in x.mean(axis=1)],
                embedding=[round(float(v), 7) for v in emb])


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        authors = reference(write_authors_checkpoint(Path(tmp) / "model_checkpoint.pth"))
    authors.pop("sha256")  # torch.save output is not byte-stable; the weights are
    record = dict(
        made_by="python tests/create_golden.py",
        versions=dict(python=platform.python_version(), torch=torch.__version__,
                      numpy=np.__version__, librosa=__import__("librosa").__version__),
        shipped={"name": DEFAULT_WEIGHTS, **reference(DEFAULT_WEIGHTS)},
        authors_format={"seed": AUTHORS_SEED, **authors},
    )
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    main()
