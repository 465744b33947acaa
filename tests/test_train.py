"""LR schedule, a tiny end-to-end run on synthetic features, resume, 2-process DDP, training
from two stores, and distillation from a teacher."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from click.testing import CliRunner

from mirex_vi.cli import main
from mirex_vi.config import TrainConfig, load_yaml, with_overrides
from mirex_vi.features.layout import save_feature
from mirex_vi.model.packaging import import_checkpoint
from mirex_vi.model.weights import WeightsError, load_weights, sha256_file
from mirex_vi.train import checkpoint, loop as train
from mirex_vi.train.checkpoint import BEST, LAST, METRICS, distilled_cliques
from mirex_vi.train.distributed import Ranks, init_distributed
from mirex_vi.train.inputs import build_train_loader
from mirex_vi.train.loop import build_training_state, lr_at, run_training, train_epoch
from mirex_vi.train.losses import distillation_loss, teacher_embeddings, triplet_loss

REPO = Path(__file__).resolve().parent.parent
TINY = "configs/tiny.yaml"
POOL = 20  # FeatureConfig.downsample_factor


def test_lr_schedule_of_the_report():
    cfg = TrainConfig()
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(5, cfg) == pytest.approx(1e-2)
    assert lr_at(40, cfg) == pytest.approx(1e-5)
    assert lr_at(2.5, cfg) == pytest.approx((1e-4 + 1e-2) / 2)
    assert lr_at(22.5, cfg) == pytest.approx((1e-2 + 1e-5) / 2)
    assert all(lr_at(e, cfg) > lr_at(e + 1, cfg) for e in range(5, 40))


def _write_split(root, name, n_cliques, n_versions, rng, offset=0):
    """Synthetic cliques: a random (T', 84) pattern per clique; versions are time-shifted,
    noisy copies, stored at the CQT frame rate (each pooled frame repeated 20 times)."""
    light = {}
    for c in range(offset, offset + n_cliques):
        pattern = rng.random((220, 84)) ** 4  # sparse-ish peaks
        versions = []
        for v in range(n_versions):
            yt = f"y{c:04d}v{v:02d}xx"
            shifted = np.roll(pattern, int(rng.integers(0, 40)), axis=0)
            noisy = shifted + 0.15 * rng.random(shifted.shape)
            save_feature(root / "features", yt, np.repeat(noisy, POOL, axis=0))
            versions.append({"version_id": f"V-{c}-{v}", "youtube_id": yt})
        light[f"C-{c:07d}"] = versions
    path = root / name
    path.write_text(json.dumps(light))
    return str(path)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    _write_split(root, "light.json.train", 10, 4, rng)
    _write_split(root, "light.json.val", 4, 2, rng, offset=100)
    return root


def _cfg(root, out, *extra):
    return with_overrides(load_yaml(TINY), [
        f"train_metadata={root / 'light.json.train'}",
        f"val_metadata={root / 'light.json.val'}",
        f"features_dir={root / 'features'}",
        f"output_dir={out}",
        *extra,
    ])


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(dataset_dir, tmp_path_factory):
    """An uninterrupted tiny run (3 epochs of 5 steps, validation each epoch)."""
    return run_training(_cfg(dataset_dir, tmp_path_factory.mktemp("full") / "run"), device="cpu")


def test_git_commit_is_head_marked_when_modified_or_what_the_environment_says(monkeypatch,
                                                                              tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "code.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "pkg"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    monkeypatch.delenv(checkpoint.GIT_COMMIT_ENV, raising=False)
    monkeypatch.setattr(checkpoint, "__file__", str(repo / "pkg" / "checkpoint.py"))
    assert checkpoint.git_commit() == head
    (repo / "pkg" / "code.py").write_text("x = 2\n")
    assert checkpoint.git_commit() == head + "+modified"
    monkeypatch.setenv(checkpoint.GIT_COMMIT_ENV, "0123abc")
    assert checkpoint.git_commit() == "0123abc"
    monkeypatch.setattr(checkpoint, "__file__", str(tmp_path / "checkpoint.py"))
    monkeypatch.delenv(checkpoint.GIT_COMMIT_ENV)
    assert checkpoint.git_commit() is None  # no checkout


def test_tiny_run_learns_and_checkpoints(full_run):
    cfg = load_yaml(full_run / "config.yaml")
    assert (full_run / BEST).is_file() and (full_run / LAST).is_file()
    ckpt = torch.load(full_run / LAST, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == cfg.epochs
    for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
                "scaler_state_dict", "train_loss", "mAP", "date_time", "config",
                "git_commit", "val_metrics"):
        assert key in ckpt
    assert ckpt["config"]["model"] == "tiny"
    assert 0.0 <= ckpt["val_metrics"]["map"] <= 1.0
    records = _metrics(full_run)
    assert [r["epoch"] for r in records] == list(range(1, cfg.epochs + 1))
    assert [r["lr"] for r in records] == pytest.approx([lr_at(e, cfg) for e in range(cfg.epochs)])
    assert records[-1]["train_loss"] < 0.9 * records[0]["train_loss"]
    best = torch.load(full_run / BEST, map_location="cpu", weights_only=True)
    assert best["mAP"] == max(r["val"]["map"] for r in records)
    with pytest.raises(FileExistsError):
        run_training(cfg, device="cpu")


def _kill_before_last_epoch_and_resume(cfg, monkeypatch) -> Path:
    """Run ``cfg``, interrupted as its last epoch starts, then ``--resume`` it to the end."""
    real_epoch = train._run_epoch

    def killed_at_last_epoch(state, run):
        if state.epoch == cfg.epochs - 1:
            raise KeyboardInterrupt
        return real_epoch(state, run)

    monkeypatch.setattr(train, "_run_epoch", killed_at_last_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, device="cpu")
    monkeypatch.setattr(train, "_run_epoch", real_epoch)
    last = Path(cfg.output_dir) / LAST
    assert torch.load(last, weights_only=True)["epoch"] == cfg.epochs - 1
    return run_training(cfg, resume=True, device="cpu")


def test_resume_after_a_kill_matches_an_uninterrupted_run(full_run, dataset_dir, tmp_path,
                                                          monkeypatch):
    cfg = _cfg(dataset_dir, tmp_path / "killed")
    run_dir = _kill_before_last_epoch_and_resume(cfg, monkeypatch)
    assert _metrics(run_dir)[-1]["epoch"] == cfg.epochs
    a, b = (torch.load(d / LAST, weights_only=True)["model_state_dict"] for d in (full_run, run_dir))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_head_memory_and_augmentation_train_resume_and_stay_out_of_the_package(
        dataset_dir, tmp_path, monkeypatch):
    cfg = _cfg(dataset_dir, tmp_path / "cls", "epochs=2", "val_metadata=''", "cls_weight=0.5",
               "memory_size=12",
               "augment.pitch_prob=0.5", "augment.stretch_prob=0.5", "augment.envelope_prob=0.5")
    run_dir = _kill_before_last_epoch_and_resume(cfg, monkeypatch)
    ckpt = torch.load(run_dir / LAST, weights_only=True)
    assert ckpt["head_state_dict"]["classifier.weight"].shape == (10, 16)  # 10 training cliques
    assert ckpt["memory_state_dict"]["emb"].shape == (12, 16)
    assert (ckpt["memory_state_dict"]["labels"] >= 0).all()  # filled by the first epoch
    records = _metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2] and records[0]["cls_loss"] > 0
    uninterrupted = run_training(with_overrides(cfg, [f"output_dir={tmp_path / 'cls-full'}"]),
                                 device="cpu")
    whole = torch.load(uninterrupted / LAST, weights_only=True)
    for part in ("model_state_dict", "head_state_dict", "memory_state_dict"):
        for name, tensor in whole[part].items():
            assert torch.equal(tensor, ckpt[part][name]), (part, name)
    from safetensors.torch import load_file

    import_checkpoint(run_dir / LAST, tmp_path / "pkg")
    assert set(load_file(tmp_path / "pkg" / "model.safetensors")) == set(ckpt["model_state_dict"])


def test_metrics_lines_are_appended_atomically(tmp_path, monkeypatch):
    path = tmp_path / METRICS
    checkpoint.append_metrics(path, {"epoch": 1})
    checkpoint.append_metrics(path, {"epoch": 2})
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        checkpoint.append_metrics(path, {"epoch": 3})
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    assert [p.name for p in tmp_path.iterdir()] == [METRICS]


def test_init_weights_starts_from_a_checkpoint_and_refuses_another_size(full_run, dataset_dir,
                                                                        tmp_path):
    best = full_run / BEST
    cfg = _cfg(dataset_dir, tmp_path / "ft", f"init_weights={best}")
    model = build_training_state(cfg, torch.device("cpu"), Ranks()).bare_model
    start = torch.load(best, map_location="cpu", weights_only=True)["model_state_dict"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, start[name]), name
    with pytest.raises(WeightsError, match="not the 'mirex' model"):
        checkpoint.initial_model(with_overrides(cfg, ["model=mirex"]))


def test_pinned_init_weights_are_checked_and_recorded(full_run, dataset_dir, tmp_path):
    best = full_run / BEST
    assert torch.load(best, weights_only=True)["init_sha256"] is None  # a random start
    sha = sha256_file(best)
    cfg = _cfg(dataset_dir, tmp_path / "ft", f"init_weights={best}", f"init_sha256={sha}",
               "epochs=1", "val_metadata=''")
    run_dir = run_training(cfg, device="cpu")
    assert torch.load(run_dir / LAST, weights_only=True)["init_sha256"] == sha
    import_checkpoint(run_dir / LAST, tmp_path / "pkg")
    provenance = json.loads((tmp_path / "pkg" / "config.json").read_text())["provenance"]
    assert provenance["init_sha256"] == sha
    wrong = "f" * 64
    with pytest.raises(WeightsError, match=f"sha256 {sha}.*init_sha256 {wrong}"):
        run_training(with_overrides(cfg, [f"init_sha256={wrong}",
                                          f"output_dir={tmp_path / 'refused'}"]), device="cpu")
    with pytest.raises(WeightsError, match="init_weights is empty"):
        checkpoint.initial_model(with_overrides(cfg, ["init_weights=''"]))


def test_rerunning_stage_5_from_a_later_stages_shipped_package_is_refused(tmp_path, monkeypatch):
    """Stage 5 starts from weights/vinet-mirex-synth, which now holds stage 16's output."""
    monkeypatch.chdir(REPO)  # init_weights is a path relative to the repository
    result = CliRunner().invoke(main, [
        "train", "--config", "configs/history/vinet-mirex-synth-cpu-stage5.yaml", "--device", "cpu",
        "--quiet", "--set", f"output_dir={tmp_path / 'run'}"])
    shipped = load_weights("vinet-mirex-synth").sha256
    pin = load_yaml(REPO / "configs" / "history" / "vinet-mirex-synth-cpu-stage5.yaml").init_sha256
    assert result.exit_code == 2
    assert f"sha256 {shipped}" in result.output and f"init_sha256 {pin}" in result.output
    assert not (tmp_path / "run" / LAST).exists()


def test_a_disabled_scaler_state_loads_into_an_enabled_scaler(tmp_path):
    """A CPU (or amp: false) checkpoint holds scaler state {}, which GradScaler refuses."""
    cfg = with_overrides(load_yaml(TINY), [f"output_dir={tmp_path}"])
    state = build_training_state(cfg, torch.device("cpu"), Ranks())
    assert not state.scaler.is_enabled()
    checkpoint.save_checkpoint(tmp_path / LAST,
                               checkpoint.checkpoint_payload(state, cfg, {"loss": 0.5}, {}))
    resumed = build_training_state(cfg, torch.device("cpu"), Ranks(), initial_weights=False)
    resumed.scaler = torch.amp.GradScaler("cpu", enabled=True)
    checkpoint.restore_checkpoint(tmp_path / LAST, resumed, cfg)
    assert resumed.scaler.is_enabled() and resumed.scaler.get_scale() == 2.0 ** 16
    for name, tensor in state.bare_model.state_dict().items():
        assert torch.equal(tensor, resumed.bare_model.state_dict()[name]), name


# --- two CPU processes with gloo -------------------------------------------------------------


def test_crops_shorter_than_the_model_minimum_are_refused(dataset_dir, tmp_path):
    cfg = _cfg(dataset_dir, tmp_path / "short", "features.crop_frames=3400")
    with pytest.raises(ValueError, match="3440 frames"):
        build_train_loader(cfg, init_distributed("cpu")[0], torch.device("cpu"))
    cfg = _cfg(dataset_dir, tmp_path / "short", "features.min_crop_frames=4000")
    with pytest.raises(ValueError, match="min_crop_frames=4000 must lie in"):
        build_train_loader(cfg, init_distributed("cpu")[0], torch.device("cpu"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ranks, device = init_distributed("cpu")
    state = build_training_state(cfg, device, ranks)
    loader, _ = build_train_loader(cfg, ranks, device)
    stats = train_epoch(state, loader, cfg, torch.Generator().manual_seed(rank), ranks)
    seen = sorted(int(v) for _, _, versions in loader for v in versions)
    torch.save({"state": state.bare_model.state_dict(), "steps": stats["steps"], "seen": seen},
               out_dir / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_process_ddp_keeps_replicas_identical(dataset_dir, tmp_path):
    cfg = _cfg(dataset_dir, tmp_path / "ddp", "val_metadata=''", "cliques_per_batch=3",
               "versions_per_clique=4")  # 10 groups: 4 batches, 2 per rank
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["steps"] == r1["steps"] > 0
    assert r0["seen"] != r1["seen"]  # each rank drew its own share of the epoch
    torch.manual_seed(cfg.seed)
    init = build_training_state(cfg, torch.device("cpu"), init_distributed("cpu")[0]).bare_model
    for name, param in init.named_parameters():
        assert torch.equal(r0["state"][name], r1["state"][name]), name
        assert not torch.equal(param.detach(), r0["state"][name]), name



def _train_cli_failing_with(monkeypatch, tmp_path, message):
    def run_training(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(train, "run_training", run_training)
    return CliRunner().invoke(main, ["train", "--set", f"output_dir={tmp_path}"])


def test_a_dataloader_bus_error_says_how_to_give_the_workers_shared_memory(monkeypatch, tmp_path):
    result = _train_cli_failing_with(
        monkeypatch, tmp_path, "DataLoader worker (pid 4242) is killed by signal: Bus error. "
                               "It is possible that dataloader's workers are out of shared memory.")
    assert result.exit_code == 2
    assert "Bus error" in result.output and "--shm-size" in result.output
    assert "--ipc=host" in result.output and "num_workers=0" in result.output
    other = _train_cli_failing_with(monkeypatch, tmp_path, "CUDA error: an illegal memory access")
    assert isinstance(other.exception, RuntimeError)  # any other error is not disguised


@pytest.mark.parametrize("quiet", [False, True])
def test_train_quiet_shows_no_progress_bar(dataset_dir, tmp_path, quiet):
    paths = [f"train_metadata={dataset_dir / 'light.json.train'}",
             f"val_metadata={dataset_dir / 'light.json.val'}",
             f"features_dir={dataset_dir / 'features'}", f"output_dir={tmp_path / 'run'}",
             "epochs=1"]
    result = CliRunner().invoke(main, ["train", "--config", str(REPO / TINY), "--device", "cpu",
                                       *(["--quiet"] if quiet else []),
                                       *[a for p in paths for a in ("--set", p)]])
    assert result.exit_code == 0, result.output
    assert ("train:" in result.stderr) is not quiet
    assert (tmp_path / "run" / BEST).is_file()


@pytest.mark.parametrize("case, expected", [
    ("unset", "train_metadata is not set: --set train_metadata=PATH"),
    ("no features", "features_dir {root}/nothere: no such folder"),
    ("no val file", "val_metadata {root}/nothere.json: no such file"),
    ("not json", "train_metadata: {root}/bad.json: not Discogs-VI-YT metadata (Expecting value"),
    ("empty features", "0 cliques have two or more versions with features in {root}/empty; 4 needed"),
    ("output under a file", "output_dir {root}/bad.json/run: cannot write the run folder"),
])
def test_train_refuses_unusable_data_in_one_line(dataset_dir, tmp_path, case, expected):
    (tmp_path / "bad.json").write_text("not json\n")
    (tmp_path / "empty").mkdir()
    sets = {"unset": ["train_metadata=''"],
            "no features": [f"features_dir={tmp_path / 'nothere'}"],
            "no val file": [f"val_metadata={tmp_path / 'nothere.json'}"],
            "not json": [f"train_metadata={tmp_path / 'bad.json'}"],
            "empty features": [f"features_dir={tmp_path / 'empty'}"],
            "output under a file": [f"output_dir={tmp_path / 'bad.json' / 'run'}"]}[case]
    cfg_sets = [f"train_metadata={dataset_dir / 'light.json.train'}",
                f"val_metadata={dataset_dir / 'light.json.val'}",
                f"features_dir={dataset_dir / 'features'}", f"output_dir={tmp_path / 'run'}",
                "epochs=1", *sets]
    result = CliRunner().invoke(main, ["train", "--config", str(REPO / TINY), "--device", "cpu",
                                       "--quiet", *[a for s in cfg_sets for a in ("--set", s)]])
    assert result.exit_code == 2, result.output
    assert expected.format(root=tmp_path) in result.output
    assert isinstance(result.exception, SystemExit)  # an error line, not a traceback
    assert not (tmp_path / "run").exists()  # not even a run folder holding only config.yaml


@pytest.mark.parametrize("setting, expected", [
    ("cliques_per_batch=0", "TrainConfig.cliques_per_batch must be >= 1, got 0"),
    ("lr_peak=0", "TrainConfig.lr_peak must be > 0, got 0.0"),
    ("lr_start=.nan", "TrainConfig.lr_start must be >= 0, got nan"),
    ("epochs=-1", "TrainConfig.epochs must be >= 1, got -1"),
    ("seed=-1", "TrainConfig.seed must be >= 0, got -1"),
    ("label_smoothing=2", "TrainConfig.label_smoothing must be in [0, 1], got 2.0"),
    ("model=huge", "TrainConfig.model must be one of mirex, ismir2024, tiny, got 'huge'"),
    ("augment.pitch_prob=2", "augment.pitch_prob=2.0 is not a probability"),
])
def test_train_settings_out_of_range_are_refused_before_the_run_folder(tmp_path, setting,
                                                                        expected):
    """Each of these once ended in a traceback (a division by zero, a NaN loss, numpy's
    refusal of the seed), or trained nothing and exited 0 (epochs -1)."""
    result = CliRunner().invoke(main, ["train", "--config", str(REPO / TINY), "--quiet", "--set",
                                       f"output_dir={tmp_path / 'run'}", "--set", setting])
    assert result.exit_code == 2 and f"error: {expected}" in result.output, result.output
    assert isinstance(result.exception, SystemExit) and not (tmp_path / "run").exists()


# --- several stores, distillation ------------------------------------------------------------


@pytest.fixture(scope="module")
def mix_dir(tmp_path_factory):
    """A second store whose clique ids and youtube ids are the main store's (offset 0), with
    other features: ids collide unless each source keeps its own."""
    root = tmp_path_factory.mktemp("mix")
    _write_split(root, "light.json.train", 6, 4, np.random.default_rng(1))
    return root


def _mix(root, share):
    return (f"mix=[{{features_dir: {root / 'features'}, "
            f"train_metadata: {root / 'light.json.train'}, share: {share}}}]")


def test_two_stores_fill_every_batch_in_their_shares_and_keep_their_ids(dataset_dir, mix_dir,
                                                                         tmp_path):
    cfg = _cfg(dataset_dir, tmp_path / "mix", _mix(mix_dir, 0.25))  # 3 + 1 of P = 4
    loader, sampler = build_train_loader(cfg, Ranks(), torch.device("cpu"))
    dataset = loader.dataset
    assert len(dataset.clique_ids) == len(set(dataset.clique_ids)) == 16
    assert dataset.clique_ids[0] == "main/C-0000000" and dataset.clique_ids[10] == "mix.0/C-0000000"
    main_x, mix_x = (dataset[(dataset.members[c][0], 7)][0] for c in (0, 10))  # one youtube id
    assert dataset.versions[dataset.members[10][0]] == dataset.versions[dataset.members[0][0]]
    assert not torch.equal(main_x, mix_x)  # each read from its own store
    per_batch = []
    for _, labels, _ in loader:
        cliques = labels[::cfg.versions_per_clique].tolist()  # one per group of K
        per_batch.append(sum(dataset.clique_source[c] for c in cliques))
    assert per_batch == [1] * len(sampler) and len(sampler) == 7  # 20 main groups, 3 a batch


def test_training_from_two_stores_runs_resumes_identically_and_validates_where_told(
        dataset_dir, mix_dir, tmp_path, monkeypatch):
    """The small store is the main one here (4 batches an epoch), validated on the other's
    split through ``val_features_dir``."""
    sets = [f"train_metadata={mix_dir / 'light.json.train'}", f"features_dir={mix_dir / 'features'}",
            f"val_metadata={dataset_dir / 'light.json.val'}",
            f"val_features_dir={dataset_dir / 'features'}", f"output_dir={tmp_path / 'cli'}",
            "epochs=2", _mix(dataset_dir, 0.25)]
    result = CliRunner().invoke(main, ["train", "--config", str(REPO / TINY), "--device", "cpu",
                                       "--quiet", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    records = _metrics(tmp_path / "cli")
    assert [r["steps"] for r in records] == [4, 4] and records[0]["val"]["n_queries"] == 8
    cfg = load_yaml(tmp_path / "cli" / "config.yaml")
    assert cfg.mix[0].share == 0.25 and cfg.mix[0].features_dir == str(dataset_dir / "features")
    resumed = _kill_before_last_epoch_and_resume(
        with_overrides(cfg, [f"output_dir={tmp_path / 'killed'}"]), monkeypatch)
    a, b = (torch.load(d / LAST, weights_only=True)["model_state_dict"]
            for d in (tmp_path / "cli", resumed))
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("setting, expected", [
    ("mix=[{share: 1.2}]", "error: TrainConfig.mix.0: share must be in (0, 1], got 1.2"),
    ("mix=[{share: 0.6}, {share: 0.4}]",
     "error: TrainConfig.mix: the shares sum to 1, which leaves the main source"),
    ("mix=[{share: 0.5, store: x}]", "error: TrainConfig.mix.0: unknown MixSource key(s): store"),
    ("mix.0.share=0.5", "error: override 'mix.0.share=0.5': '0' is not a section or a list item"),
    ("mix=[{share: 0.5}]", "error: mix.0.train_metadata is not set: --set mix.0.train_metadata=PATH"),
    ("mix=[{share: 0.5, train_metadata: {root}/light.json.val, features_dir: {root}/features}]",
     ("error: mix.0.train_metadata {root}/light.json.val: 4 cliques have two or more versions "
      "with features in {root}/features; 6 needed")),  # half of each batch of 12
    ("distill_weight=0.5", "error: distill_weight=0.5 needs init_weights"),
])
def test_bad_mix_and_distillation_settings_are_one_error_line(dataset_dir, tmp_path, setting,
                                                              expected):
    sets = [f"train_metadata={dataset_dir / 'light.json.train'}",
            f"features_dir={dataset_dir / 'features'}", f"output_dir={tmp_path / 'run'}",
            "cliques_per_batch=12", "versions_per_clique=1",
            setting.replace("{root}", str(dataset_dir))]
    result = CliRunner().invoke(main, ["train", "--config", str(REPO / TINY), "--device", "cpu",
                                       "--quiet", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 2 and expected.format(root=dataset_dir) in result.output, \
        result.output
    assert isinstance(result.exception, SystemExit) and not (tmp_path / "run").exists()


def _first_batch(cfg):
    loader, _ = build_train_loader(cfg, Ranks(), torch.device("cpu"))
    return next(iter(loader))


def test_distill_weight_zero_loads_no_teacher_and_leaves_the_loss_bit_identical(dataset_dir,
                                                                                tmp_path):
    cfg = _cfg(dataset_dir, tmp_path / "d0", "distill_weight=0")
    batch = _first_batch(cfg)
    state = build_training_state(cfg, torch.device("cpu"), Ranks())
    assert state.teacher is None
    reference = build_training_state(cfg, torch.device("cpu"), Ranks()).model.train()
    x, labels, versions = batch
    emb = reference(x.unsqueeze(1).contiguous(memory_format=torch.channels_last))
    expected, _ = triplet_loss(emb, labels, cfg.margin, versions, torch.Generator().manual_seed(3))
    state.model.train()
    stats = train.training_step(state, batch, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(stats["loss"], expected.detach()) and "distill_loss" not in stats


def test_distillation_pulls_the_one_pass_embedding_toward_the_teachers_three_tempi(
        dataset_dir, tiny_package, tmp_path):
    cfg = _cfg(dataset_dir, tmp_path / "d1", f"init_weights={tiny_package}",
               "distill_weight=10", "margin=0")
    batch = _first_batch(cfg)
    state = build_training_state(cfg, torch.device("cpu"), Ranks())
    assert not state.teacher.training and state.teacher_sha256 == state.init_sha256
    state.model.train()
    teacher_before = {k: v.clone() for k, v in state.teacher.state_dict().items()}
    losses = [train.training_step(state, batch, cfg, torch.Generator().manual_seed(0))
              ["distill_loss"].item() for _ in range(6)]
    assert losses[0] > 0.01 and losses[-1] < 0.5 * losses[0], losses
    for name, tensor in state.teacher.state_dict().items():  # the teacher stays frozen
        assert torch.equal(tensor, teacher_before[name]), name
    checkpoint.save_checkpoint(tmp_path / LAST, checkpoint.checkpoint_payload(
        dataclasses.replace(state, init_sha256="f" * 64), cfg, {"loss": 0.5}, {}))
    with pytest.raises(WeightsError, match="is not the model this run started from"):
        checkpoint.restore_checkpoint(tmp_path / LAST, state, cfg)


def test_distill_sources_distils_only_the_crops_of_the_named_source(dataset_dir, mix_dir,
                                                                   tiny_package, tmp_path):
    cfg = _cfg(dataset_dir, tmp_path / "d2", f"init_weights={tiny_package}", _mix(mix_dir, 0.25),
               "distill_weight=1", "distill_sources=[main]", "teacher_tempo_scales=[1.0]")
    loader, _ = build_train_loader(cfg, Ranks(), torch.device("cpu"))
    state = build_training_state(cfg, torch.device("cpu"), Ranks(),
                                 clique_source=loader.dataset.clique_source)
    assert state.distilled.tolist() == [True] * 10 + [False] * 6  # 10 main, 6 mix.0 cliques
    batch = next(iter(loader))
    x, labels, _ = batch
    main_rows = state.distilled[labels]
    assert 0 < int(main_rows.sum()) < len(labels)
    torch.manual_seed(0)
    with torch.no_grad():  # the student starts as the teacher: move it away
        for param in state.model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    state.model.eval()  # BatchNorm on running statistics: the same embedding in both passes
    x = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        emb = state.model(x)
        target = teacher_embeddings(state.teacher, x, cfg.teacher_tempo_scales)
    stats = train.training_step(state, batch, cfg, torch.Generator().manual_seed(0))
    expected = distillation_loss(emb[main_rows], target[main_rows])
    everywhere = distillation_loss(emb, target)
    assert torch.allclose(stats["distill_loss"], expected, atol=1e-6)
    assert expected > 1e-3 and abs(expected - everywhere) > 1e-4  # the mix.0 rows differ
    only_mix = with_overrides(cfg, ["distill_sources=[mix.0]"])
    assert distilled_cliques(only_mix, loader.dataset.clique_source, torch.device("cpu")).tolist() \
        == [False] * 10 + [True] * 6
    with pytest.raises(ValueError, match="needs the source of every training clique"):
        distilled_cliques(only_mix, [], torch.device("cpu"))
    all_main = torch.zeros(len(labels), dtype=torch.long)  # a batch with no mix.0 crop
    stats = train.training_step(dataclasses.replace(state, distilled=distilled_cliques(
        only_mix, loader.dataset.clique_source, torch.device("cpu"))), (batch[0], all_main,
                                                                           batch[2]), only_mix,
                                torch.Generator().manual_seed(0))
    assert "distill_loss" not in stats and torch.isfinite(stats["loss"])
