#!/usr/bin/env bash
# Set up a development environment on a fresh Debian/Ubuntu machine (idempotent):
# system packages (ffmpeg, libsndfile, xz for tools/device-train.sh, FluidSynth and the
# training soundfonts of `mirex-vi corpus`, rubberband for its pseudo-covers of real
# recordings; the held-out MuseScore soundfont of its --ood set is left out, see
# tools/README.md) and a virtualenv in .venv with the pinned requirements and this package.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(ffmpeg libsndfile1 xz-utils fluidsynth fluid-soundfont-gm timgm6mb-soundfont
              fluidr3mono-gm-soundfont opl3-soundfont csound-soundfont rubberband-cli)
source tools/apt.sh
apt_install_missing setup "${apt_packages[@]}"

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
# requirements.txt pins torch==2.13.0 first, so no newer (CUDA) torch is ever pulled in.
.venv/bin/pip install -q -r requirements.txt
.venv/bin/pip install -q -r requirements-dev.txt
# basic-pitch for its bundled transcription model only (mirex_vi/corpus/transcribe.py): with
# its dependencies it would install TensorFlow.
.venv/bin/pip install -q --no-deps basic-pitch==0.4.0
.venv/bin/pip install -q --no-deps -e .
echo "setup: ready (.venv)" >&2
