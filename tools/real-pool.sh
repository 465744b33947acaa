#!/usr/bin/env bash
# Install Debian's music packages, link their recordings into a pool folder (one folder of
# links per package) and build the store of real-derived pseudo-cover cliques from it:
#
#   bash tools/real-pool.sh POOL STORE [mirex-vi corpus-real options, e.g. --max-recordings 50]
#
# Idempotent: installed packages are kept, the links are made anew, and a build that was
# stopped resumes at the next recording (STORE/parts). planetblupi-* is never installed or
# linked: it is reserved for independent evaluation (`corpus-real` refuses it too).
# Tracker modules (.mod/.xm/.it) are included: real productions with their composers'
# samples, decoded by ffmpeg's libopenmpt. Left out: openttd-openmsx (MIDI only),
# garden-of-coloured-lights-data and boswars-data (sound effects, one short intro), the
# wesnoth-music metapackage (the same files as wesnoth-1.16-music).
set -euo pipefail
cd "$(dirname "$0")/.."
if (($# < 2)); then
    echo "usage: bash tools/real-pool.sh POOL STORE [mirex-vi corpus-real options]" >&2
    exit 2
fi
pool=$1 store=$2
shift 2

# package -> its music: files, folders or archives (space-separated; links are followed)
declare -A music=(
    [ufoai-music]=/usr/share/games/ufoai/base/0music.pk3
    [wesnoth-1.16-music]=/usr/share/games/wesnoth/1.16/data/core/music
    [warzone2100-music]=/usr/share/games/warzone2100/music
    [nexuiz-music]=/usr/share/games/nexuiz/data/music.pk3
    [hyperrogue-music]=/usr/share/hyperrogue/music
    [singularity-music]=/usr/share/games/singularity/music
    [drascula-music]=/usr/share/scummvm/drascula/audio
    [asc-music]=/usr/share/games/asc/music
    [xblast-tnt-musics]=/usr/share/games/xblast-tnt/sounds
    [fretsonfire-songs-sectoid]=/usr/share/games/fretsonfire/data/songs/sectoid
    [fretsonfire-songs-muldjord]=/usr/share/games/fretsonfire/data/songs/muldjord
    [fb-music-high]=/usr/share/games/frozen-bubble/snd/frozen-mainzik-2p.xm
    [pushover-data]=/usr/share/pushover/themes
    [tomatoes-data]=/usr/share/tomatoes/music
    [tecnoballz-data]=/usr/share/games/tecnoballz/musics
    [colobot-common-sounds]=/usr/share/games/colobot/music
    [fillets-ng-data]=/usr/share/games/fillets-ng/music
)

packages=()
for p in $(printf '%s\n' "${!music[@]}" | sort); do
    if [[ $p == planetblupi* ]]; then
        echo "real-pool: $p is reserved for independent evaluation" >&2
        exit 2
    fi
    if ! apt-cache show "$p" >/dev/null 2>&1; then
        echo "real-pool: no package $p in this Debian release; left out" >&2
        continue
    fi
    packages+=("$p")
done
source tools/apt.sh
apt_install_missing real-pool "${packages[@]}"

mkdir -p "$pool"
for p in "${packages[@]}"; do
    rm -rf "${pool:?}/$p"
    mkdir -p "$pool/$p"
    for path in ${music[$p]}; do
        ln -s "$path" "$pool/$p/$(basename "$path")"
    done
done
echo "real-pool: ${#packages[@]} packages linked in $pool" >&2

exec .venv/bin/mirex-vi corpus-real "$store" --real-audio "$pool" "$@"
