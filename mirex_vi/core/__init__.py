"""Process plumbing that knows nothing of audio or models.

- ``atomic``: files written through a temporary and renamed into place; stale temporaries swept.
- ``lock``: one writer at a time in a folder (``flock``), the next refused at once.
- ``runtime``: device selection, AMP (fp16 autocast on CUDA only), tolerances, device limits.
- ``lifeline``, ``forkserver_preload``: helper processes that die with their parent.

Imports: the standard library, numpy and torch only; nothing else of ``mirex_vi``.
"""
