#!/usr/bin/env bash
# Train on a lent GPU (the `device` tool of this workplace) from the kept pooled corpus.
#
# One device call carries at most 64 MiB of working tree, and the tracked tree alone is
# ~45 MB, so the corpus travels in parts, one per call, into `.gpu-data/` on the device
# machine (ignored, so it stays there between calls while the machine is warm). Only what
# training reads travels: the training cliques and VAL_CLIQUES validation cliques, as a
# store of their own, xz-compressed (~110 MB for 3,300 cliques), in parts sized to fill
# each call. The last call assembles it, times two epochs, trains as many epochs of
# configs/vinet-mirex-synth.yaml (the recipe of the shipped package) as the minutes allow
# (one cosine schedule) from the package in weights/ (pinned by its sha256), and brings the
# new package back as parts of a tar (files from a call are at most 16 MiB each). The script
# gives the recipe what belongs to the run: the carried data, the start, the run folder and
# 12 data-loader workers. Two runs separated by --vs train side by side on the one GPU, each
# with its own options (e.g. its own --set seed=N), and each brings its own package back.
#
#   here:   bash tools/device-train.sh prepare          # writes .gpu/, prints the calls to make
#   there:  bash tools/device-train.sh receive          # each call but the last: its part
#   there:  bash tools/device-train.sh train MINUTES [--set key=value ...] [--vs --set ...]
#   here:   bash tools/device-train.sh collect FILES_AT NAME [I]   # run I's package -> weights/NAME
#
# To ship it: move weights/vinet-mirex-synth aside, collect into that name, and copy the old
# MODEL_CARD.md in (the card is not checksummed) before updating it.
#
# Environment: CORPUS (prepare: a u8 pooled store with its Synth-VI-YT-light.json.train
# and .val beside it, made as docs/training.md, "Data", says); PART_SIZE (split's -b;
# default: what fills a call); VAL_CLIQUES (validation cliques carried, default 100:
# validation runs every epoch); VAL_INTO_TRAIN=1 (the other validation cliques join the
# training set); INIT (the package to start from, default
# weights/vinet-mirex-synth; empty: a random initialisation); NO_WHEELS=1 (carry no wheels);
# PYTHON (default python3; prepare needs one that imports mirex_vi's dependencies);
# EXTENSION (light-JSON files of training cliques with versions or works added by `mirex-vi
# corpus --extend`, separated by spaces, each with its u8 store extracted into its folder:
# those cliques train with every version, the added ones read from those stores; a clique
# in several files trains with the last one's versions).
set -euo pipefail
cd "$(dirname "$0")/.."

CORPUS=${CORPUS:-}
VAL_CLIQUES=${VAL_CLIQUES:-100}
INIT=${INIT-weights/vinet-mirex-synth}
PYTHON=${PYTHON:-python3}
CALL_LIMIT=$((64 * 1024 * 1024))
CALL_MARGIN=$((1024 * 1024))  # files added to the tree between prepare and the calls
EXPORT_SECONDS=30             # after training: export the package and pack it
RESULT=runs/device-result     # what train brings back and collect unpacks

die() { echo "device-train: $*" >&2; exit 2; }

# Light metadata with only the keys training reads (the train split's 8.9 MB become ~1 MB),
# from slices of the splits' cliques in sorted order.
slim_metadata() {  # DEST SRC:START:STOP... (STOP empty: to the end)
    "$PYTHON" - "$@" <<'PY'
import json, sys
dest, slim = sys.argv[1], {}
for source in sys.argv[2:]:
    src, start, stop = source.rsplit(":", 2)
    with open(src, encoding="utf-8") as f:
        cliques = json.load(f)
    for c in sorted(cliques)[int(start):int(stop) if stop else None]:
        slim[c] = [{"version_id": v["version_id"], "youtube_id": v["youtube_id"]} for v in cliques[c]]
with open(dest, "w", encoding="utf-8") as f:
    json.dump(slim, f)
PY
}

# sha256 over the .py files of the mirex_vi that PYTHON imports: the code that trains.
code_digest() {
    "$PYTHON" - <<'PY'
import hashlib
from pathlib import Path
import mirex_vi
root, h = Path(mirex_vi.__file__).parent, hashlib.sha256()
for path in sorted(root.rglob("*.py")):
    h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
print(h.hexdigest())
PY
}

