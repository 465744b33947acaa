"""The MIREX architecture, weight packages and the authors' checkpoint format."""

import json

import numpy as np
import pytest
import torch

from mirex_vi.config import MODEL_SIZES, FeatureConfig
from mirex_vi.inference.embed import embed_inputs
from mirex_vi.model.cqtnet import CQTNet, build_model, count_parameters
from mirex_vi.model.packaging import copy_package, derive_package, import_checkpoint, write_package
from mirex_vi.model.weights import WeightsError, load_weights, verify_package

AUTHORS_CONV = [0, 3, 7, 10, 14, 17, 21, 24, 28, 31]
BN_SUFFIXES = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def authors_keys() -> set[str]:
    keys = {f"front_end.{i}.weight" for i in AUTHORS_CONV}
    keys |= {f"front_end.{i + 1}.{s}" for i in AUTHORS_CONV for s in BN_SUFFIXES}
    return keys | {"proj.lin.weight"}


def test_mirex_model_size_and_key_names():
    model = build_model("mirex")
    assert count_parameters(model) == 8_023_760
    assert set(model.state_dict()) == authors_keys()
    assert model.state_dict()["proj.lin.weight"].shape == (512, 640)
    assert count_parameters(build_model("ismir2024")) == 5_188_672


def test_model_layer_plan_matches_reference():
    convs = [m for m in build_model("mirex").front_end if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(12, 3), (13, 3), (13, 3)] + [(3, 3)] * 7
    assert [c.dilation[1] for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2, 1, 2]
    assert [c.out_channels for c in convs] == [40, 80, 80, 80, 160, 160, 320, 320, 640, 640]
    assert all(c.bias is None and c.dilation[0] == 1 for c in convs)
    assert convs[0].padding == (6, 0)


def test_min_pooled_frames_is_the_shortest_input_the_layers_accept():
    model = CQTNet(MODEL_SIZES["tiny"]).eval()
    shortest = CQTNet.min_pooled_frames
    assert shortest == 172  # docs/REFERENCE.md §2; 3,440 CQT frames at a pool of 20
    with torch.no_grad():
        assert model(torch.rand(1, 1, 84, shortest)).shape == (1, 16)
        with pytest.raises(RuntimeError):
            model(torch.rand(1, 1, 84, shortest - 1))


def test_embedding_is_unit_norm_for_any_usable_length():
    model = CQTNet(MODEL_SIZES["tiny"]).eval()
    with torch.no_grad():
        for t in (CQTNet.min_pooled_frames, 200, 777):
            emb = model(torch.rand(2, 1, 84, t))
            assert emb.shape == (2, 16)
            torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_batching_equal_lengths_matches_single_calls():
    model = CQTNet(MODEL_SIZES["tiny"]).eval()
    rng = np.random.default_rng(0)
    inputs = [rng.random((84, t), dtype=np.float32) for t in (200, 250, 200, 200, 250)]
    batched = embed_inputs(model, inputs, torch.device("cpu"), amp=False, batch_size=8)
    single = embed_inputs(model, inputs, torch.device("cpu"), amp=False, batch_size=1)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def authors_checkpoint(path, channels=4, dim=16):
    """A checkpoint in the authors' format: a pickled dict with training state beside."""
    torch.manual_seed(1)
    model = CQTNet(type(MODEL_SIZES["tiny"])(channels=channels, embedding_dim=dim))
    for m in model.modules():  # non-trivial BN statistics, so a mis-load would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    optimizer = torch.optim.Adam(model.parameters())
    torch.save({"epoch": 39, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(), "scheduler_state_dict": {},
                "scaler_state_dict": {}, "train_loss": 0.1, "mAP": 0.9,
                "date_time": "2024-08-01"}, path)
    return model.eval()


