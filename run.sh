#!/usr/bin/env bash
# MIREX entry point.
#   run.sh COLLECTION QUERIES OUTPUT            -> mirex-vi identify COLLECTION QUERIES OUTPUT
#   run.sh COLLECTION QUERIES WORKDIR OUTPUT    -> ... --workdir WORKDIR (MIREX's own convention)
#   run.sh SUBCOMMAND ARGS...                   -> mirex-vi SUBCOMMAND ARGS... (train, search, ...)
set -euo pipefail

subcommands=" identify train extract evaluate weights warmup index search --help -h --version "
if [[ $# -eq 0 || "$subcommands" == *" $1 "* ]]; then
    exec mirex-vi "$@"
fi

case $# in
    3) exec mirex-vi identify "$1" "$2" "$3" ;;
    4) exec mirex-vi identify "$1" "$2" "$4" --workdir "$3" ;;
    *)
        echo "usage: run.sh COLLECTION QUERIES [WORKDIR] OUTPUT" >&2
        echo "       run.sh {identify|train|extract|evaluate|weights|warmup|index|search} ARGS..." >&2
        exit 2
        ;;
esac
