"""Catalogue search on FAISS (the ``search`` extra): index folders and queries.

- ``faiss_index``: the exact ``flat`` and compressed ``ivfpq`` structures; the one module
  that imports FAISS, with an ImportError that says how to install it.
- ``segments``: every track's segment embeddings (the recipe, the store) and the scores of
  a query's candidates by them, as ``identify`` scores pairs.
- ``folder``: an index folder (index, track table, segments, manifest), replaced atomically.
- ``build``: lists or metadata -> a new index; add, shard and merge.
- ``query``: the top-k tracks of each query, and MAP@k / recall@k of labelled queries.

Imports: ``eval``, ``inference`` and everything below them.
"""
