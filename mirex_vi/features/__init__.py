"""Audio -> CQT -> model input, and the stores that keep pooled CQTs.

- ``frontend``: the front end in numpy (librosa, exact) and torch (``TorchFrontEnd``), side by side.
- ``cqt_torch``: a batched constant-Q transform that reproduces ``librosa.cqt`` on a GPU.
- ``tempo``: the pooled time axis resampled: the training stretch and its inference twin.
- ``workers``: decode + CQT in worker processes that die with the parent.
- ``layout``: the authors' on-disk layout (one float16 memmap per version).
- ``pooled``: the pooled store (one array for a whole dataset) and feature sources.
- ``stored``: whole stored tracks as model inputs (validation, evaluation, precise BN).
- ``extract``: a dataset's audio -> a layout folder or a pooled store.
- ``download``: ``mirex-vi download --pooled-store``: fetched audio straight into a store.

Imports: ``io``, ``core``, ``config``. Nothing here knows the model.
"""