prepare() {
    [[ -n $CORPUS ]] || die "CORPUS is not set: the folder of a u8 pooled store and its splits"
    [[ -f $CORPUS/pooled.u8.npy ]] || die "no pooled store in $CORPUS"
    rm -rf .gpu && mkdir -p .gpu/meta .gpu/whl
    local val=$CORPUS/Synth-VI-YT-light.json.val rest=()
    [[ ${VAL_INTO_TRAIN:-0} == 1 ]] && rest=("$val:$VAL_CLIQUES:")
    local train=("$CORPUS/Synth-VI-YT-light.json.train:0:") sources=(--from-features "$CORPUS")
    local extensions ext
    read -ra extensions <<< "${EXTENSION:-}"
    for ext in "${extensions[@]}"; do  # a clique in several: the last file's versions
        [[ -f $ext && -f $(dirname "$ext")/pooled.u8.npy ]] \
            || die "EXTENSION: $ext: expected a metadata file with a u8 store in its folder"
        train+=("$ext:0:")
        sources+=(--from-features "$(dirname "$ext")")
    done
    slim_metadata .gpu/meta/train.json "${train[@]}" "${rest[@]}"
    slim_metadata .gpu/meta/val.json "$val:0:$VAL_CLIQUES"
    # The carried store: those versions' rows (a u8 store's codes come through unchanged).
    # extract skips versions that no source holds; a carried set must have them all.
    slim_metadata .gpu/carried.json .gpu/meta/train.json:0: .gpu/meta/val.json:0:
    "$PYTHON" -m mirex_vi extract .gpu/store --pooled u8 "${sources[@]}" \
        --metadata .gpu/carried.json --quiet
    local wanted stored
    wanted=$("$PYTHON" -c 'import json, sys; print(sum(map(len, json.load(open(sys.argv[1])).values())))' \
        .gpu/carried.json)
    stored=$(($(wc -l < .gpu/store/pooled.index.tsv) - 1))
    ((stored == wanted)) || die "$((wanted - stored)) carried versions are in no store (${sources[*]})"
    cp .gpu/store/pooled.index.tsv .gpu/meta/
    # The device machine's copy of .git lags behind: the packages record this commit instead.
    "$PYTHON" -c "from mirex_vi.train.checkpoint import git_commit; print(git_commit() or 'unknown')" \
        > .gpu/meta/git_commit
    code_digest > .gpu/meta/code.sha256
    (cd .gpu/store && sha256sum pooled.u8.npy) > .gpu/meta/pooled.sha256
    # librosa, soundfile and soxr are not in the device image (Python 3.12); the rest is.
    [[ ${NO_WHEELS:-0} == 1 ]] || "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .gpu/whl librosa==0.11.0 soundfile==0.14.0 \
        soxr==1.1.0 audioread pooch platformdirs decorator cffi pycparser
    # Every call carries the tracked tree; the first also carries meta/ and whl/.
    local tree first part
    tree=$(git ls-files -z | xargs -0 -r du -cb | tail -1 | cut -f1)
    first=$(du -cb .gpu/meta .gpu/whl | tail -1 | cut -f1)
    part=${PART_SIZE:-$((CALL_LIMIT - CALL_MARGIN - tree - first))}
    [[ -n ${PART_SIZE:-} ]] || ((part > 1024 * 1024)) \
        || die "the tree ($tree bytes) leaves no room for the corpus in a call"
    xz -9 -T2 -c .gpu/store/pooled.u8.npy | split -b "$part" -d -a 2 - .gpu/part-
    ls .gpu/part-* | wc -l > .gpu/meta/n_parts
    echo "Device calls (timeout_s: 120 for each receive, MINUTES * 60 + 60 for train):"
    # The last part, usually small, travels with the train call.
    local parts=(.gpu/part-*) p
    for p in "${parts[@]::${#parts[@]}-1}"; do
        if [[ $p == .gpu/part-00 ]]; then
            echo "  carry [\".gpu/meta\", \".gpu/whl\", \"$p\"]  command: bash tools/device-train.sh receive"
        else
            echo "  carry [\"$p\"]  command: bash tools/device-train.sh receive"
        fi
    done
    echo "  carry [\"${parts[-1]}\"]  command: bash tools/device-train.sh train MINUTES [--set key=value ...] [--vs ...]"
}

