#!/usr/bin/env bash
# Offline end-to-end test of the submission image (Dockerfile), on a CPU-only machine.
#
#   tools/docker-test.sh            # exit 0: passed (or skipped, see below); non-zero: failed
#
# 1. installs docker.io + debootstrap if missing and starts dockerd if none answers;
# 2. builds a Debian bookworm base with debootstrap (cached as mirex-vi-base:bookworm);
# 3. fills wheels/ (git-ignored) with CPython 3.11 wheels of requirements.txt and of the
#    `search` extra (faiss-cpu), with the CPU build of torch from TORCH_WHEEL_DIR (pip cannot
#    reach an index inside the build);
# 4. builds the image from the repository with that base and wheelhouse;
# 5. runs the MIREX call (three- and four-argument forms, the image's user and an arbitrary
#    one) with --network none on synthetic 22.05 kHz 16-bit mono WAVs mounted read-only, and
#    checks the matrix independently; builds a catalogue index of the same WAVs and searches it;
# 6. runs the research path in the image as an arbitrary user: one epoch of configs/tiny.yaml
#    on a synthetic pooled store, the run exported as a package and evaluated with it;
# 7. checks that numba's cache from the build is used (no compilation in a new container),
#    that the other subcommands answer, and reports timings and size.
#
# Only where Docker cannot run at all does it print "DOCKER TEST SKIPPED: <reason>" and exit 0.
# Environment: MIREX_VI_CACHE (default /var/cache/mirex-vi), DEBIAN_MIRROR, TORCH_WHEEL_DIR
# (default /opt/wheels), IMAGE (default mirex-vi:test), KEEP_DOCKERD=1 to leave a dockerd
# started here running.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MIREX_VI_CACHE:-/var/cache/mirex-vi}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_WHEEL_DIR=${TORCH_WHEEL_DIR:-/opt/wheels}
BASE=mirex-vi-base:bookworm
IMAGE=${IMAGE:-mirex-vi:test}
PY=$(command -v python3)
DOCKERD_PID=""
WORK=""

