# MIREX submission image for mirex-vi (Discogs-VINet-MIREX cover song identification).
#
#   docker build -t mirex-vi .
#   docker run --gpus all --network none -v /data:/data mirex-vi \
#       /data/collection.txt /data/queries.txt /data/out.txt
#   docker run mirex-vi train --help        # any mirex-vi subcommand passes through
#   docker run -v /data:/data mirex-vi search /data/index /data/queries.txt   # catalogue search
#
# Test builds swap the base and install from a local wheelhouse (no index, no network):
#   docker build --build-arg BASE_IMAGE=mirex-vi-base:bookworm --build-arg WHEELS=wheels .
# A folder named by WHEELS (default "wheels") in the build context that holds *.whl files
# turns on `pip --no-index --find-links`; without one, pip uses PyPI. The classic builder
# is enough: no BuildKit features are used. tools/docker-test.sh runs the whole offline test.

# torch==2.13.0 from PyPI is built for CUDA 13.0 and carries its own CUDA libraries; the base
# supplies the matching runtime and cuDNN for anything else linked against CUDA.
# Host driver: the CUDA 13.0 base needs NVIDIA driver >= 580 (NVIDIA's minimum for 13.0,
# 580.65.06); with an older driver the NVIDIA Container Toolkit refuses to start the
# container ("unsatisfied condition: cuda>=13.0"). For a CUDA 12.x driver, build a CUDA 12.x
# image: a 12.x base and torch from PyTorch's index of the same CUDA version, e.g.
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t mirex-vi:cu128 .
# (CUDA 12.8 needs driver >= 570; that index must carry the pinned torch version.)
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# --- system: Python, ffmpeg (decodes what libsndfile cannot), libsndfile, runtime user ----
FROM ${BASE_IMAGE} AS system
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ffmpeg libsndfile1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin mirex

# --- build: the virtual environment; the wheelhouse stays in this stage only -------------
FROM system AS build
ARG WHEELS=wheels
# Empty: torch from PyPI (CUDA 13.0 build). A PyTorch wheel index (.../whl/cu128): the pinned
# torch from there first, for older drivers (see BASE_IMAGE above); not with a wheelhouse.
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The glob lets the wheelhouse be absent; a folder's contents land beside requirements.txt.
COPY requirements.txt ${WHEELS}* /tmp/pip/
RUN if ls /tmp/pip/*.whl >/dev/null 2>&1; then echo "--no-index --find-links /tmp/pip"; fi \
        > /tmp/pip/options \
    && echo "pip options: $(cat /tmp/pip/options)" \
    && python3 -m venv /opt/venv \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
           if [ -s /tmp/pip/options ]; then \
               echo "TORCH_INDEX_URL needs an index: not with a wheelhouse" >&2; exit 1; \
           fi; \
           /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" \
               "$(grep '^torch==' /tmp/pip/requirements.txt)"; \
       fi \
    && /opt/venv/bin/pip install $(cat /tmp/pip/options) -r /tmp/pip/requirements.txt
COPY pyproject.toml README.md /src/
COPY mirex_vi/ /src/mirex_vi/
# With the `search` extra (FAISS, for `mirex-vi index` and `search`): requirements.txt has
# installed every other dependency, so this adds only faiss-cpu and what it needs.
RUN /opt/venv/bin/pip install $(cat /tmp/pip/options) "/src[search]"
COPY run.sh /app/run.sh
COPY configs/ /app/configs/
COPY weights/ /app/weights/
# Files written atomically may be mode 0600 in a working tree: the runtime user must read them.
RUN chmod -R a+rX /app

# --- image: venv, entry point, configs and verified weights; numba compiled once ---------
FROM system
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MIREX_VI_WEIGHTS_DIR=/app/weights \
    NUMBA_CACHE_DIR=/var/cache/mirex-vi/numba \
    NUMBA_CPU_NAME=generic
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
# Fail the build on any checksum mismatch: once with sha256sum alone, once through the loader.
RUN set -e; cd /app/weights; found=0; \
    for sums in */SHA256SUMS; do \
        [ -f "$sums" ] || continue; \
        (cd "$(dirname "$sums")" && sha256sum --check --strict SHA256SUMS); found=1; \
    done; \
    [ "$found" = 1 ] || { echo "no weight package under /app/weights" >&2; exit 1; }; \
    mirex-vi weights verify
# librosa's numba kernels compile here (~25 s) instead of in every container. With
# NUMBA_CPU_NAME=generic the cache stays valid on any x86-64 host; the folder is writable by
# any user, so a cache miss (another numba version, say) only costs a compilation.
RUN mkdir -p "$NUMBA_CACHE_DIR" \
    && mirex-vi warmup \
    && chmod -R a+rwX /var/cache/mirex-vi
USER mirex
ENTRYPOINT ["/app/run.sh"]
CMD ["--help"]