# Whatever this call carried (meta/, whl/, parts) into .gpu-data/.
receive() {
    mkdir -p .gpu-data
    [[ -d .gpu/meta ]] && rm -rf .gpu-data/meta && cp -r .gpu/meta .gpu-data/meta
    [[ -d .gpu/whl ]] && rm -rf .gpu-data/whl && cp -r .gpu/whl .gpu-data/whl
    local p
    for p in .gpu/part-*; do [[ -f $p ]] && cp "$p" .gpu-data/; done
    echo "device-train: .gpu-data holds $(ls .gpu-data/part-* | wc -l) of $(cat .gpu-data/meta/n_parts) parts"
}

# The parts, decompressed into .gpu-data/pooled.u8.npy and checked against prepare's sha256.
assemble() {
    local have want
    have=$(ls .gpu-data/part-* 2>/dev/null | wc -l)
    want=$(cat .gpu-data/meta/n_parts)
    ((have == want)) || die "only $have of $want parts have arrived"
    if [[ ! -f .gpu-data/pooled.u8.npy ]]; then
        cat .gpu-data/part-* | "$PYTHON" -c 'import lzma, shutil, sys
shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer, 1 << 20)' \
            > .gpu-data/pooled.u8.npy.part 2> /dev/null \
            || { rm -f .gpu-data/pooled.u8.npy.part; die "the assembled store is corrupt (xz)"; }
        mv .gpu-data/pooled.u8.npy.part .gpu-data/pooled.u8.npy
        cp .gpu-data/meta/pooled.index.tsv .gpu-data/
    fi
    (cd .gpu-data && sha256sum -c --quiet meta/pooled.sha256) || die "the assembled store is corrupt"
}

# mirex-vi train on the carried corpus, Ctrl-C'd after SECONDS; the rest are its options,
# which come after the script's own and so override them. 12 workers: the device machine
# has 16 cores, and augmentation runs in the workers.
train_run() {  # SECONDS [--set key=value ...]
    local limit=$1
    shift
    PYTHONUNBUFFERED=1 timeout --signal=INT "$limit" "$PYTHON" -m mirex_vi train --config configs/vinet-mirex-synth.yaml \
        --set features_dir=.gpu-data --set train_metadata=.gpu-data/meta/train.json \
        --set val_metadata=.gpu-data/meta/val.json --set num_workers=12 "$@" 2>&1 \
        | tr '\r' '\n' | grep -v -e '^train: ' -e '^ *$'
}

# Each run's own options: the arguments between "--vs" separators (values without spaces).
split_runs() {  # ARG... -> one line per run
    local run=""
    for arg; do
        if [[ $arg == --vs ]]; then echo "$run"; run=""; else run+="$arg "; fi
    done
    echo "$run"
}

