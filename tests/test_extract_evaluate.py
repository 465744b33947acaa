"""Dataset extraction (resumable, atomic, errors logged) and the evaluate command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import leave_temporaries
from mirex_vi.cli import main
from mirex_vi.config import FeatureConfig
from mirex_vi.features.frontend import pool_cqt
from mirex_vi.features.layout import has_feature, load_feature, save_feature
from mirex_vi.features.pooled import PooledStore
from mirex_vi.synth import melody, write_audio

IDS = {"C-01": ["aaaaaaaaaa1", "aaaaaaaaaa2"], "C-02": ["bbbbbbbbbb1", "bbbbbbbbbb2"]}


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


@pytest.fixture()
def dataset(tmp_path) -> tuple[Path, Path]:
    """A Discogs-VI-YT-style light JSON with audio under root/audio/<id[:2]>/<id>.flac;
    one version's audio is broken."""
    root = tmp_path / "root"
    meta = {}
    for c, (clique, ids) in enumerate(IDS.items()):
        meta[clique] = [{"version_id": f"V-{c}{v}", "youtube_id": yid, "track_title": "t"}
                        for v, yid in enumerate(ids)]
        for v, yid in enumerate(ids):
            notes = [60 + c * 5 + v * 2 + k % 5 for k in range(16)]
            write_audio(root / "audio" / yid[:2] / f"{yid}.flac", melody(notes))
    (root / "audio" / "bb" / "bbbbbbbbbb2.flac").write_bytes(b"broken")
    path = tmp_path / "set-light.json"
    path.write_text(json.dumps(meta))
    return path, root


def test_extract_writes_authors_layout_logs_errors_and_resumes(tmp_path, dataset):
    meta, root = dataset
    out = tmp_path / "features"
    code, text = invoke("extract", out, "--metadata", meta, "--audio-root", root,
                        "--workers", "1", "--quiet")
    assert code == 0, text
    assert "extracted 3, already there 0, failed 1" in text
    for yid in ("aaaaaaaaaa1", "aaaaaaaaaa2", "bbbbbbbbbb1"):
        cqt = load_feature(out, yid)
        assert cqt.shape[1] == 84 and cqt.dtype == np.float16 and np.asarray(cqt).max() > 0
        assert tuple(np.load(out / yid[:2] / f"{yid}.npy")) == cqt.shape
    assert not has_feature(out, "bbbbbbbbbb2")  # never a zero-filled feature file
    assert "bbbbbbbbbb2" in (out / "extract_errors.tsv").read_text()
    assert not list(out.rglob("*.tmp"))
    stale, fresh = leave_temporaries(out / "aa")
    code, text = invoke("extract", out, "--metadata", meta, "--audio-root", root,
                        "--workers", "2", "--quiet")
    assert code == 0 and "extracted 0, already there 3, failed 1" in text
    assert not stale.exists() and fresh.exists()  # a killed run's leftovers are swept


def test_extract_pooled_equals_the_layout_pooled_and_evaluates_alike(tmp_path, dataset):
    meta, root = dataset
    layout, store, converted = tmp_path / "layout", tmp_path / "store", tmp_path / "converted"
    assert invoke("extract", layout, "--metadata", meta, "--audio-root", root, "--workers", "1",
                  "--quiet")[0] == 0
    code, text = invoke("extract", store, "--metadata", meta, "--audio-root", root,
                        "--pooled", "f16", "--workers", "2", "--quiet")
    assert code == 0 and "extracted 3, already there 0, failed 1" in text, text
    assert "bbbbbbbbbb2" in (store / "extract_errors.tsv").read_text()
    code, text = invoke("extract", converted, "--from-features", layout, "--metadata", meta,
                        "--pooled", "f16")
    assert code == 0 and "wrote 3 of 4 versions" in text, text
    extracted, from_layout = PooledStore.open(store), PooledStore.open(converted)
    for yid in ("aaaaaaaaaa1", "aaaaaaaaaa2", "bbbbbbbbbb1"):
        expected = pool_cqt(load_feature(layout, yid), 20)  # (T', 84)
        np.testing.assert_array_equal(extracted.pooled(yid), from_layout.pooled(yid))
        np.testing.assert_allclose(extracted.pooled(yid), expected, rtol=2 ** -10, atol=1e-7)
    code, text = invoke("extract", store, "--metadata", meta, "--audio-root", root,
                        "--pooled", "f16", "--quiet")  # a finished store: nothing to do
    assert code == 0 and "extracted 0, already there 3, failed 1" in text, text
    figures = [invoke("evaluate", "--metadata", meta, "--features-dir", d, "--device", "cpu",
                      "--quiet")[1] for d in (store, converted)]
    assert "MAP" in figures[0] and figures[0] == figures[1]