def test_authors_checkpoint_imports_and_gives_identical_embeddings(tmp_path):
    reference = authors_checkpoint(tmp_path / "model_checkpoint.pth")
    sha = import_checkpoint(tmp_path / "model_checkpoint.pth", tmp_path / "pkg")
    assert len(sha) == 64 and verify_package(tmp_path / "pkg") == sha
    config = json.loads((tmp_path / "pkg" / "config.json").read_text())
    assert config["model"] == {"channels": 4, "embedding_dim": 16}
    assert config["provenance"]["mAP"] == 0.9
    x = torch.rand(3, 1, 84, 200)
    with torch.no_grad():
        expected = reference(x)
        for spec in (tmp_path / "pkg", tmp_path / "model_checkpoint.pth"):
            torch.testing.assert_close(load_weights(spec).model(x), expected, rtol=0, atol=0)


def test_tampered_weights_are_refused(tmp_path):
    authors_checkpoint(tmp_path / "c.pth")
    import_checkpoint(tmp_path / "c.pth", tmp_path / "pkg")
    weights = tmp_path / "pkg" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_weights(tmp_path / "pkg")


def test_missing_checksum_and_wrong_architecture_are_refused(tmp_path):
    authors_checkpoint(tmp_path / "c.pth")
    import_checkpoint(tmp_path / "c.pth", tmp_path / "pkg")
    (tmp_path / "pkg" / "SHA256SUMS").write_text(
        (tmp_path / "pkg" / "SHA256SUMS").read_text().splitlines()[0] + "\n")
    with pytest.raises(WeightsError, match="no checksum for config.json"):
        load_weights(tmp_path / "pkg")
    torch.save({"model_state_dict": {"front_end.0.weight": torch.zeros(4, 1, 12, 3),
                                     "proj.lin.weight": torch.zeros(16, 64)}}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="do not fit"):
        load_weights(tmp_path / "bad.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a loadable checkpoint"):
        load_weights(tmp_path / "junk.pth")


def test_a_copied_package_takes_its_new_name_and_a_bad_source_leaves_nothing(tmp_path):
    authors_checkpoint(tmp_path / "c.pth")
    sha = import_checkpoint(tmp_path / "c.pth", tmp_path / "exported")
    assert copy_package(tmp_path / "exported", tmp_path / "weights" / "shipped") == sha
    config = json.loads((tmp_path / "weights" / "shipped" / "config.json").read_text())
    assert config["name"] == "shipped" and config["provenance"]["mAP"] == 0.9
    assert verify_package(tmp_path / "weights" / "shipped") == sha
    with pytest.raises(WeightsError, match="exists"):
        copy_package(tmp_path / "exported", tmp_path / "weights" / "shipped")
    (tmp_path / "exported" / "config.json").write_text("{}")  # its checksum no longer matches
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        copy_package(tmp_path / "exported", tmp_path / "weights" / "other")
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["shipped"]


def test_a_derived_package_keeps_the_provenance_but_is_dated_anew(tmp_path):
    model = CQTNet(MODEL_SIZES["tiny"])
    old = {"created": "2000-01-01T00:00:00+00:00", "epoch": 7}
    write_package(tmp_path / "src", model.state_dict(), model.cfg, FeatureConfig(), old, "# src\n")
    state = {k: v + 1 if k == "proj.lin.weight" else v for k, v in model.state_dict().items()}
    derive_package(tmp_path / "src", tmp_path / "new", state, {"step": "x"}, "more\n")
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert config["name"] == "new"
    assert config["provenance"]["epoch"] == 7 and config["provenance"]["step"] == "x"
    assert not config["provenance"]["created"].startswith("2000")
    assert (tmp_path / "new" / "MODEL_CARD.md").read_text() == "# src\nmore\n"
    loaded = load_weights(tmp_path / "new").model.state_dict()
    assert torch.equal(loaded["proj.lin.weight"], state["proj.lin.weight"])


def test_unknown_weights_name_lists_known_packages():
    with pytest.raises(WeightsError, match="not found"):
        load_weights("no-such-package")
