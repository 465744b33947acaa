"""What the corpus tests need to render: music21 and the rendering tools, as skip markers,
and the options of the small corpus that the ``small_corpus`` fixture (conftest) makes."""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest

from mirex_vi.corpus import soundfonts

HAVE_MUSIC21 = importlib.util.find_spec("music21") is not None
HAVE_SYNTH = all(shutil.which(tool) for tool in ("fluidsynth", "ffmpeg")) and not soundfonts.missing(
    soundfonts.TRAINING + soundfonts.CLASSIC)
needs_music21 = pytest.mark.skipif(not HAVE_MUSIC21, reason="music21 not installed (pip install mirex-vi[corpus])")
needs_render = pytest.mark.skipif(
    not (HAVE_MUSIC21 and HAVE_SYNTH),
    reason="needs music21, fluidsynth, ffmpeg and the training soundfonts "
           "(bash tools/setup.sh; pip install mirex-vi[corpus])")

SMALL = dict(n_works=2, versions_per_work=2, seconds=4.0, seed=5, jobs=1, quiet=True,
             collections=("essenFolksong",))
METADATA = "Synth-VI-YT-light.json"


def audio_digests(root: Path, cliques: dict) -> dict[str, str]:
    """youtube_id -> sha256 of its audio file under ``root``, for every version of ``cliques``."""
    return {v["youtube_id"]: hashlib.sha256((root / v["audio_path"]).read_bytes()).hexdigest()
            for vs in cliques.values() for v in vs}
