#!/usr/bin/env bash
# Train on a lent GPU (the `device` tool of this workplace) from the kept pooled corpus.
#
# One device call carries at most 64 MiB of working tree, and the tracked tree alone is
# ~45 MB, so the 173-MB corpus travels in parts, one per call, into `.gpu-data/` on the
# device machine (ignored, so it stays there between calls while the machine is warm).
# The last call assembles it, trains with configs/vinet-mirex-synth-gpu.yaml from the
# package in weights/ (pinned by its sha256) and brings the new package back as parts of a
# tar (files from a call are at most 16 MiB each).
#
#   here:   bash tools/device-train.sh prepare          # writes .gpu/, prints the calls to make
#   there:  bash tools/device-train.sh receive K        # call K: part K into .gpu-data/
#   there:  bash tools/device-train.sh train MINUTES [--set key=value ...]   # the last call
#   here:   bash tools/device-train.sh collect FILES_AT NAME   # the package -> weights/NAME
#
# Environment: CORPUS (default ../shared/corpus/synth-vi-4000); PART_SIZE (split's -b,
# default 17M); VAL_CLIQUES (validation cliques carried, default 100: validation runs every
# epoch); INIT (the package to start from, default weights/vinet-mirex-synth; empty: a
# random initialisation); NO_WHEELS=1 (carry no wheels); PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

CORPUS=${CORPUS:-../shared/corpus/synth-vi-4000}
PART_SIZE=${PART_SIZE:-17M}
VAL_CLIQUES=${VAL_CLIQUES:-100}
INIT=${INIT-weights/vinet-mirex-synth}
PYTHON=${PYTHON:-python3}
CALL_LIMIT=$((64 * 1024 * 1024))

die() { echo "device-train: $*" >&2; exit 2; }

# Light metadata with only the keys training reads: the train split's 8.9 MB become ~1 MB.
slim_metadata() {  # SRC DEST MAX_CLIQUES (0: all)
    "$PYTHON" - "$@" <<'EOF'
import json, sys
src, dest, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(src, encoding="utf-8") as f:
    cliques = json.load(f)
ids = sorted(cliques)[:limit] if limit else sorted(cliques)
slim = {c: [{"version_id": v["version_id"], "youtube_id": v["youtube_id"]} for v in cliques[c]]
        for c in ids}
with open(dest, "w", encoding="utf-8") as f:
    json.dump(slim, f)
EOF
}

