"""``python -m mirex_vi`` (and ``torchrun -m mirex_vi train ...``) run the command line."""

from .cli import main

main()
