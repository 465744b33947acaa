"""Weights and configs that cannot work are refused with a message and exit 2, never a
traceback or a matrix of 2.0s (issue #18, items 2 and 6)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from conftest import run_cli, write_list
from mirex_vi.config import (FEATURE_BOUNDS, MODEL_BOUNDS, TEMPO_SCALE_BOUNDS, FeatureConfig,
                             ModelConfig, from_dict)
from mirex_vi.model.weights import CHECKED_FILES, SUMS_FILE, WeightsError, load_weights, sha256_file


def package_with(tmp_path, tiny_package, **features):
    """A copy of the tiny package whose config.json holds ``features``, checksums updated."""
    folder = tmp_path / "pkg"
    shutil.copytree(tiny_package, folder)
    config = json.loads((folder / "config.json").read_text())
    config["features"].update(features)
    (folder / "config.json").write_text(json.dumps(config))
    reseal(folder)
    return folder


def reseal(folder):
    (folder / SUMS_FILE).write_text("".join(f"{sha256_file(folder / n)}  {n}\n" for n in CHECKED_FILES))


def outside(bounds) -> list:
    """Values just outside ``bounds``."""
    values = [bounds.low if bounds.low_open else bounds.low - 1]
    return values + ([bounds.high + 1] if bounds.high < float("inf") else [])


@pytest.mark.parametrize("cls, bounds", [(FeatureConfig, FEATURE_BOUNDS), (ModelConfig, MODEL_BOUNDS)])
def test_every_feature_and_model_field_is_range_checked(cls, bounds):
    # tempo_scales is a list (below); scoring a config of its own (test_segments)
    listed = {f.name for f in dataclasses.fields(cls)} - {"tempo_scales", "scoring"}
    assert set(bounds) == listed
    for name, allowed in bounds.items():
        for value in outside(allowed):
            value = type(getattr(cls(), name))(value)
            with pytest.raises(ValueError, match=rf"{cls.__name__}\.{name} must be"):
                from_dict(cls, {name: value})
    with pytest.raises(ValueError, match="Nyquist"):
        FeatureConfig(n_bins=120)
    for value in outside(TEMPO_SCALE_BOUNDS):
        with pytest.raises(ValueError, match=r"FeatureConfig\.tempo_scales must be"):
            from_dict(FeatureConfig, {"tempo_scales": [1.0, value]})


@pytest.mark.parametrize("field, value", [("sample_rate", -1), ("downsample_factor", 0),
                                          ("eps", 0.0), ("fmin", -32.7)])
def test_a_package_config_out_of_range_exits_2_naming_the_field(tmp_path, tracks, tiny_package,
                                                                field, value):
    package = package_with(tmp_path, tiny_package, **{field: value})
    collection = write_list(tmp_path / "c.txt", [str(tracks[0])])
    code, out = run_cli("identify", collection, collection, tmp_path / "o.txt", "--weights", package)
    assert code == 2 and f"config.json: FeatureConfig.{field} must be" in out, out
    assert "Traceback" not in out and not (tmp_path / "o.txt").exists()
    code, out = run_cli("weights", "verify", package)
    assert code == 2 and f"FeatureConfig.{field}" in out


@pytest.mark.parametrize("features, field", [({"min_frames": 1000}, "min_frames"),
                                             ({"n_bins": 12}, "n_bins")])
def test_features_the_model_cannot_take_are_refused(tmp_path, tiny_package, features, field):
    with pytest.raises(WeightsError, match=f"features.{field}"):
        load_weights(package_with(tmp_path, tiny_package, **features))


def test_verify_an_unknown_name_exits_2(tmp_path):
    code, out = run_cli("weights", "verify", "no-such-package")
    assert code == 2 and "FAILED\tno-such-package\tweights 'no-such-package' not found" in out
    code, out = run_cli("weights", "verify", "x" * 300)  # a name no file system takes
    assert code == 2 and "not found" in out and "Traceback" not in out


def test_empty_weights_are_refused_not_taken_for_the_default(tmp_path, tracks):
    """``--weights "$UNSET"`` quietly identified with the default package."""
    lst = write_list(tmp_path / "list.txt", [str(t) for t in tracks[:2]])
    code, out = run_cli("identify", lst, lst, tmp_path / "out.txt", "--weights", "", "--quiet")
    assert code == 2 and "weights '': empty; leave the option out" in out, out
    assert not (tmp_path / "out.txt").exists()
    with pytest.raises(WeightsError, match="empty"):
        load_weights(" ")


def test_a_truncated_model_whose_checksum_matches_is_refused(tmp_path, tracks, tiny_package):
    package = package_with(tmp_path, tiny_package)
    model = package / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-100])
    reseal(package)
    code, out = run_cli("weights", "verify", package)
    assert code == 2 and "not a readable safetensors file" in out and "Traceback" not in out, out
    collection = write_list(tmp_path / "c.txt", [str(tracks[0])])
    code, out = run_cli("identify", collection, collection, tmp_path / "o.txt", "--weights", package)
    assert code == 2 and "not a readable safetensors file" in out and "Traceback" not in out, out


class Payload:
    """Pickles as a call of ``open(marker, "w")``: code that a careless load would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_checkpoint_holding_code_is_refused_without_advice_to_load_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model_state_dict": {}, "payload": Payload(marker)}, tmp_path / "evil.pth")
    code, out = run_cli("weights", "import", tmp_path / "evil.pth", "--name", "x", "--root", tmp_path)
    assert code == 2 and "holds code besides tensors (io.open)" in out and "will not be loaded" in out
    assert "weights_only" not in out and not marker.exists()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    code, out = run_cli("weights", "import", tmp_path / "junk.pth", "--name", "y", "--root", tmp_path)
    assert code == 2 and "not a loadable checkpoint" in out and "weights_only" not in out


