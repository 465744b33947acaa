"""Discogs-VI-YT metadata and the audio it names (no torch): splits, versions, audio paths.

Metadata (docs/REFERENCE.md §6) comes as the "light" JSON object (``.train/.val/.test``
splits) or as the full JSONL; both become ``{clique_id: [Version, ...]}``. Features and
audio are looked up by a version's YouTube id: ``audio/<id[:2]>/<id>.<ext>`` under an audio
root, or the file names' stems of a plain list.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .lists import read_list

log = logging.getLogger(__name__)


AUDIO_EXTENSIONS = (".mp4", ".m4a", ".webm", ".flac", ".wav", ".ogg", ".mp3", ".opus")


def items_from_metadata(metadata: Path, audio_root: Path) -> list[tuple[str, Path]]:
    """``(youtube_id, audio path)`` of every version in a Discogs-VI-YT metadata file.

    Audio is looked up as ``<audio_root>/audio/<id[:2]>/<id>.<ext>`` (any common
    extension); a version with no file is kept with the expected ``.mp4`` path, so it is
    reported as missing rather than silently dropped.
    """

    items = []
    for versions in read_metadata(metadata).values():
        for v in versions:
            folder = audio_root / "audio" / v.youtube_id[:2]
            found = [folder / f"{v.youtube_id}{ext}" for ext in AUDIO_EXTENSIONS
                     if (folder / f"{v.youtube_id}{ext}").is_file()]
            items.append((v.youtube_id, found[0] if found else folder / f"{v.youtube_id}.mp4"))
    return items


def items_from_list(list_file: Path) -> list[tuple[str, Path]]:
    """``(stem, path)`` per line of a plain list (relative paths against the list's folder).

    Raises:
        ValueError: two files share a stem, so their features would collide; or a stem
            starts with ``..``, which would store its features above the output folder
            (the layout's ``<id[:2]>/``).
    """
    paths = read_list(list_file).paths
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem.startswith(".."):
            raise ValueError(f"{list_file}: {path}: the id {path.stem!r} cannot name features "
                             "(it starts with '..'); rename the file")
        if path.stem in seen:
            raise ValueError(f"{list_file}: {seen[path.stem]} and {path} share the id {path.stem!r}")
        seen[path.stem] = path
    return list(seen.items())


Cliques = dict[str, list["Version"]]


@dataclass(frozen=True)
class Version:
    """One version (track) of a clique; its features are stored under ``youtube_id``."""

    clique_id: str
    version_id: str
    youtube_id: str


# --- metadata -----------------------------------------------------------------------------


def read_metadata(path: str | Path) -> Cliques:
    """Read the light JSON (any split) or the JSONL into ``{clique_id: [Version, ...]}``.

    The format is told from the content: a first line that is a whole JSON object with a
    ``clique_id`` key means JSONL, anything else is read as one JSON object. In the JSONL
    the YouTube id is the ``v=`` parameter of the first ``youtube_video`` URL; versions
    without a video are skipped (and counted in the log).

    Raises:
        ValueError: naming the file, when it is not UTF-8 JSON or JSONL of that shape (a
            field missing or not a string, a YouTube id that cannot name a feature file).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        try:
            head = json.loads(first)
        except json.JSONDecodeError:
            head = None
        if isinstance(head, dict) and "clique_id" in head:
            cliques = _read_jsonl(path)
        else:
            with open(path, encoding="utf-8") as f:
                cliques = _read_light(json.load(f))
    except ValueError as err:  # not UTF-8, not JSON, or not of the shape above
        raise ValueError(f"{path}: not Discogs-VI-YT metadata ({err})") from err
    log.info("%s: %d cliques, %d versions", path.name, len(cliques), count_versions(cliques))
    return cliques


def _read_light(data: object) -> Cliques:
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object {clique_id: [versions]}")
    return {cid: [_version(cid, v, _text(v, "youtube_id", f"clique {cid!r}"))
                  for v in _versions(cid, versions)]
            for cid, versions in data.items()}


def _read_jsonl(path: Path) -> Cliques:
    cliques: Cliques = {}
    skipped = 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                cid = _text(row, "clique_id", "a row")
                cliques[cid] = []
                for v in _versions(cid, row.get("versions")):
                    videos = v.get("youtube_video") if isinstance(v, dict) else None
                    if not videos:
                        skipped += 1
                        continue
                    url = _text(videos[0] if isinstance(videos, list) else None, "url",
                                f"clique {cid!r}")
                    cliques[cid].append(_version(cid, v, youtube_id_from_url(url)))
            except ValueError as err:
                raise ValueError(f"line {number}: {err}") from err
    if skipped:
        log.info("%s: %d versions have no YouTube video and were skipped", path.name, skipped)
    return cliques


def _versions(clique_id: str, versions: object) -> list:
    if not isinstance(versions, list):
        raise ValueError(f"clique {clique_id!r}: expected a list of versions")
    return versions


def _text(record: object, key: str, where: str) -> str:
    """``record[key]``, which must be a non-empty string (``where`` names the record)."""
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {key!r} missing or not a non-empty string")
    return value


def _version(clique_id: str, record: object, youtube_id: str) -> Version:
    """The version ``record`` of a clique; its YouTube id must be usable as a file name
    (features are stored as ``<id[:2]>/<id>.mm``): no ``/``, control character or leading dot."""
    if youtube_id.startswith(".") or any(c in youtube_id for c in "/\0\t\n\r"):
        raise ValueError(f"clique {clique_id!r}: youtube_id {youtube_id!r} cannot name a "
                         "feature file")
    return Version(clique_id, _text(record, "version_id", f"clique {clique_id!r}"), youtube_id)


def youtube_id_from_url(url: str) -> str:
    """``https://www.youtube.com/watch?v=ID[&...]`` -> ``ID``.

    Raises:
        ValueError: the URL carries no ``v=`` parameter.
    """
    from urllib.parse import parse_qs, urlparse

    ids = parse_qs(urlparse(url).query).get("v")
    if not ids or not ids[0]:
        raise ValueError(f"no YouTube id in URL {url!r}")
    return ids[0]


def count_versions(cliques: Cliques) -> int:
    return sum(len(v) for v in cliques.values())
