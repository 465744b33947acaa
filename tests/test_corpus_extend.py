"""Tests of ``mirex-vi corpus --extend``: a kept corpus's cliques gain versions drawn by the
current generator and the corpus gains new works, with ids that never collide, reproducibly,
and never at the cost of the metadata they extend.

Rendering tests need music21, fluidsynth, ffmpeg and the training soundfonts
(``bash tools/setup.sh``); without them they are skipped with that reason.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mirex_vi.cli import main as cli_main
from mirex_vi.corpus.catalogue import WorkRef, corpus_root
from mirex_vi.corpus.driver import pick_works
from mirex_vi.corpus.extend import extend
from mirex_vi.corpus.scores import load_work
from render_support import METADATA, audio_digests, needs_music21, needs_render


@needs_render
def test_every_clique_gains_new_versions_of_its_work(small_corpus, tmp_path):
    kept = json.loads((small_corpus / METADATA).read_text())
    extended = extend(small_corpus / METADATA, tmp_path, versions_per_work=3, seed=5, seconds=4.0,
                      quiet=True)
    assert extended == json.loads((tmp_path / METADATA).read_text())
    assert set(extended) == set(kept)
    kept_ids = {v["youtube_id"] for vs in kept.values() for v in vs}
    added = {}
    for clique, versions in extended.items():
        assert versions[:2] == kept[clique]
        assert len(versions) == 3
        record = versions[2]
        assert record["youtube_id"] not in kept_ids
        assert record["version_id"] == f"{clique}-V3"
        assert record["source"] == kept[clique][0]["source"]
        assert record["generator_version"] == 2
        added[clique] = [record]
    # The added versions are as reproducible as the corpus: extending again gives the same.
    again = extend(small_corpus / METADATA, tmp_path / "again", versions_per_work=3, seed=5,
                   seconds=4.0, quiet=True)
    assert again == extended
    assert audio_digests(tmp_path / "again", added) == audio_digests(tmp_path, added)
    assert not any((tmp_path / v["audio_path"]).exists() for vs in kept.values() for v in vs)


@needs_render
def test_wrong_seed_or_nothing_to_add_is_refused_before_rendering(small_corpus, tmp_path):
    with pytest.raises(ValueError, match="not a version of .* under --seed 6"):
        extend(small_corpus / METADATA, tmp_path / "a", versions_per_work=3, seed=6, seconds=4.0, quiet=True)
    with pytest.raises(ValueError, match="already has 2 or more versions"):
        extend(small_corpus / METADATA, tmp_path / "b", versions_per_work=2, seed=5, seconds=4.0, quiet=True)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


@needs_render
def test_new_works_join_as_new_cliques_and_kept_cliques_keep_their_splits(small_corpus, tmp_path):
    kept = json.loads((small_corpus / METADATA).read_text())
    kept_splits = {s: json.loads((small_corpus / f"{METADATA}.{s}").read_text()) for s in ("train", "val", "test")}
    grown = extend(small_corpus / METADATA, tmp_path, versions_per_work=2, seed=5, seconds=4.0,
                   quiet=True, works=5, fractions=(0.4, 0.3, 0.3), collections=("essenFolksong",))
    assert grown == json.loads((tmp_path / METADATA).read_text())
    new = {c: vs for c, vs in grown.items() if c not in kept}
    assert sorted(new) == ["C-0000003", "C-0000004", "C-0000005"]
    assert all(grown[c] == kept[c] for c in kept)
    kept_sources = {vs[0]["source"] for vs in kept.values()}
    new_sources = [vs[0]["source"] for vs in new.values()]
    assert len(set(new_sources)) == 3 and not kept_sources & set(new_sources)
    assert all(source.startswith("music21:essenFolksong/") for source in new_sources)
    for clique, versions in new.items():
        assert [v["version_id"] for v in versions] == [f"{clique}-V1", f"{clique}-V2"]
        assert {v["source"] for v in versions} == {versions[0]["source"]}
        assert all(v["generator_version"] == 2 and (tmp_path / v["audio_path"]).is_file() for v in versions)
    splits = {s: json.loads((tmp_path / f"{METADATA}.{s}").read_text()) for s in ("train", "val", "test")}
    assert sorted(c for part in splits.values() for c in part) == sorted(grown)
    assert all(set(kept_splits[s]) <= set(splits[s]) for s in splits)
    assert all(len(set(splits[s]) & set(new)) == 1 for s in splits)  # 3 new cliques: one per split
    assert not any((tmp_path / v["audio_path"]).exists() for vs in kept.values() for v in vs)


@needs_render
def test_a_version_that_fails_to_render_is_left_out_not_fatal(small_corpus, tmp_path, monkeypatch):
    import mirex_vi.corpus.driver as driver

    failing = {("C-0000001", 2), ("C-0000003", 0), ("C-0000003", 1)}  # (clique, version index)
    render = driver.render_version
    monkeypatch.setattr(driver, "render_version",
                        lambda task: None if (task.clique_id, task.version) in failing else render(task))
    kept = json.loads((small_corpus / METADATA).read_text())
    grown = extend(small_corpus / METADATA, tmp_path, versions_per_work=3, seed=5, seconds=4.0,
                   quiet=True, works=3)
    assert grown["C-0000001"] == kept["C-0000001"]  # its added version failed: kept ones stay
    assert len(grown["C-0000002"]) == 3
    assert "C-0000003" not in grown  # one version of three rendered: dropped
    splits = [json.loads((tmp_path / f"{METADATA}.{s}").read_text()) for s in ("train", "val", "test")]
    assert sorted(c for part in splits for c in part) == ["C-0000001", "C-0000002"]


@needs_render
def test_adding_works_to_part_of_a_corpus_is_refused_before_rendering(small_corpus, tmp_path):
    # A split file alone: a new work could repeat one of the held-out cliques it lacks.
    with pytest.raises(ValueError, match="adding works needs a whole corpus"):
        extend(small_corpus / f"{METADATA}.train", tmp_path / "a", versions_per_work=2, seed=5,
               seconds=4.0, quiet=True, works=5)
    assert not (tmp_path / "a").exists()


@needs_music21
def test_a_work_whose_melody_a_corpus_has_is_not_picked_again():
    root = corpus_root()
    refs = [WorkRef("essenFolksong/altdeu10.abc", i) for i in range(3)]
    works = [load_work(ref, root) for ref in refs]
    assert len({w.fingerprint() for w in works}) == 3
    picked = pick_works(refs, 1, root, map, quiet=True, taken=[works[0]])
    assert [w.ref for w in picked] == [refs[1]]


def test_the_extended_metadata_is_never_replaced(tmp_path):
    metadata = tmp_path / METADATA
    text = json.dumps({"C-1": [{"youtube_id": "x", "version_id": "V-1", "source": "music21:a.abc#0"}]})
    metadata.write_text(text)
    with pytest.raises(ValueError, match="would replace the metadata it extends"):
        extend(metadata, tmp_path, versions_per_work=3, seed=5, seconds=4.0, quiet=True)
    assert metadata.read_text() == text


def test_nothing_to_add_is_refused_before_any_score_is_parsed(tmp_path):
    # The work does not exist: reaching the parser would fail with another message.
    metadata = tmp_path / METADATA
    metadata.write_text(json.dumps({"C-1": [{"youtube_id": "x", "version_id": "V-1",
                                             "source": "music21:none/such.abc#0"}]}))
    with pytest.raises(ValueError, match="already has 1 or more versions and no work is added"):
        extend(metadata, tmp_path / "out", versions_per_work=1, seed=5, seconds=4.0, quiet=True)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_extend_with_another_pool(tmp_path):
    metadata = tmp_path / "m.json"
    metadata.write_text("{}")
    result = CliRunner().invoke(cli_main, ["corpus", str(tmp_path / "out"), "--extend", str(metadata),
                                           "--ood"])
    assert result.exit_code == 2
    assert "--extend adds training versions" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
