"""Files in and out, without torch: audio, track lists, labels, metadata, the MIREX matrix.

- ``audio``: decode any file to mono float32 at a sample rate; file identities for caches.
- ``lists``: MIREX list files, ``path<TAB>clique`` labels, the errors file of skipped tracks.
- ``outputs``: an output location checked before the work (not an input, writable, short enough).
- ``matrix``: the distance matrix, written atomically row by row and read back.
- ``metadata``: Discogs-VI-YT light JSON / JSONL as ``{clique: [Version]}``, and audio paths.
- ``download``, ``ytdlp``: a dataset's audio fetched with yt-dlp into the layout ``extract`` reads.

Imports: ``core`` (and ``config``).
"""
