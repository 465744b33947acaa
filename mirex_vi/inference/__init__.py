"""Tracks -> embeddings -> scores: what the MIREX call runs.

- ``settings``: device, AMP, batch size, workers and CQT backend, resolved once.
- ``embed``: decode and CQT in workers, batch the model on a device, at one or several tempi.
- ``cache``: one ``.npy`` per track, keyed by the file and everything that makes its vector.
- ``threads``: the model's thread fed by the main one, and the cache's writer thread.
- ``selfcheck``: before a device's torch CQT is trusted, it is compared with librosa's.
- ``scoring``: embeddings -> MIREX distances, optionally expanded by their neighbours.
- ``identify``: the MIREX job: two lists in, one distance matrix out.

Imports: ``model``, ``features``, ``io``, ``core``, ``config``, ``synth``.
"""