log() { printf '[docker-test %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { log "FAILED: $*"; exit 1; }
skip() { echo "DOCKER TEST SKIPPED: $*"; exit 0; }

cleanup() {
    [[ -n "$WORK" ]] && rm -rf "$WORK"
    if [[ -n "$DOCKERD_PID" && "${KEEP_DOCKERD:-0}" != 1 ]]; then
        kill "$DOCKERD_PID" 2>/dev/null && wait "$DOCKERD_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# Seconds since START as "12.3"; usage: t0=$(now); ...; took $t0.
now() { date +%s.%N; }
took() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

ensure_tools() {
    command -v dockerd >/dev/null && command -v debootstrap >/dev/null && return
    log "installing docker.io and debootstrap"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap; } \
        >"$CACHE/apt.log" 2>&1 || skip "cannot install docker.io/debootstrap (see $CACHE/apt.log)"
}

ensure_daemon() {
    docker info >/dev/null 2>&1 && return
    log "starting dockerd (log: $CACHE/dockerd.log)"
    dockerd >"$CACHE/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 1
    done
    tail -n 5 "$CACHE/dockerd.log" >&2 || true
    DOCKERD_PID=""
    skip "dockerd cannot start here (see $CACHE/dockerd.log)"
}

ensure_base() {
    if docker image inspect "$BASE" >/dev/null 2>&1; then
        log "base image $BASE: cached"
        return
    fi
    local root="$CACHE/rootfs-bookworm" t0
    t0=$(now)
    rm -rf "$root"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || fail "debootstrap (see $CACHE/debootstrap.log)"
    # apt inside the build needs a source; debootstrap writes one, make sure of it.
    grep -q '^deb ' "$root/etc/apt/sources.list" 2>/dev/null \
        || echo "deb $MIRROR bookworm main" >"$root/etc/apt/sources.list"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import - "$BASE" >/dev/null
    rm -rf "$root"
    log "base image $BASE: debootstrap + import took $(took "$t0") s"
}

ensure_containers_run() {
    docker run --rm --network none "$BASE" true >"$CACHE/smoke.log" 2>&1 \
        || skip "dockerd runs but cannot start a container: $(tail -n 1 "$CACHE/smoke.log")"
}

fill_wheelhouse() {
    local torch_version torch_wheel search_extra platforms=() i t0
    t0=$(now)
    torch_version=$(sed -n 's/^torch==\([^ ;#]*\).*/\1/p' "$REPO/requirements.txt")
    [[ -n "$torch_version" ]] || fail "no torch==VERSION pin in requirements.txt"
    # pyproject.toml: search = ["faiss-cpu==X"] -> faiss-cpu==X (the image installs the extra)
    search_extra=$(sed -n 's/^search = \[\(.*\)\]/\1/p' "$REPO/pyproject.toml" | tr -d '",')
    [[ -n "$search_extra" ]] || fail "no search extra in pyproject.toml"
    torch_wheel=$(ls "$TORCH_WHEEL_DIR"/torch-"$torch_version"+cpu-cp311-cp311-manylinux*_x86_64.whl 2>/dev/null | head -n 1)
    [[ -n "$torch_wheel" ]] || fail "no CPU wheel of torch $torch_version for cp311 in $TORCH_WHEEL_DIR"
    mkdir -p "$REPO/wheels"
    rm -f "$REPO"/wheels/torch-*.whl
    cp "$torch_wheel" "$REPO/wheels/"
    # pip 23 does not widen --platform to older manylinux tags by itself.
    for i in $(seq 28 -1 17); do platforms+=(--platform "manylinux_2_${i}_x86_64"); done
    platforms+=(--platform manylinux2014_x86_64)
    # The local +cpu torch outranks PyPI's 2.13.0 (CUDA) and is found in wheels/ itself.
    "$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        "${platforms[@]}" --python-version 3.11 --implementation cp \
        --find-links "$REPO/wheels" -r "$REPO/requirements.txt" $search_extra -d "$REPO/wheels" \
        2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2) \
        || fail "pip download into wheels/"
    [[ $(ls "$REPO"/wheels/torch-*.whl | wc -l) == 1 ]] || fail "more than one torch wheel in wheels/"
    ! ls "$REPO"/wheels/ | grep -q -i -E '^(nvidia|triton|cuda)' \
        || fail "CUDA wheels in wheels/: $(ls "$REPO"/wheels/ | grep -i -E '^(nvidia|triton|cuda)' | xargs)"
    log "wheelhouse: $(ls "$REPO"/wheels/*.whl | wc -l) wheels, $(du -sh "$REPO/wheels" | cut -f1), $(took "$t0") s"
}

build_image() {
    local t0
    t0=$(now)
    log "building $IMAGE (log: $CACHE/build.log)"
    docker build --build-arg BASE_IMAGE="$BASE" --build-arg WHEELS=wheels -t "$IMAGE" "$REPO" \
        >"$CACHE/build.log" 2>&1 || { tail -n 30 "$CACHE/build.log" >&2; fail "docker build"; }
    grep -q -- '--no-index --find-links' "$CACHE/build.log" || fail "the build did not use the wheelhouse"
    log "image build took $(took "$t0") s; size $(docker image inspect -f '{{.Size}}' "$IMAGE" \
        | awk '{printf "%.2f GB", $1 / 1e9}')"
}

# Six 10 s clips (mirex_vi.synth.clips: two tones, a chord, a melody, the melody 2 semitones up
# and slower, a chirp), written by the image's own package as 22.05 kHz 16-bit mono WAVs.
make_audio() {
    mkdir -p "$1"
    docker run --rm --network none --user "$(id -u):$(id -g)" -v "$1:/clips" \
        --entrypoint python "$IMAGE" -m mirex_vi.synth /clips
}

# Independent check of a MIREX matrix; prints a summary line.
check_matrix() {
    "$PY" - "$@" <<'EOF'
import math, sys

path, collection_file, queries_file = sys.argv[1:4]
collection = open(collection_file).read().split()
queries = open(queries_file).read().split()
lines = open(path, encoding="utf-8").read().split("\n")
assert lines[-1] == "", "no newline at the end"
lines = lines[:-1]
n, q = len(collection), len(queries)
assert len(lines) == 1 + n + 1 + q, f"{len(lines)} lines, expected {1 + n + 1 + q}"
assert lines[0].strip(), "empty header line"
for i, (line, track) in enumerate(zip(lines[1:1 + n], collection), 1):
    assert line == f"{i}\t{track}", f"index line {i}: {line!r}"
assert lines[1 + n] == "Q/R\t" + "\t".join(map(str, range(1, n + 1))), "bad Q/R line"
for line, query in zip(lines[2 + n:], queries):
    fields = line.split("\t")
    assert len(fields) == n + 1, f"row of {len(fields)} fields"
    row_index = int(fields[0])
    assert collection[row_index - 1] == query, f"row {row_index} is not query {query}"
    d = [float(v) for v in fields[1:]]
    assert all(math.isfinite(v) and v >= 0 for v in d), f"row {row_index}: negative or not finite"
    assert d[row_index - 1] == 0, f"row {row_index}: self-distance {d[row_index - 1]}"
    assert any(v > 0 for v in d), f"row {row_index}: all distances zero"
print(f"matrix OK: {q} queries x {n} tracks")
EOF
}

mirex_calls() {
    local data="$WORK/data" out="$WORK/out" t0 mode
    make_audio "$data/audio" || fail "writing the synthetic clips in the container"
    ls "$data"/audio/*.wav | sed "s#^$data#/data#" >"$data/collection.txt"
    grep -E 'melody_cover|tone_a4|chord_c' "$data/collection.txt" >"$data/queries.txt"
    mkdir -p "$out" && chmod 777 "$out"   # the image's user (uid 10001) writes here
    local run=(docker run --rm --network none -v "$data:/data:ro" -v "$out:/out")

    t0=$(now)
    "${run[@]}" "$IMAGE" /data/collection.txt /data/queries.txt /out/out3.txt \
        || fail "MIREX call (3 arguments)"
    log "MIREX call, 6 tracks x 3 queries, in the container: $(took "$t0") s"
    check_matrix "$out/out3.txt" "$data/collection.txt" "$data/queries.txt" || fail "matrix check"
    mode=$(stat -c %a "$out/out3.txt")
    (( (8#$mode & 8#004) != 0 )) || fail "output matrix has mode $mode: not readable by other users"

    # MIREX's own form, as an arbitrary host user (docker run --user "$(id -u):$(id -g)").
    "${run[@]}" --user 4321:4321 "$IMAGE" /data/collection.txt /data/queries.txt /out/work \
        /out/out4.txt || fail "MIREX call (4 arguments, working dir, --user 4321:4321)"
    cmp -s "$out/out3.txt" "$out/out4.txt" || fail "the 3- and 4-argument calls disagree"
    [[ -d "$out/work" ]] || fail "the working dir was not used"
}

# The `search` extra in the image: index the six WAVs, search three of them.
check_search() {
    local data="$WORK/data" out="$WORK/out" lines
    local run=(docker run --rm --network none -v "$data:/data:ro" -v "$out:/out" "$IMAGE")
    "${run[@]}" index build /data/collection.txt /out/index --quiet || fail "index build in the container"
    "${run[@]}" search /out/index /data/queries.txt --top-k 2 --exclude-self --quiet \
        >"$out/search.tsv" || fail "search in the container"
    lines=$(wc -l <"$out/search.tsv")
    [[ "$lines" == 6 ]] || fail "search printed $lines lines, expected 3 queries x 2 results"
    log "index build and search in the container: OK"
}

# Eight training and four validation cliques of two versions each, as a u8 pooled store
# written by the image's own package: each clique a random pattern, its versions
# time-shifted noisy copies (220 pooled frames, above the 172 the network needs).
TRAINING_DATA='
import json, sys
from pathlib import Path
import numpy as np
from mirex_vi.features.pooled import write_store
out, rng, versions = Path(sys.argv[1]), np.random.default_rng(0), {}
for split, first, n in (("train", 0, 8), ("val", 100, 4)):
    light = {}
    for c in range(first, first + n):
        pattern = rng.random((220, 84)) ** 4
        ids = [f"y{c:04d}v{v}" for v in range(2)]
        for yid in ids:
            shifted = np.roll(pattern, int(rng.integers(0, 40)), axis=0)
            versions[yid] = (shifted + 0.15 * rng.random(shifted.shape)).astype(np.float32)
        light[f"C-{c:07d}"] = [{"version_id": yid, "youtube_id": yid} for yid in ids]
    (out / f"light.json.{split}").write_text(json.dumps(light))
write_store(out / "store", versions.items(), "u8")
'

# `docker run IMAGE train ...` as a researcher would: train, export, evaluate the export.
check_training() {
    local out="$WORK/train" t0
    mkdir -p "$out" && chmod 777 "$out"
    local run=(docker run --rm --network none --user 4321:4321 -v "$out:/out")
    t0=$(now)
    "${run[@]}" --entrypoint python "$IMAGE" -c "$TRAINING_DATA" /out \
        || fail "writing a pooled store in the container"
    "${run[@]}" "$IMAGE" train --config configs/tiny.yaml --device cpu --quiet \
        --set train_metadata=/out/light.json.train --set val_metadata=/out/light.json.val \
        --set features_dir=/out/store --set output_dir=/out/run --set epochs=1 \
        || fail "train in the container"
    "${run[@]}" "$IMAGE" weights export /out/run/best.pt --name trained --root /out/weights \
        >/dev/null || fail "weights export in the container"
    "${run[@]}" "$IMAGE" evaluate --metadata /out/light.json.val --features-dir /out/store \
        --weights /out/weights/trained --device cpu --json /out/figures.json --quiet >/dev/null \
        || fail "evaluate with the exported package in the container"
    "$PY" -c 'import json, sys; f = json.load(open(sys.argv[1])); assert f["n_queries"] == 8, f' \
        "$out/figures.json" || fail "the exported package's figures: $(cat "$out/figures.json")"
    log "train (tiny, 1 epoch), export and evaluate in the container: $(took "$t0") s"
}

check_numba_cache() {
    local report
    report=$(docker run --rm --network none -e NUMBA_DEBUG_CACHE=1 --entrypoint python "$IMAGE" -c '
import time
import numpy as np
from mirex_vi.config import FeatureConfig
from mirex_vi.features.frontend import compute_cqt
cfg = FeatureConfig()
x = 0.1 * np.random.default_rng(1).standard_normal(30 * cfg.sample_rate).astype(np.float32)
t = time.perf_counter()
compute_cqt(x, cfg)
print(f"first CQT (30 s of audio) in a new container: {time.perf_counter() - t:.2f} s")
') || fail "CQT in the container"
    grep -q 'data loaded' <<<"$report" || fail "numba loaded nothing from its cache"
    ! grep -q 'data saved' <<<"$report" || fail "numba compiled in the container: the build's cache missed"
    log "$(grep 'first CQT' <<<"$report"); numba cache hits: $(grep -c 'data loaded' <<<"$report")"
}

check_subcommands() {
    local cmd
    for cmd in extract evaluate identify warmup weights index search; do
        docker run --rm --network none "$IMAGE" "$cmd" --help >/dev/null || fail "$cmd --help"
    done
    docker run --rm --network none "$IMAGE" --help >/dev/null || fail "--help"
    docker run --rm --network none "$IMAGE" weights verify >/dev/null || fail "weights verify"
    [[ $(docker run --rm --entrypoint id "$IMAGE" -u) != 0 ]] || fail "the image runs as root"
}

main() {
    local t0
    t0=$(now)
    mkdir -p "$CACHE"
    ensure_tools
    ensure_daemon
    ensure_base
    ensure_containers_run
    fill_wheelhouse
    build_image
    WORK=$(mktemp -d)
    chmod 755 "$WORK"
    mirex_calls
    check_search
    check_training
    check_numba_cache
    check_subcommands
    log "PASSED in $(took "$t0") s"
}

main "$@"