def test_extract_from_plain_list(tmp_path, tracks):
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(str(p) for p in tracks))
    code, text = invoke("extract", tmp_path / "f", "--list", lst, "--workers", "1", "--quiet")
    assert code == 0 and "extracted 4" in text
    assert has_feature(tmp_path / "f", "a up 3")


def test_extract_pooled_where_every_track_fails_says_where_the_reasons_are(tmp_path):
    broken = [tmp_path / "x.wav", tmp_path / "y.flac"]
    for path in broken:
        path.write_bytes(b"not audio")
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(map(str, broken)))
    out = tmp_path / "store"
    code, text = invoke("extract", out, "--list", lst, "--pooled", "u8", "--workers", "1", "--quiet")
    assert code == 1 and "Traceback" not in text, text
    assert f"extracted 0, already there 0, failed 2 (reasons in {out / 'extract_errors.tsv'})" in text
    assert not (out / "pooled.u8.npy").exists() and not (out / "pooled.index.tsv").exists()
    assert sorted(line.split("\t")[0] for line in (out / "extract_errors.tsv").read_text().splitlines()) == ["x", "y"]


def test_extract_interrupted_leaves_no_partial_files(tmp_path, dataset):
    meta, root = dataset
    out = tmp_path / "features"
    cmd = [sys.executable, "-m", "mirex_vi", "extract", str(out), "--metadata", str(meta),
           "--audio-root", str(root), "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not list(out.rglob("*.npy")):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    for mm in out.rglob("*.mm"):  # whatever exists is complete
        load_feature(out, mm.stem)
    assert not list(out.rglob("*.tmp"))


def test_evaluate_features_matrix_and_labels(tmp_path, dataset, tiny_package):
    meta, root = dataset
    features = tmp_path / "features"
    invoke("extract", features, "--metadata", meta, "--audio-root", root, "--workers", "1", "--quiet")
    shutil.copy(root / "audio" / "bb" / "bbbbbbbbbb1.flac", root / "audio" / "bb" / "bbbbbbbbbb2.flac")
    invoke("extract", features, "--metadata", meta, "--audio-root", root, "--workers", "1", "--quiet")

    code, text = invoke("evaluate", "--metadata", meta, "--features-dir", features,
                        "--weights", tiny_package, "--json", tmp_path / "f.json", "--quiet")
    assert code == 0, text
    figures = json.loads((tmp_path / "f.json").read_text())
    assert set(figures) == {"map", "mr1", "mrr", "top1_rate", "top10_count", "p_at_10", "n_queries"}
    assert figures["n_queries"] == 4 and 0 < figures["map"] <= 1
    assert "MAP" in text and "MR1" in text

    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"root/audio/{y[:2]}/{y}.flac\t{c}\n" for c, ys in IDS.items() for y in ys))
    code, text = invoke("evaluate", "--labels", labels, "--weights", tiny_package,
                        "--json", tmp_path / "a.json", "--workers", "1", "--quiet")
    assert code == 0, text
    from_audio = json.loads((tmp_path / "a.json").read_text())

    collection = tmp_path / "collection.txt"
    collection.write_text("".join(line.split("\t")[0] + "\n" for line in labels.read_text().splitlines()))
    code, text = invoke("identify", collection, collection, tmp_path / "out.txt", "--weights",
                        tiny_package, "--workers", "1", "--quiet")
    assert code == 0, text
    code, text = invoke("evaluate", "--matrix", tmp_path / "out.txt", "--labels", labels,
                        "--json", tmp_path / "m.json", "--plot", tmp_path / "plots")
    assert code == 0, text
    from_matrix = json.loads((tmp_path / "m.json").read_text())
    for key in from_audio:
        assert from_matrix[key] == pytest.approx(from_audio[key], abs=1e-6), key
    assert sorted(p.suffix for p in (tmp_path / "plots").iterdir()) == [".png", ".png"]