def checkpoint_of(package, path):
    """A checkpoint in the authors' format holding the weights of ``package``."""
    from safetensors.torch import load_file

    torch.save({"model_state_dict": load_file(package / "model.safetensors")}, path)
    return path


def test_import_never_replaces_a_package_and_names_stay_under_the_root(tmp_path, tiny_package):
    checkpoint = checkpoint_of(tiny_package, tmp_path / "c.pth")
    root = tmp_path / "weights"
    shutil.copytree(tiny_package, root / "kept")
    before = {p.name: p.read_bytes() for p in (root / "kept").iterdir()}
    code, out = run_cli("weights", "import", checkpoint, "--name", "kept", "--root", root)
    assert code == 2 and f"{root / 'kept'} exists" in out and "Traceback" not in out, out
    assert {p.name: p.read_bytes() for p in (root / "kept").iterdir()} == before
    for name in ("../outside", "", ".", "a/b"):
        code, out = run_cli("weights", "export", checkpoint, "--name", name, "--root", root)
        assert code == 2 and "not a package name" in out, (name, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pth", "weights"]
    assert sorted(p.name for p in root.iterdir()) == ["kept"]


def test_an_import_that_fails_midway_leaves_no_package(tmp_path, tiny_package, monkeypatch):
    import mirex_vi.model.packaging

    from conftest import DiskFull

    checkpoint = checkpoint_of(tiny_package, tmp_path / "c.pth")
    monkeypatch.setattr(mirex_vi.model.packaging, "atomic_open", DiskFull)  # the card, config, sums
    code, out = run_cli("weights", "import", checkpoint, "--name", "new", "--root", tmp_path / "w")
    assert code == 3 and "No space left on device" in out and "Traceback" not in out, out
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").iterdir())


def test_a_card_that_is_not_utf8_is_named(tmp_path, tiny_package):
    checkpoint = checkpoint_of(tiny_package, tmp_path / "c.pth")
    (tmp_path / "card.md").write_bytes(b"\xff\xfe# card")
    code, out = run_cli("weights", "import", checkpoint, "--name", "p", "--root", tmp_path / "w",
                        "--card", tmp_path / "card.md")
    assert code == 2 and out.startswith(f"error: {tmp_path / 'card.md'}: ") and "UTF-8" in out, out
    assert not (tmp_path / "w" / "p").exists()


def test_a_checkpoint_whose_state_dict_is_no_dict_is_named(tmp_path):
    torch.save({"model_state_dict": "weights"}, tmp_path / "odd.pth")  # was an AttributeError
    code, out = run_cli("weights", "import", tmp_path / "odd.pth", "--name", "x", "--root", tmp_path)
    assert code == 2 and "odd.pth: model_state_dict is a str, not a state dict" in out, out


def test_non_finite_weights_are_refused_on_import_and_load(tmp_path, tracks, tiny_package):
    """NaN weights made a package whose every embedding was NaN: a matrix of 2.0s, exit 0."""
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_package / "model.safetensors")
    state["front_end.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save({"model_state_dict": state}, tmp_path / "nan.pth")
    code, out = run_cli("weights", "import", tmp_path / "nan.pth", "--name", "x", "--root", tmp_path)
    assert code == 2 and "nan.pth: 1 tensor(s) hold NaN or infinite values" in out, out
    assert not (tmp_path / "x").exists()
    folder = tmp_path / "pkg"
    shutil.copytree(tiny_package, folder)
    save_file(state, folder / "model.safetensors")
    reseal(folder)
    collection = write_list(tmp_path / "c.txt", [str(p) for p in tracks[:2]])
    code, out = run_cli("identify", collection, collection, tmp_path / "o.txt", "--weights", folder)
    assert code == 2 and "front_end.0.weight" in out and not (tmp_path / "o.txt").exists(), out


def test_copy_of_a_package_with_a_broken_config_names_the_source(tmp_path, tiny_package):
    folder = tmp_path / "src"
    shutil.copytree(tiny_package, folder)
    (folder / "config.json").write_text('{"model": ')
    reseal(folder)
    code, out = run_cli("weights", "copy", folder, "c", "--root", tmp_path / "w")
    assert code == 2 and out.startswith(f"error: {folder / 'config.json'}: invalid"), out
    assert not (tmp_path / "w" / "c").exists()
