"""Config files: the ``base:`` chain, its merge and error rules, and the shipped configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mirex_vi.config import TrainConfig, load_yaml, to_dict, with_overrides

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


# Keys added since 91ea2d4; in the configs of that commit they must hold their defaults
# (no pin aside), which leave the report's recipe unchanged.
ADDED_KEYS = {"init_sha256", "cls_weight", "label_smoothing", "memory_size", "augment"}
ADDED_FEATURE_KEYS = {"tempo_scales"}  # likewise, in the features section
# Stages tried and not shipped (weights/vinet-mirex-synth/MODEL_CARD.md); the next stage
# starts from the same weights as they did.
NOT_SHIPPED = {f"vinet-mirex-synth-cpu-stage{n}.yaml" for n in (12, 17, 18, 19)}


def test_every_config_resolves_to_what_its_full_copy_held():
    """tests/data/resolved_configs.json: the configs of 91ea2d4, before they inherited."""
    old = json.loads((REPO / "tests" / "data" / "resolved_configs.json").read_text())["configs"]
    assert set(old) <= {p.name for p in CONFIGS}
    defaults = to_dict(TrainConfig())
    for name, held in old.items():
        new = to_dict(load_yaml(REPO / "configs" / name))
        assert set(new) - set(held) == ADDED_KEYS, name
        features = new["features"]
        assert set(features) - set(held["features"]) == ADDED_FEATURE_KEYS, name
        assert all(features[k] == defaults["features"][k] for k in ADDED_FEATURE_KEYS), name
        assert _as_held(new, held) == held, name
        assert {k: new[k] for k in ADDED_KEYS - {"init_sha256"}} == \
            {k: defaults[k] for k in ADDED_KEYS - {"init_sha256"}}, name


def test_stages_that_start_from_weights_pin_them():
    for path in CONFIGS:
        cfg = load_yaml(path)
        if cfg.init_sha256:
            assert cfg.init_weights and re.fullmatch("[0-9a-f]{64}", cfg.init_sha256), path.name
    pins = {p.name: load_yaml(p).init_sha256 for p in CONFIGS if load_yaml(p).init_weights}
    unpinned = [name for name, pin in pins.items() if not pin]
    assert unpinned == ["vinet-mirex-synth-cpu-stage3.yaml"]  # its start was never recorded
    # Every shipped stage starts from its own weights; a sibling (stageN-variant, tried and
    # not shipped) starts from stage N's, and so does the stage after one not shipped.
    stage_of = {name: re.sub(r"(stage\d+)-[a-z]+", r"\1", name) for name in pins}
    for name, pin in pins.items():
        assert pin == pins[stage_of[name]], name
    shipped = {stage_of[name] for name in pins} - NOT_SHIPPED
    assert len({pins[s] for s in shipped}) == len(shipped)
    for name in NOT_SHIPPED:  # the next stage, on either machine, once it has run
        for after in (n for n in pins if n == stage_of[n] and _stage(n) == _stage(name) + 1):
            assert pins[after] == pins[name], after


def _as_held(new: dict, held: dict) -> dict:
    """``new`` cut down to the keys of ``held``, section by section (a record made before
    some keys existed holds none of them)."""
    return {k: _as_held(new[k], v) if isinstance(v, dict) else new.get(k) for k, v in held.items()}


def _stage(name: str) -> int:
    return int(re.search(r"stage(\d+)", name).group(1))


def test_shipped_package_records_the_config_it_was_trained_with_and_its_start():
    provenance = json.loads((REPO / "weights" / "vinet-mirex-synth" / "config.json")
                            .read_text())["provenance"]
    trained = provenance["config"]  # as resolved then (older packages lack newer keys)
    matches = [p.name for p in CONFIGS
               if _as_held(to_dict(load_yaml(p)), trained) == trained]
    assert len(matches) == 1, matches
    assert provenance["init_sha256"] == load_yaml(REPO / "configs" / matches[0]).init_sha256


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_chain_overrides_values_and_merges_sections(tmp_path):
    _write(tmp_path / "root.yaml", "epochs: 7\nseed: 1\nfeatures:\n  crop_frames: 5000\n")
    _write(tmp_path / "sub" / "mid.yaml",  # a base path is relative to the including file
           "base: ../root.yaml\nseed: 2\nfeatures:\n  min_crop_frames: 900\n")
    leaf = _write(tmp_path / "sub" / "leaf.yaml", "base: mid.yaml\nmargin: 0.5\n")
    cfg = load_yaml(leaf)
    assert (cfg.epochs, cfg.seed, cfg.margin) == (7, 2, 0.5)
    assert (cfg.features.crop_frames, cfg.features.min_crop_frames) == (5000, 900)
    assert cfg.features.n_bins == 84  # untouched keys keep the dataclass defaults
    cfg = with_overrides(cfg, ["seed=3", "features.crop_frames=6000"])  # --set: after the chain
    assert (cfg.seed, cfg.features.crop_frames, cfg.features.min_crop_frames) == (3, 6000, 900)


def test_base_cycles_are_refused(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_yaml(tmp_path / "a.yaml")
    _write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_yaml(tmp_path / "self.yaml")


def test_unknown_keys_and_bad_values_name_their_file(tmp_path):
    _write(tmp_path / "root.yaml", "epochs: 3\nfeatures:\n  crop_frame: 5000\n")
    leaf = _write(tmp_path / "leaf.yaml", "base: root.yaml\n")
    with pytest.raises(ValueError, match=r"root\.yaml: unknown FeatureConfig key\(s\): crop_frame"):
        load_yaml(leaf)
    _write(tmp_path / "root.yaml", "epochs: '3'\n")
    with pytest.raises(ValueError, match=r"root\.yaml: TrainConfig\.epochs: expected int"):
        load_yaml(leaf)
    _write(tmp_path / "leaf.yaml", "base: [root.yaml]\n")
    with pytest.raises(ValueError, match=r"leaf\.yaml: base must be a file name"):
        load_yaml(leaf)


def test_yaml_that_cannot_be_read_is_named_in_one_line(tmp_path):
    """Broken YAML, bytes that are not UTF-8 and a missing base were tracebacks or named no
    file; a --set value that is not YAML was a traceback."""
    bad = _write(tmp_path / "bad.yaml", "epochs: [\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not a readable YAML config \(while parsing"):
        load_yaml(bad)
    (tmp_path / "bin.yaml").write_bytes(b"epochs: \xff\n")
    with pytest.raises(ValueError, match=r"bin\.yaml: not a readable YAML config \('utf-8'"):
        load_yaml(tmp_path / "bin.yaml")
    leaf = _write(tmp_path / "leaf.yaml", "base: gone.yaml\n")
    with pytest.raises(ValueError, match=r"gone\.yaml \(the base of .*leaf\.yaml\): not a "
                                         r"readable YAML config \(No such file or directory\)"):
        load_yaml(leaf)
    with pytest.raises(ValueError, match=r"override 'epochs=\[': not a YAML value"):
        with_overrides(TrainConfig(), ["epochs=["])