def test_evaluate_excerpt_scores_the_first_seconds_of_each_feature(tmp_path, tiny_package):
    """``--excerpt S`` gives the figures of features cut to their first round(S * 43.07)
    frames: here a clique's versions share only those frames, so only the excerpt finds them."""
    rng = np.random.default_rng(0)
    frames = round(30 * FeatureConfig().frame_rate)
    whole, cut, meta = tmp_path / "whole", tmp_path / "cut", {}
    for c in range(3):
        shared = rng.random((frames, 84))
        meta[f"C{c}"] = []
        for v in range(2):
            yid = f"c{c}v{v}-------"
            cqt = np.concatenate([shared, 10 * rng.random((3000, 84))]).astype(np.float16)
            save_feature(whole, yid, cqt)
            save_feature(cut, yid, cqt[:frames])
            meta[f"C{c}"].append({"version_id": f"V{c}{v}", "youtube_id": yid})
    path = tmp_path / "set-light.json"
    path.write_text(json.dumps(meta))
    figures = {}
    for name, folder, excerpt in (("excerpt", whole, ["--excerpt", 30]), ("cut", cut, []),
                                  ("whole", whole, [])):
        code, text = invoke("evaluate", "--metadata", path, "--features-dir", folder, *excerpt,
                            "--weights", tiny_package, "--json", tmp_path / f"{name}.json", "--quiet")
        assert code == 0, text
        figures[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert figures["excerpt"] == figures["cut"]
    assert figures["excerpt"]["map"] == 1.0 > figures["whole"]["map"]
    code, text = invoke("evaluate", "--labels", path, "--excerpt", 30)
    assert code == 2 and "--excerpt needs --metadata" in text


def test_evaluate_matrix_requires_every_track_labelled(tmp_path, tracks, tiny_package):
    collection = tmp_path / "c.txt"
    collection.write_text("\n".join(str(p) for p in tracks))
    invoke("identify", collection, collection, tmp_path / "out.txt", "--weights", tiny_package,
           "--workers", "1", "--quiet")
    labels = tmp_path / "labels.tsv"
    labels.write_text(f"{tracks[0]}\tA\n{tracks[1]}\tA\n")
    code, text = invoke("evaluate", "--matrix", tmp_path / "out.txt", "--labels", labels)
    assert code == 2 and "no label for 2 track(s)" in text


def test_extract_train_resume_export_identify_chain(tmp_path, dataset):
    """The researcher's path end to end: audio -> features -> train -> resume -> package -> MIREX."""
    meta, root = dataset
    shutil.copy(root / "audio" / "bb" / "bbbbbbbbbb1.flac", root / "audio" / "bb" / "bbbbbbbbbb2.flac")
    features, run = tmp_path / "features", tmp_path / "run"
    assert invoke("extract", features, "--metadata", meta, "--audio-root", root,
                  "--workers", "1", "--quiet")[0] == 0
    config = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
    common = ["train", "--config", config, "--device", "cpu", "--quiet",
              "--set", f"train_metadata={meta}", "--set", f"val_metadata={meta}",
              "--set", f"features_dir={features}", "--set", f"output_dir={run}",
              "--set", "cliques_per_batch=2", "--set", "num_workers=0"]
    code, text = invoke(*common, "--set", "epochs=2")
    assert code == 0, text
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    code, text = invoke(*common, "--set", "epochs=3", "--resume")
    assert code == 0, text
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    code, text = invoke("weights", "export", run / "best.pt", "--name", "mine", "--root", tmp_path)
    assert code == 0, text
    collection = tmp_path / "c.txt"
    collection.write_text("".join(f"{p}\n" for p in sorted((root / "audio").rglob("*.flac"))))
    code, text = invoke("identify", collection, collection, tmp_path / "out.txt", "--weights",
                        tmp_path / "mine", "--workers", "1", "--quiet")
    assert code == 0, text
    assert "weights mine" in (tmp_path / "out.txt").read_text().splitlines()[0]


def write_matrix(folder: Path, newline: str = "\n", bom: str = "") -> tuple[Path, Path]:
    """A hand-made matrix of four tracks named relative to its folder, two cliques, and
    their labels beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"t{i}.wav" for i in range(4)]
    d = np.array([[0, .2, .9, .8], [.2, 0, .7, .9], [.9, .7, 0, .1], [.8, .9, .1, 0]])
    lines = ["system", *(f"{i}\t{n}" for i, n in enumerate(names, 1)), "Q/R\t1\t2\t3\t4"]
    lines += [f"{i}\t" + "\t".join(f"{v:.6f}" for v in row) for i, row in enumerate(d, 1)]
    matrix = folder / "m.txt"
    matrix.write_bytes((bom + newline.join(lines) + newline).encode())
    labels = folder / "labels.tsv"
    labels.write_text("".join(f"{n}\t{'AABB'[i]}\n" for i, n in enumerate(names)))
    return matrix, labels


def test_evaluate_matrix_paths_are_relative_to_the_matrix_and_crlf_bom_are_read(tmp_path):
    figures = {}
    for label, newline, bom in (("lf", "\n", ""), ("crlf", "\r\n", "\ufeff")):
        matrix, labels = write_matrix(tmp_path / label / "elsewhere", newline, bom)
        code, text = invoke("evaluate", "--matrix", matrix, "--labels", labels,
                            "--json", tmp_path / f"{label}.json")
        assert code == 0, text
        figures[label] = json.loads((tmp_path / f"{label}.json").read_text())
    assert figures["crlf"] == figures["lf"] and figures["lf"]["map"] == 1.0


def test_evaluate_checks_the_json_path_before_the_work(tmp_path):
    matrix, labels = write_matrix(tmp_path)
    for json_path, message in ((tmp_path / "missing" / "f.json", "does not exist"),
                               (matrix, "output is also an input"),
                               (labels, "output is also an input")):
        code, text = invoke("evaluate", "--matrix", matrix, "--labels", labels, "--json", json_path)
        assert code == 2 and message in text and "MAP" not in text, text
    assert matrix.read_text().startswith("system\n") and labels.read_text().startswith("t0.wav")


def test_evaluate_checks_the_plot_folder_and_matplotlib_before_the_work(tmp_path, monkeypatch):
    """Both failed after the work: a folder under a file exited 3, a missing matplotlib
    ended in an ImportError traceback."""
    matrix, labels = write_matrix(tmp_path)
    code, text = invoke("evaluate", "--matrix", matrix, "--labels", labels, "--plot",
                        tmp_path / "m.txt" / "plots")
    assert code == 2 and f"cannot create the plot folder ({matrix} is a file" in text, text
    assert "MAP" not in text
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    code, text = invoke("evaluate", "--matrix", matrix, "--labels", labels, "--plot", tmp_path / "p")
    assert code == 2 and "writing plots needs matplotlib" in text and "MAP" not in text, text


def test_evaluate_that_cannot_write_its_json_exits_3_after_the_figures(tmp_path, monkeypatch):
    import mirex_vi.eval.evaluate

    from conftest import DiskFull

    matrix, labels = write_matrix(tmp_path)
    monkeypatch.setattr(mirex_vi.eval.evaluate, "atomic_open", DiskFull)
    code, text = invoke("evaluate", "--matrix", matrix, "--labels", labels, "--json", tmp_path / "f.json")
    assert code == 3 and "MAP" in text and "No space left on device" in text, text
    assert "Traceback" not in text


def test_evaluate_refuses_a_path_with_two_cliques_naming_both_lines(tmp_path):
    matrix, labels = write_matrix(tmp_path)
    labels.write_text(labels.read_text() + "t1.wav\tA\n./t0.wav\tB\n")  # a repeat is fine
    code, text = invoke("evaluate", "--matrix", matrix, "--labels", labels)
    assert code == 2 and "line 6: ./t0.wav is in clique 'B', but line 1 puts it in 'A'" in text, text


def test_extract_refuses_a_list_name_that_would_store_features_above_the_folder(tmp_path, tracks):
    name = "..x.wav"  # the layout's folder for it would be id[:2] = ".."
    odd = tmp_path / "in" / name
    odd.parent.mkdir()
    odd.write_bytes(tracks[0].read_bytes())
    lst = tmp_path / "in" / "list.txt"
    lst.write_text(f"{tracks[1]}\n{odd}\n")
    for pooled in ([], ["--pooled", "u8"]):
        code, text = invoke("extract", tmp_path / "in" / "f", "--list", lst, "--workers", "1",
                            "--quiet", *pooled)
        assert code == 2 and "cannot name features" in text and repr(odd.stem) in text, text
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == sorted(["list.txt", name])
