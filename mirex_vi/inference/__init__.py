"""Tracks -> embeddings -> scores: what the MIREX call runs.

- ``settings``: device, AMP, batch size, workers and CQT backend, resolved once.
- ``embed``: model inputs -> embeddings, in batches of equal length, at one or several tempi.
- ``tracks``: audio files -> embeddings: decode and CQT in workers, the device's front end,
  the model's batches (``embed``), the cache.
- ``cache``: one ``.npy`` per track, keyed by the file and everything that makes its vector.
- ``threads``: the model's thread fed by the main one, and the cache's writer thread.
- ``selfcheck``: before a device's torch CQT is trusted, it is compared with librosa's.
- ``scoring``: embeddings -> MIREX distances, optionally expanded by their neighbours.
- ``recipe``: a package's scoring recipe: what each track keeps besides its vector, and
  how rows of scores are re-scored with it (``segments``: windows of a track and the
  rules over them; ``align``: the chroma alignment re-rank).
- ``identify``: the MIREX job: two lists in, one distance matrix out.

Imports: ``model``, ``features``, ``io``, ``core``, ``config``, ``synth``.
"""
