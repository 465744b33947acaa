"""Tests of ``mirex-vi corpus --extend``: a kept corpus's cliques gain versions drawn by the
current generator, with ids that never collide, reproducibly, and never at the cost of the
metadata they extend.

Rendering tests need music21, fluidsynth, ffmpeg and the training soundfonts
(``bash tools/setup.sh``); without them they are skipped with that reason.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mirex_vi.cli import main as cli_main
from mirex_vi.corpus.extend import extend
from render_support import METADATA, audio_digests, needs_render


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


def test_the_extended_metadata_is_never_replaced(tmp_path):
    metadata = tmp_path / METADATA
    text = json.dumps({"C-1": [{"youtube_id": "x", "version_id": "V-1", "source": "music21:a.abc#0"}]})
    metadata.write_text(text)
    with pytest.raises(ValueError, match="would replace the metadata it extends"):
        extend(metadata, tmp_path, versions_per_work=3, seed=5, seconds=4.0, quiet=True)
    assert metadata.read_text() == text


def test_cli_refuses_extend_with_another_pool(tmp_path):
    metadata = tmp_path / "m.json"
    metadata.write_text("{}")
    result = CliRunner().invoke(cli_main, ["corpus", str(tmp_path / "out"), "--extend", str(metadata),
                                           "--ood"])
    assert result.exit_code == 2
    assert "--extend adds training versions" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