prepare() {
    [[ -f $CORPUS/pooled.u8.npy ]] || die "no pooled store in $CORPUS"
    rm -rf .gpu && mkdir -p .gpu/meta
    slim_metadata "$CORPUS/Synth-VI-YT-light.json.train" .gpu/meta/train.json 0
    slim_metadata "$CORPUS/Synth-VI-YT-light.json.val" .gpu/meta/val.json "$VAL_CLIQUES"
    cp "$CORPUS/pooled.index.tsv" .gpu/meta/
    (cd "$CORPUS" && sha256sum pooled.u8.npy) > .gpu/meta/pooled.sha256
    split -b "$PART_SIZE" -d -a 2 "$CORPUS/pooled.u8.npy" .gpu/part-
    ls .gpu/part-* | wc -l > .gpu/meta/n_parts
    # librosa, soundfile and soxr are not in the device image (Python 3.12); the rest is.
    mkdir -p .gpu/whl
    [[ ${NO_WHEELS:-0} == 1 ]] || "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .gpu/whl librosa==0.11.0 soundfile==0.14.0 \
        soxr==1.1.0 audioread pooch platformdirs decorator cffi pycparser
    local tree first k size
    tree=$(git ls-files -z | xargs -0 -r du -cb | tail -1 | cut -f1)
    first=$(du -cb .gpu/meta .gpu/whl | tail -1 | cut -f1)
    echo "Device calls (timeout_s: 120 for each receive, MINUTES * 60 + 120 for train):"
    for part in .gpu/part-*; do
        k=${part##*-}
        size=$(stat -c %s "$part")
        if [[ $k == 00 ]]; then
            size=$((size + first))
            echo "  carry [\".gpu/meta\", \".gpu/whl\", \"$part\"]  command: bash tools/device-train.sh receive $k"
        else
            echo "  carry [\"$part\"]  command: bash tools/device-train.sh receive $k"
        fi
        ((tree + size <= CALL_LIMIT)) || die "call $k would carry $((tree + size)) bytes (limit $CALL_LIMIT); lower PART_SIZE"
    done
    echo "  then: bash tools/device-train.sh train MINUTES [--set epochs=N ...]  (nothing to carry)"
}

receive() {
    local k=${1:?receive K}
    mkdir -p .gpu-data
    [[ -d .gpu/meta ]] && rm -rf .gpu-data/meta && cp -r .gpu/meta .gpu-data/meta
    [[ -d .gpu/whl ]] && rm -rf .gpu-data/whl && cp -r .gpu/whl .gpu-data/whl
    cp ".gpu/part-$k" .gpu-data/
    echo "device-train: .gpu-data holds $(ls .gpu-data/part-* | wc -l) of $(cat .gpu-data/meta/n_parts) parts"
}

train() {
    local minutes=${1:?train MINUTES [--set key=value ...]}
    shift
    local out=${OUT:-runs/device-out} run=runs/vinet-mirex-synth-gpu
    local have want
    have=$(ls .gpu-data/part-* 2>/dev/null | wc -l)
    want=$(cat .gpu-data/meta/n_parts)
    ((have == want)) || die "only $have of $want parts have arrived"
    if [[ ! -f .gpu-data/pooled.u8.npy ]]; then
        cat .gpu-data/part-* > .gpu-data/pooled.u8.npy
        cp .gpu-data/meta/pooled.index.tsv .gpu-data/
    fi
    (cd .gpu-data && sha256sum -c --quiet meta/pooled.sha256) || die "the assembled store is corrupt"
    if ! "$PYTHON" -c "import librosa, soundfile, soxr" 2>/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-data/whl/*.whl
        export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
    fi
    local init=()
    [[ -n $INIT ]] && init=(--set "init_weights=$INIT" --set "init_sha256=$(sha256sum "$INIT/model.safetensors" | cut -d' ' -f1)")
    mkdir -p "$out"
    rm -rf "$run"
    # The run stops at the limit if it is slower than planned; best.pt is then the best epoch
    # that finished.
    set +e
    PYTHONUNBUFFERED=1 timeout --signal=INT "$((minutes * 60))" "$PYTHON" -m mirex_vi train \
        --config configs/vinet-mirex-synth-gpu.yaml --set output_dir="$run" \
        --set features_dir=.gpu-data --set train_metadata=.gpu-data/meta/train.json \
        --set val_metadata=.gpu-data/meta/val.json "${init[@]}" "$@" 2>&1 | tr '\r' '\n' \
        | grep -v '^train: ' | tee "$out/train.log"
    set -e
    [[ -f $run/best.pt ]] || die "no epoch finished in $minutes minutes"
    cp "$run/metrics.jsonl" "$out/"
    rm -rf "$run/package"
    "$PYTHON" -m mirex_vi weights export "$run/best.pt" --root "$run/package" --name trained
    tar -C "$run/package/trained" -cf - . | split -b 15M -d -a 1 - "$out/package.tar."
    ls -la "$out"
}

collect() {
    local from=${1:?collect FILES_AT NAME} name=${2:?collect FILES_AT NAME}
    [[ -e weights/$name ]] && die "weights/$name exists"
    mkdir -p "weights/$name"
    cat "$from"/package.tar.* | tar -C "weights/$name" -xf -
    local py=$PYTHON
    [[ $py == python3 && -x .venv/bin/python ]] && py=.venv/bin/python
    MIREX_VI_WEIGHTS_DIR=$PWD/weights "$py" -m mirex_vi weights verify "$name"
}

case ${1:-} in
    prepare) prepare ;;
    receive) shift; receive "$@" ;;
    train) shift; train "$@" ;;
    collect) shift; collect "$@" ;;
    *) die "usage: device-train.sh prepare | receive K | train MINUTES [--set k=v ...] | collect FILES_AT NAME" ;;
esac
