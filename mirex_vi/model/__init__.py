"""CQT-Net and its weight packages.

- ``cqtnet``: the network (docs/REFERENCE.md §2): ``(B, 1, 84, T')`` -> ``(B, 512)`` unit vectors.
- ``weights``: packages (``model.safetensors`` + ``config.json`` + card + sha256 sums),
  verified before every load; the authors' ``.pth`` read without unpickling code.
- ``packaging``: writing packages: import/export ``.pth``, copy, derive (recalibrate, whiten).

Imports: ``core`` and ``config`` only.
"""
