"""Config files: the ``base:`` chain, its merge and error rules, and the shipped configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from mirex_vi.config import BASE_KEY, TrainConfig, load_yaml, to_dict, with_overrides

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))  # with history/, the stages of the shipped package
SHIPPED_RECIPE = CONFIG_DIR / "vinet-mirex-synth.yaml"
SHIPPED_STAGE = CONFIG_DIR / "history" / "vinet-mirex-synth-gpu-stage16.yaml"


# Keys added since 91ea2d4; in the configs of that commit they must hold their defaults
# (no pin aside), which leave the report's recipe unchanged.
ADDED_KEYS = {"init_sha256", "cls_weight", "label_smoothing", "memory_size", "augment",
              "val_features_dir", "mix", "distill_weight", "teacher_tempo_scales",
              "distill_sources"}
ADDED_FEATURE_KEYS = {"tempo_scales", "scoring"}  # likewise, in the features section
# Stages tried and not shipped (weights/vinet-mirex-synth/MODEL_CARD.md); the next stage
# starts from the same weights as they did.
NOT_SHIPPED = {f"history/vinet-mirex-synth-cpu-stage{n}.yaml" for n in (12, 17, 18, 19)}
# Where one run's data lie: every config leaves them to --set.
DATA_LOCATIONS = {"features_dir", "train_metadata", "val_metadata"}
# What one run gives the shipped recipe with --set, besides its data: the weights it
# continues (and their pin), its run folder, its data loaders' workers (stage 16's 7 shared
# a 16-core machine with a second run).
RUN_SPECIFIC = {"init_weights", "init_sha256", "output_dir", "num_workers"}


def _name(path: Path) -> str:
    """A config's path under configs/, as the fixtures and NOT_SHIPPED name it."""
    return path.relative_to(CONFIG_DIR).as_posix()


def test_every_config_resolves_to_what_its_full_copy_held():
    """tests/data/resolved_configs.json: the configs of 91ea2d4, before they inherited."""
    old = json.loads((REPO / "tests" / "data" / "resolved_configs.json").read_text())["configs"]
    assert set(old) <= {_name(p) for p in CONFIGS}
    defaults = to_dict(TrainConfig())
    for name, held in old.items():
        new = to_dict(load_yaml(CONFIG_DIR / name))
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
    pins = {_name(p): load_yaml(p).init_sha256 for p in CONFIGS if load_yaml(p).init_weights}
    unpinned = [name for name, pin in pins.items() if not pin]
    assert unpinned == ["history/vinet-mirex-synth-cpu-stage3.yaml"]  # its start never recorded
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
    trained = {k: v for k, v in trained.items() if k not in DATA_LOCATIONS}
    matches = [p for p in CONFIGS if _as_held(to_dict(load_yaml(p)), trained) == trained]
    assert matches == [SHIPPED_STAGE]
    assert provenance["init_sha256"] == load_yaml(SHIPPED_STAGE).init_sha256


def test_the_shipped_recipe_is_the_shipped_stage_without_one_runs_settings():
    recipe, stage = to_dict(load_yaml(SHIPPED_RECIPE)), to_dict(load_yaml(SHIPPED_STAGE))
    differ = {k for k in recipe if recipe[k] != stage[k]}
    assert differ <= RUN_SPECIFIC, differ
    assert all(recipe[k] == "" for k in DATA_LOCATIONS | {"init_weights", "init_sha256"})
    assert recipe["num_workers"] == load_yaml(CONFIG_DIR / "discogs-vinet-mirex.yaml").num_workers


def test_configs_hold_no_machine_paths():
    """Data locations come from --set: no absolute path, no folder outside the repository,
    no shared corpus folder, no device copy (.gpu-data). A base is named relative to its
    file and must lie under configs/."""
    machine = re.compile(r"(?<![\w.~])(/|~/|[A-Za-z]:\\)\w|\.\./|shared/|\.gpu-data")
    files = [p for p in CONFIG_DIR.rglob("*") if p.is_file()]
    assert SHIPPED_RECIPE in files and len(files) > len(CONFIGS)  # README.md too
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            key, _, value = line.partition(":")
            if key == BASE_KEY:
                base = (path.parent / value.split("#")[0].strip()).resolve()
                assert base.is_file() and CONFIG_DIR in base.parents, (_name(path), n)
                continue
            assert not machine.search(line), (_name(path), n, line)
    for path in CONFIGS:
        cfg = load_yaml(path)
        assert all(getattr(cfg, k) == "" for k in DATA_LOCATIONS), _name(path)


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


def test_mix_sources_come_from_yaml_and_set_and_go_back_as_lists(tmp_path):
    _write(tmp_path / "root.yaml", "mix:\n  - {features_dir: A, train_metadata: a.json, share: 0.2}\n"
                                   "  - {features_dir: B, train_metadata: b.json, share: 0.1}\n")
    leaf = _write(tmp_path / "leaf.yaml", "base: root.yaml\nmix:\n  - {share: 0.3}\n")
    assert [m.share for m in load_yaml(tmp_path / "root.yaml").mix] == [0.2, 0.1]
    cfg = load_yaml(leaf)  # a list is replaced whole, not merged
    assert [(m.features_dir, m.share) for m in cfg.mix] == [("", 0.3)]
    cfg = with_overrides(cfg, ["mix.0.features_dir=/x", "mix.0.train_metadata=/y"])
    assert cfg.shares == pytest.approx((0.7, 0.3)) and cfg.mix[0].features_dir == "/x"
    cfg = with_overrides(cfg, ["mix=[{features_dir: /z, train_metadata: /w, share: 0.25}]"])
    assert to_dict(cfg)["mix"] == [{"features_dir": "/z", "train_metadata": "/w", "share": 0.25}]
    saved = _write(tmp_path / "run.yaml", yaml.safe_dump(to_dict(cfg)))
    assert load_yaml(saved) == cfg
    assert TrainConfig().mix == () and TrainConfig().shares == (1.0,)
    assert TrainConfig().distill_weight == 0 and TrainConfig().teacher_tempo_scales == (0.7, 1.0, 1.4)
    assert TrainConfig().distill_sources == () and TrainConfig().source_names == ("main",)
    mixed = with_overrides(TrainConfig(), ["mix=[{share: 0.5}]", "distill_sources=[main]"])
    assert mixed.source_names == ("main", "mix.0") and mixed.distill_sources == ("main",)


@pytest.mark.parametrize("setting, message", [
    ("mix=[{share: 0}]", r"TrainConfig.mix.0: share must be in \(0, 1\], got 0"),
    ("mix=[{share: 0.7}, {share: 0.3}]", r"TrainConfig.mix: the shares sum to 1, which leaves"),
    ("mix={share: 0.3}", r"TrainConfig.mix must be a list"),
    ("mix=[/x]", r"TrainConfig.mix.0: expected a mapping"),
    ("mix.0.share=0.3", r"'0' is not a section or a list item"),
    ("distill_weight=-0.5", r"TrainConfig.distill_weight must be >= 0"),
    ("teacher_tempo_scales=[0.1]", r"TrainConfig.teacher_tempo_scales must be one or more numbers"),
    ("distill_sources=[mix.0]", r"TrainConfig.distill_sources must name distinct training "
                                r"sources among main, got \['mix.0'\]"),
    ("distill_sources=[main, main]", r"TrainConfig.distill_sources must name distinct"),
    ("distill_sources=main", r"TrainConfig.distill_sources must name distinct"),
])
def test_bad_mix_and_distillation_settings_name_their_key(setting, message):
    with pytest.raises(ValueError, match=message):
        with_overrides(TrainConfig(), [setting])
