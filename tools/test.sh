#!/usr/bin/env bash
# Set up (idempotent) and run the test suite: `bash tools/test.sh [pytest args]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
exec .venv/bin/python -m pytest -q "$@"
