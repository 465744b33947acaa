"""The ``mirex-vi`` command line: one module per command family; nothing imports them.

``identify`` (the MIREX call, ``warmup``), ``extract``, ``train``, ``evaluate``, ``corpus``,
``weights`` and ``search`` (``index`` and ``search``); ``common`` holds the exit codes,
the error exit and logging. Heavy imports live inside commands so ``--help`` is instant.

Exit codes (``common.EXIT_CODES``): 0 success; 1 a track failed under ``--strict``; 2 bad
input (lists, output location, weights, config), reported before any audio is processed;
3 the result could not be written once the work was done (disk full...; the embedding cache
is kept); 130 interrupted by Ctrl-C; 143 stopped by SIGTERM. Every failure is one
``error: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import click

from .corpus import corpus_command, corpus_real_command
from .download import download
from .evaluate import evaluate
from .extract import extract
from .identify import identify, warmup
from .search import index_group, search_command
from .train import train
from .weights import weights_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mirex-vi")
def main() -> None:
    """Discogs-VINet-MIREX cover song identification: MIREX matrices, training, evaluation."""


for command in (identify, warmup, extract, train, evaluate, corpus_command, corpus_real_command,
                weights_group, index_group, search_command, download):
    main.add_command(command)
