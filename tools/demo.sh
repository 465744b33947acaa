#!/usr/bin/env bash
# Set up (idempotent), identify the bundled demo collection with the shipped weights, and
# evaluate the matrix it wrote: `bash tools/demo.sh [extra mirex-vi identify options]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
demo=examples/demo
.venv/bin/mirex-vi identify "$demo/collection.txt" "$demo/queries.txt" demo-out.txt \
    --workdir demo-work "$@"
.venv/bin/mirex-vi evaluate --matrix demo-out.txt --labels "$demo/labels.tsv"