# The runs side by side on the one GPU, each to runs/gpu-NAME-I, logged to RESULT/I/NAME.log,
# from the package that train's `init` options pin; prints the epochs' lines of each log
# once all have stopped.
train_runs() {  # NAME SECONDS EXTRA_OPTIONS RUN_OPTIONS... (one word per run, from split_runs)
    local name=$1 limit=$2 extra=$3 i=0 opts pids=()
    shift 3
    for opts; do
        i=$((i + 1))
        rm -rf "runs/gpu-$name-$i"
        # shellcheck disable=SC2086 # options are split on spaces by design
        train_run "$limit" --set "output_dir=runs/gpu-$name-$i" "${init[@]}" $opts $extra \
            > "$RESULT/$i/$name.log" &
        pids+=($!)
    done
    local pid
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    for ((i = 1; i <= $#; i++)); do
        echo "== run $i (${!i}): $name"
        grep -e 'epoch ' -e 'Error' -e 'error' "$RESULT/$i/$name.log" | tail -n 40
    done
}

# From the probe runs (runs/gpu-probe-*): the seconds of the slowest run's last epoch, the
# startup (the probe's time less two such epochs: the first pays for warm-up) and the epochs
# that fit the seconds left after it, with a 10 % margin.
plan_epochs() {  # PROBE_SECONDS SECONDS_LEFT -> "EPOCH STARTUP EPOCHS"
    "$PYTHON" - "$@" runs/gpu-probe-*/metrics.jsonl <<'PY'
import json, sys
probe, left = map(float, sys.argv[1:3])
epoch = max(json.loads(open(path).readlines()[-1])["seconds"] for path in sys.argv[3:])
startup = int(probe - 2 * epoch)
print(epoch, startup, max(1, int((left - startup) / (1.1 * epoch))))
PY
}

# train MINUTES [OPTIONS] [--vs OPTIONS]: one run, or two side by side on the GPU, each with
# its own options (e.g. --set cls_weight=1 --vs --set cls_weight=0; share the data loaders'
# cores with --set num_workers). Everything comes back as one tar in parts, OUT/result.tar.N,
# holding I/package/ (run I's best epoch), I/metrics.jsonl and I/{probe,train}.log. A call
# brings back at most 8 files and 64 MiB: two packages of 32 MB fill it.
train() {
    local minutes=${1:?train MINUTES [--set key=value ...] [--vs --set key=value ...]}
    shift
    local deadline=$((SECONDS + minutes * 60)) out=${OUT:-runs/device-out} runs n
    mapfile -t runs < <(split_runs "$@")
    n=${#runs[@]}
    ((n <= 2)) || die "at most two runs: a call brings back 64 MiB, and a package is 32 MB"
    receive
    assemble
    if ! "$PYTHON" -c "import librosa, soundfile, soxr" 2>/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-data/whl/*.whl
        export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
    fi
    MIREX_VI_GIT_COMMIT=$(cat .gpu-data/meta/git_commit)
    [[ $(code_digest) == "$(cat .gpu-data/meta/code.sha256)" ]] \
        || MIREX_VI_GIT_COMMIT+="+changed-since-prepare"
    export MIREX_VI_GIT_COMMIT
    init=()
    [[ -n $INIT ]] && init=(--set "init_weights=$INIT" --set "init_sha256=$(sha256sum "$INIT/model.safetensors" | cut -d' ' -f1)")
    local i
    rm -rf "$RESULT"
    for ((i = 1; i <= n; i++)); do mkdir -p "$RESULT/$i"; done
    # Two timed epochs size the real runs, so that their cosine schedules end inside the
    # minutes. The first epoch pays for warm-up (workers, cuDNN's autotuning).
    local start=$SECONDS
    train_runs probe "$((deadline - SECONDS))" "--set epochs=2 --set warmup_epochs=0" "${runs[@]}"
    ls runs/gpu-probe-*/metrics.jsonl > /dev/null 2>&1 || die "the timing epochs did not finish"
    local epoch startup epochs
    read -r epoch startup epochs < <(plan_epochs "$((SECONDS - start))" "$((deadline - SECONDS - EXPORT_SECONDS))")
    echo "device-train: an epoch takes $epoch s (startup $startup s): $n run(s) of $epochs epochs"
    # A run slower than planned stops at the limit; its best.pt is the best epoch that finished.
    train_runs train "$((deadline - SECONDS - EXPORT_SECONDS))" "--set epochs=$epochs" "${runs[@]}"
    local run exported=0
    for ((i = 1; i <= n; i++)); do
        run=runs/gpu-train-$i
        [[ -f $run/best.pt ]] || { echo "device-train: run $i finished no epoch" >&2; continue; }
        cp "$run/metrics.jsonl" "$RESULT/$i/"
        "$PYTHON" -m mirex_vi weights export "$run/best.pt" --root "$RESULT/$i" --name package
        exported=$((exported + 1))
    done
    ((exported > 0)) || die "no epoch finished in $minutes minutes"
    mkdir -p "$out"
    tar -C "$RESULT" -cf - . | split -b 15M -d -a 1 - "$out/result.tar."
    ls -la "$out"
}

# Run RUN's package out of the result tar parts in FILES_AT, into weights/NAME (renamed and
# verified by `mirex-vi weights copy`); the logs and metrics stay in RESULT.
collect() {
    local from=${1:?collect FILES_AT NAME [RUN]} name=${2:?collect FILES_AT NAME [RUN]} run=${3:-1}
    [[ -e weights/$name ]] && die "weights/$name exists"
    rm -rf "$RESULT" && mkdir -p "$RESULT"
    cat "$from"/result.tar.* | tar -C "$RESULT" -xf -
    [[ -d $RESULT/$run/package ]] || die "no package of run $run in $from"
    local py=$PYTHON
    [[ $py == python3 && -x .venv/bin/python ]] && py=.venv/bin/python
    # The package was exported as "package"; the copy takes its folder's name.
    "$py" -m mirex_vi weights copy "$RESULT/$run/package" "$name" --root weights
    echo "device-train: logs and metrics of each run in $RESULT/"
}

case ${1:-} in
    prepare) prepare ;;
    receive) receive ;;
    train) shift; train "$@" ;;
    collect) shift; collect "$@" ;;
    *) die "usage: device-train.sh prepare | receive | train MINUTES [--set k=v ...] [--vs ...] | collect FILES_AT NAME [RUN]" ;;
esac
