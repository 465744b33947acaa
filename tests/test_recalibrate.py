"""Re-estimated BatchNorm statistics: the exact averages, nothing else changed, the package."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import derive_with_cli, random_store

from mirex_vi.config import MODEL_SIZES
from mirex_vi.model.cqtnet import CQTNet
from mirex_vi.model.weights import load_package
from mirex_vi.train.recalibrate import recalibrate_batchnorm


def _inputs(lengths, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 1, (84, n)).astype(np.float32) for n in lengths]


def _first_norm_inputs(model: CQTNet, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """What the first BatchNorm layer receives for each batch, ``(B, C, H, W)``."""
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    handle = norm.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    with torch.no_grad():
        for x in batches:
            model.eval()(x)
    handle.remove()
    return seen


def test_statistics_are_the_average_of_the_batches_statistics():
    torch.manual_seed(0)
    model = CQTNet(MODEL_SIZES["tiny"]).eval()
    tracks = _inputs([200, 200, 230, 240])  # sorted, batches of 2: (200, 200), (230, 240)
    # The layers before the first BN are the same in both modes, so its inputs can be seen
    # in eval mode; the second batch is cut to its shortest track (230 frames).
    batches = [torch.from_numpy(np.stack(tracks[:2]))[:, None],
               torch.from_numpy(np.stack([t[:, :230] for t in tracks[2:]]))[:, None]]
    seen = _first_norm_inputs(model, batches)
    mean = torch.stack([s.mean(dim=(0, 2, 3)) for s in seen]).mean(0)
    var = torch.stack([s.var(dim=(0, 2, 3), unbiased=True) for s in seen]).mean(0)

    recalibrate_batchnorm(model, tracks[::-1], batch_size=2)  # any order: sorted inside
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.allclose(norm.running_mean, mean, atol=1e-5)
    assert torch.allclose(norm.running_var, var, rtol=1e-4)
    assert int(norm.num_batches_tracked) == 2


def test_only_batchnorm_buffers_change_and_the_mode_and_momentum_are_kept():
    torch.manual_seed(1)
    model = CQTNet(MODEL_SIZES["tiny"]).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recalibrate_batchnorm(model, _inputs([200] * 5, seed=1), batch_size=4)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var",
                                                   "num_batches_tracked") for k in changed)
    assert not model.training
    assert all(m.momentum == 0.1 for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


@pytest.fixture()
def store(tmp_path):
    """A u8 store and light metadata: three cliques of two versions (random CQTs)."""
    return random_store(tmp_path, [2, 2, 2])


def test_the_command_writes_a_new_package_with_its_provenance(store, tiny_package):
    out = store / "weights"
    code, text = derive_with_cli("recalibrate", tiny_package, store, "recal", out,
                                 "--tracks", "4", "--device", "cpu")
    assert code == 0, text
    assert "averaged over 4 tracks" in text
    new, old = load_package(out / "recal"), load_package(tiny_package)
    assert new.name == "recal" and new.sha256 != old.sha256
    old_state, new_state = old.model.state_dict(), new.model.state_dict()
    assert all(torch.equal(old_state[k], new_state[k]) for k in old_state if "running" not in k
               and "num_batches" not in k)
    provenance = json.loads((out / "recal" / "config.json").read_text())["provenance"]
    assert provenance["note"] == "random weights for tests"  # the source's, kept
    assert provenance["batchnorm_recalibrated"] == {
        "from_sha256": old.sha256, "metadata": str(store / "meta.json"), "tracks": 4, "seed": 0}
    card = (out / "recal" / "MODEL_CARD.md").read_text()
    assert card.startswith("# tiny-test") and "## BatchNorm statistics" in card

    code, text = derive_with_cli("recalibrate", tiny_package, store, "recal", out)
    assert code == 2 and "exists" in text  # never replaced


def test_metadata_without_features_is_one_line_and_leaves_no_package(store, tiny_package, tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"C-9": [{"version_id": "V-9",
                                                              "youtube_id": "absentxxxxx"}]}))
    code, text = derive_with_cli("recalibrate", tiny_package, store, "recal", store / "weights",
                                 metadata=tmp_path / "other.json")
    assert code == 2 and "no version has features" in text and "Traceback" not in text
    assert not (store / "weights" / "recal").exists()
    assert not (store / "weights").exists() or not any((store / "weights").iterdir())
