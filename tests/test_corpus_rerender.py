"""Tests of ``mirex-vi corpus --rerender``: the audio of a corpus kept as metadata (and
features) is rendered again, byte for byte, and only with the options that made it.

Rendering tests need music21, fluidsynth, ffmpeg and the training soundfonts
(``bash tools/setup.sh``); without them they are skipped with that reason.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mirex_vi.cli import main as cli_main
from mirex_vi.corpus.catalogue import WorkRef
from mirex_vi.corpus.rerender import rerender
from render_support import METADATA, audio_digests, needs_music21, needs_render

REPO = Path(__file__).resolve().parents[1]


def test_a_source_names_its_work():
    for source in ("music21:essenFolksong/han1.abc#12", "music21:bach/bwv66.6.mxl"):
        assert WorkRef.from_source(source).source == source
    assert WorkRef.from_source("music21:bach/bwv66.6.mxl").number is None
    with pytest.raises(ValueError, match="not a music21 score"):
        WorkRef.from_source("youtube:abc")


@needs_render
def test_rerender_gives_the_same_audio_and_metadata(small_corpus, tmp_path):
    stored = json.loads((small_corpus / METADATA).read_text())
    cliques = rerender(small_corpus / METADATA, tmp_path, seed=5, seconds=4.0, quiet=True)
    assert cliques == stored
    assert json.loads((tmp_path / METADATA).read_text()) == stored
    assert audio_digests(tmp_path, stored) == audio_digests(small_corpus, stored)


@needs_render
def test_version_1_records_render_as_version_1_did(tmp_path):
    """The bundled demo's records carry no generator version; two of its cliques re-render
    to its files byte for byte."""
    demo = REPO / "examples" / "demo"
    bundled = json.loads((demo / "demo-light.json").read_text())
    two = {c: bundled[c] for c in list(bundled)[:2]}
    assert all("generator_version" not in v for vs in two.values() for v in vs)
    (tmp_path / "two.json").write_text(json.dumps(two))
    rerender(tmp_path / "two.json", tmp_path / "out", seed=2024, seconds=20.0, demo=True, quiet=True)
    assert audio_digests(tmp_path / "out", two) == audio_digests(demo, two)


@needs_render
@pytest.mark.parametrize("options, message", [
    (dict(seed=6, seconds=4.0), "not a version of .* under --seed 6"),
    (dict(seed=5, seconds=5.0), "would be .*, its record says"),
])
def test_other_options_are_refused_before_rendering(small_corpus, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        rerender(small_corpus / METADATA, tmp_path / "out", quiet=True, **options)
    assert not list(tmp_path.rglob("*.flac")) and not (tmp_path / "out" / METADATA).exists()


@needs_music21
@pytest.mark.parametrize("text, message", [
    ("not json", "not readable as JSON metadata"),
    ('{"C-1": [{"youtube_id": "x"}]}', "not a corpus's light-JSON metadata"),
    ("[]", "not a corpus's light-JSON metadata"),
])
def test_cli_refuses_what_is_not_corpus_metadata(tmp_path, text, message):
    (tmp_path / "m.json").write_text(text)
    result = CliRunner().invoke(cli_main, ["corpus", str(tmp_path / "out"), "--rerender",
                                           str(tmp_path / "m.json"), "--quiet"])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not list(tmp_path.rglob("*.flac"))


@needs_render
def test_cli_rerenders_what_the_function_does(small_corpus, tmp_path):
    result = CliRunner().invoke(cli_main, [
        "corpus", str(tmp_path), "--rerender", str(small_corpus / METADATA), "--seconds", "4",
        "--seed", "5", "--jobs", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    stored = json.loads((small_corpus / METADATA).read_text())
    assert audio_digests(tmp_path, stored) == audio_digests(small_corpus, stored)
