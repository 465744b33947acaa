"""The General MIDI soundfonts Debian packages, which corpora draw from, and the held-out one.

Names are relative to ``SOUNDFONT_ROOT``. Every GM soundfont in Debian that fluidsynth can
play is listed; the MuseScore General soundfont, in all three of its packagings, is kept out
of every training corpus and renders only the out-of-distribution set (``--ood``).
``fluid-soundfont-gs`` is not used: it ships only GS variation banks and sound effects (no
bank 0), so on its own it renders General MIDI programs as silence.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

SOUNDFONT_ROOT = Path("/usr/share/sounds")

# file -> the Debian package that installs it
PACKAGES = {
    "sf2/FluidR3_GM.sf2": "fluid-soundfont-gm",
    "sf2/TimGM6mb.sf2": "timgm6mb-soundfont",
    "sf3/FluidR3Mono_GM.sf3": "fluidr3mono-gm-soundfont",
    "sf2/OPL-3_FM_128M.sf2": "opl3-soundfont",
    "sf2/sf_GMbank.sf2": "csound-soundfont",
    "sf2/MuseScore_General_Full.sf2": "musescore-general-soundfont-lossless",
    "sf3/MuseScore_General_Full.sf3": "musescore-general-soundfont",
    "sf3/MuseScore_General_Lite.sf3": "musescore-general-soundfont-small",
}

# (file, share of the versions) pools, in the order a uniform draw walks them
CLASSIC = (("sf2/TimGM6mb.sf2", 0.4), ("sf2/FluidR3_GM.sf2", 0.6))  # generator version 1's
TRAINING = (("sf2/TimGM6mb.sf2", 0.2), ("sf2/FluidR3_GM.sf2", 0.3), ("sf3/FluidR3Mono_GM.sf3", 0.2),
            ("sf2/OPL-3_FM_128M.sf2", 0.15), ("sf2/sf_GMbank.sf2", 0.15))
HELD_OUT = (("sf2/MuseScore_General_Full.sf2", 0.4), ("sf3/MuseScore_General_Full.sf3", 0.3),
            ("sf3/MuseScore_General_Lite.sf3", 0.3))


def pick(pool: Sequence[tuple[str, float]], u: float) -> str:
    """The soundfont that a uniform draw ``u`` in [0, 1) lands on, by cumulative share."""
    total = sum(share for _, share in pool)
    edge = 0.0
    for name, share in pool:
        edge += share / total
        if u < edge:
            return name
    return pool[-1][0]


def missing(pool: Sequence[tuple[str, float]], root: Path = SOUNDFONT_ROOT) -> list[str]:
    """The Debian packages to install for the soundfonts of ``pool`` that ``root`` lacks."""
    return sorted({PACKAGES.get(name, name) for name, _ in pool if not (root / name).is_file()})


def check_not_held_out(pool: Sequence[tuple[str, float]], root: Path = SOUNDFONT_ROOT) -> None:
    """Raise ValueError if a soundfont of ``pool`` is, or links to, a held-out file.

    Debian's ``default-GM`` alternatives point at whichever GM soundfont was installed last
    (MuseScore's, once it is), so names alone do not tell.
    """
    held_out = {os.path.realpath(root / name) for name, _ in HELD_OUT}
    for name, _ in pool:
        if name in dict(HELD_OUT) or os.path.realpath(root / name) in held_out:
            raise ValueError(f"{name} is the held-out soundfont: only --ood may render with it")
