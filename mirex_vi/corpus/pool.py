"""A pool of real recordings: where each file comes from, its licence, its recording and split.

Folders of real recordings (Debian's music packages, or links to their files) are read file
by file. Every audio file gets its source package (``dpkg -S``), its licence (the
``License:`` of the DEP-5 stanza of ``/usr/share/doc/PKG/copyright`` whose ``Files:`` match
it, else the licence named first in that file's text), its duration and its sha256.
Files of ``planetblupi*`` packages are refused: that music is reserved for independent
evaluation. Files that are not audio, not from a package or shorter than a segment are
skipped, each with its reason.

Besides plain audio files (``AUDIO_EXTENSIONS``) the pool reads tracker modules (``.mod``,
``.xm``, ``.it``, ``.s3m``: real productions with their composers' own samples, decoded by
ffmpeg's libopenmpt), the audio members of game archives (``.pk3``, zip files, named
``ARCHIVE!MEMBER``) and headerless PCM of the packages in ``RAW_FORMATS``.

A *recording* is one file, or one Frets on Fire song folder (``song.ogg`` with its
``guitar.ogg``, ``rhythm.ogg``... stems, mixed into one). Its key is its sha256 (for stems,
the sha256 of their sorted digests), and its split is a hash of that key alone, so every
segment of a recording lands in one split whatever the seed or the rest of the pool.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import logging
import os
import re
import subprocess
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from .real_audio import MEMBER_SEP, probe_duration, read_bytes

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".ogg", ".oga", ".opus", ".mp3", ".flac", ".wav", ".m4a")
MODULE_EXTENSIONS = (".mod", ".xm", ".it", ".s3m")
ARCHIVE_EXTENSIONS = (".pk3", ".zip")
# package -> (sample rate, channels) of its headerless unsigned 8-bit ``.raw`` music
# (xblast's sound server plays its songs as 22.05 kHz stereo u8: xbsndsrv.c).
RAW_FORMATS = {"xblast-tnt-musics": (22050, 2)}
RESERVED_PREFIX = "planetblupi"  # reserved for independent evaluation: never in a pool
DOC_ROOT = Path("/usr/share/doc")
# Frets on Fire song folders: the backing track and the instrument stems played with it.
FOF_MIX, FOF_GUITAR = "song", "guitar"
FOF_STEMS = (FOF_MIX, FOF_GUITAR, "rhythm", "drums", "vocals", "keys")
FOF_SKIPPED = ("preview", "crowd")  # a song's preview clip and crowd noise are no stems
SPLITS = ("train", "val", "test")

Lookup = Callable[[Sequence[str]], dict[str, str]]  # real paths -> owning package


@dataclasses.dataclass(frozen=True)
class PoolFile:
    """One audio file of the pool (``path``: the file's real path, or ``ARCHIVE!MEMBER``)."""

    path: str
    package: str
    licence: str
    copyright: str  # the copyright file the licence was read from
    duration_s: float
    sha256: str
    stem: str = ""  # the Frets on Fire stem name ("song", "guitar"...), else ""


@dataclasses.dataclass(frozen=True)
class Recording:
    """One recording: a file, or a Frets on Fire song's stems (mixed into one)."""

    key: str  # sha256 of the file, or of its stems' sorted digests
    files: tuple[PoolFile, ...]

    @property
    def main(self) -> PoolFile:
        """The file that names the recording (a song folder's backing track)."""
        return next((f for f in self.files if f.stem == FOF_MIX), self.files[0])

    @property
    def duration_s(self) -> float:
        return max(f.duration_s for f in self.files)

    @property
    def has_guitar_stem(self) -> bool:
        return any(f.stem == FOF_GUITAR for f in self.files) and len(self.files) > 1


# --- provenance -------------------------------------------------------------------------------


def dpkg_packages(paths: Sequence[str]) -> dict[str, str]:
    """The package that installed each of ``paths`` (real paths; those of no package are
    absent), from ``dpkg -S`` run on batches of paths."""
    owners: dict[str, str] = {}
    for i in range(0, len(paths), 200):
        proc = subprocess.run(["dpkg", "-S", *paths[i:i + 200]], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            package, sep, path = line.partition(": ")
            if sep and not package.startswith("diversion by"):
                owners[path] = package.split(",")[0].split(":")[0].strip()
    return owners


def licence_of(package: str, path: str, doc_root: Path = DOC_ROOT) -> tuple[str, str]:
    """``(licence, copyright file)`` of a file of ``package``.

    A DEP-5 copyright file gives the ``License:`` short name of the last stanza whose
    ``Files:`` patterns match the file's path (matched as a path suffix; an archive member
    as if it lay beside its archive). Another copyright file gives the licence its text
    names first (``LICENCE_WORDS``; see ``_text_licence``), else its
    first line. ValueError if there is none.
    """
    copyright = doc_root / package / "copyright"
    try:
        text = copyright.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise ValueError(f"{path}: package {package} has no readable {copyright} "
                         f"({err.strerror}); its licence cannot be recorded") from None
    if text.startswith("Format:"):
        archive, _, member = path.partition(MEMBER_SEP)
        return _dep5_licence(text, str(Path(archive).parent / member) if member else path), \
            str(copyright)
    return _text_licence(text), str(copyright)


def _dep5_licence(text: str, path: str) -> str:
    found = ""
    for stanza in re.split(r"\n\s*\n", text):
        files = re.search(r"(?m)^Files:(.*(?:\n[ \t].*)*)", stanza)
        licence = re.search(r"(?m)^License:[ \t]*(.*)", stanza)
        if files is None or licence is None or not licence[1].strip():
            continue
        if any(p == "*" or fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path, f"*/{p}")
               for p in files[1].split()):
            found = licence[1].strip()
    return found or "unknown (DEP-5 without a matching Files stanza)"


# Licence names in the words copyright files use, most specific first.
LICENCE_WORDS = (
    (r"creativecommons\.org/licenses/by-sa/(\d\.\d)", "CC-BY-SA-{}"),
    (r"creativecommons\.org/licenses/by/(\d\.\d)", "CC-BY-{}"),
    (r"Creative\s+Commons\s+Attribution[-\s]+Share[-\s]?Alike", "CC-BY-SA"),
    (r"Creative\s+Commons", "CC (see the copyright file)"),
    (r"Permission is hereby granted, free of charge", "Expat"),
    (r"GNU\s+(?:Library|Lesser)\s+General\s+Public\s+License", "LGPL"),
    (r"GNU\s+General\s+Public\s+License|\bGPL\b", "GPL"),
    (r"public domain", "public-domain"),
)
LICENCE_WINDOW = 400  # characters after the first licence words that may name it better


def _text_licence(text: str) -> str:
    """The most specific licence named near the first licence words of ``text`` (upstream's
    licence comes before the packaging's in these files), else its first line."""
    hits = []
    for rank, (pattern, name) in enumerate(LICENCE_WORDS):
        match = re.search(pattern, text, flags=re.IGNORECASE)
        if match:
            hits.append((match.start(), rank, name.format(*match.groups())))
    if hits:
        first = min(start for start, _, _ in hits)
        return min((rank, name) for start, rank, name in hits
                   if start < first + LICENCE_WINDOW)[1] + " (from the text)"
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "empty")
    return first_line[:100]


# --- scanning ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A file (or archive member) found under a pool folder, before its provenance is read."""

    path: str  # real path, or ARCHIVE!MEMBER
    real: str  # the real path of the file (the archive, for a member)
    stem: str = ""


def find_candidates(folders: Iterable[Path]) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Every file under ``folders`` (links followed, each real file once) that may hold
    audio, and ``(path, reason)`` for the others. Archives are opened for their members."""
    found: dict[str, Candidate] = {}
    skipped: list[tuple[str, str]] = []
    for folder in folders:
        for root, _, names in os.walk(folder, followlinks=True):
            for name in sorted(names):
                real = os.path.realpath(os.path.join(root, name))
                for candidate, reason in _classify(real):
                    if candidate is None:
                        skipped.append((real, reason))
                    else:
                        found.setdefault(candidate.path, candidate)
    return sorted(found.values(), key=lambda c: c.path), sorted(set(skipped))


def _classify(real: str) -> Iterator[tuple[Candidate | None, str]]:
    name = os.path.basename(real)
    ext = os.path.splitext(name)[1].lower()
    if any(c in real for c in "\t\n\r"):
        yield None, "a tab or a line break in its name"
    elif ext in ARCHIVE_EXTENSIONS:
        try:
            with zipfile.ZipFile(real) as archive:
                members = sorted(m for m in archive.namelist()
                                 if os.path.splitext(m)[1].lower() in AUDIO_EXTENSIONS)
        except (OSError, zipfile.BadZipFile) as err:
            yield None, f"an unreadable archive ({err})"
            return
        if not members:
            yield None, "an archive without audio members"
        for member in members:
            yield Candidate(f"{real}{MEMBER_SEP}{member}", real), ""
    elif ext in AUDIO_EXTENSIONS + MODULE_EXTENSIONS + (".raw",):
        yield Candidate(real, real, _fof_stem(real)), ""
    else:
        yield None, "not audio (by its extension)"


def _fof_stem(real: str) -> str:
    """The stem name of a file in a Frets on Fire song folder (``song.ogg`` beside a
    ``guitar.ogg``), else ""."""
    folder, name = os.path.split(real)
    stem = os.path.splitext(name)[0].lower()
    is_song = all(os.path.isfile(os.path.join(folder, f"{s}.ogg")) for s in (FOF_MIX, FOF_GUITAR))
    return stem if is_song and stem in FOF_STEMS + FOF_SKIPPED else ""


def check_not_reserved(path: str, package: str) -> None:
    """ValueError for a file of a reserved package (or with the reserved name in its path)."""
    if package.startswith(RESERVED_PREFIX) or RESERVED_PREFIX in path.lower():
        raise ValueError(f"{path}: {package or 'its folder'} is {RESERVED_PREFIX} music, reserved "
                         "for independent evaluation; remove it from the real-audio folders")


def scan(folders: Sequence[Path], min_seconds: float, lookup: Lookup = dpkg_packages,
         doc_root: Path = DOC_ROOT) -> tuple[list[PoolFile], list[tuple[str, str]]]:
    """The pool's audio files (sorted by path) and ``(path, reason)`` of every file skipped.

    Raises:
        ValueError: a folder is missing, or a file belongs to a ``planetblupi*`` package
            (before anything else is read), or a package has no copyright file.
    """
    missing = [str(f) for f in folders if not Path(f).is_dir()]
    if missing:
        raise ValueError(f"{missing[0]}: no such folder of real recordings")
    candidates, skipped = find_candidates(folders)
    owners = lookup(sorted({c.real for c in candidates}))
    for c in candidates:
        check_not_reserved(c.path, owners.get(c.real, ""))
    files: list[PoolFile] = []
    for c in candidates:
        package = owners.get(c.real)
        reason = _skip_reason(c, package)
        if reason is None:
            data = read_bytes(c.path)
            try:
                duration = probe_duration(c.path, data, RAW_FORMATS.get(package))
            except ValueError as err:
                reason = str(err)
            else:
                reason = None if duration >= min_seconds else \
                    f"shorter than a segment ({duration:.1f} s < {min_seconds:g} s)"
        if reason is not None:
            skipped.append((c.path, reason))
            continue
        licence, copyright = licence_of(package, c.path, doc_root)
        files.append(PoolFile(c.path, package, licence, copyright, round(duration, 3),
                              hashlib.sha256(data).hexdigest(), c.stem))
    return files, skipped


def _skip_reason(c: Candidate, package: str | None) -> str | None:
    if package is None:
        return "not from a Debian package (no source or licence to record)"
    if c.stem in FOF_SKIPPED:
        return f"a song folder's {c.stem} track, not a stem of its mix"
    if c.path.lower().endswith(".raw") and package not in RAW_FORMATS:
        return f"headerless audio of an unknown format (known: {', '.join(RAW_FORMATS)})"
    return None


# --- recordings and splits ---------------------------------------------------------------------


def group_recordings(files: Sequence[PoolFile]) -> tuple[list[Recording], list[tuple[str, str]]]:
    """Files -> recordings sorted by key (a song folder's stems make one); ``(path, reason)``
    of files whose content another file of the pool already holds."""
    by_folder: dict[str, list[PoolFile]] = {}
    singles: list[PoolFile] = []
    for f in files:
        if f.stem:
            by_folder.setdefault(os.path.dirname(f.path), []).append(f)
        else:
            singles.append(f)
    recordings, seen, duplicates = [], set(), []
    for stems in by_folder.values():
        key = hashlib.sha256("\n".join(sorted(f.sha256 for f in stems)).encode()).hexdigest()
        recordings.append(Recording(key, tuple(sorted(stems, key=lambda f: f.stem))))
        seen.update(f.sha256 for f in stems)
    for f in singles:
        if f.sha256 in seen:
            duplicates.append((f.path, f"the same content as another file ({f.sha256[:12]})"))
            continue
        seen.add(f.sha256)
        recordings.append(Recording(f.sha256, (f,)))
    return sorted(recordings, key=lambda r: r.key), duplicates


def split_of(key: str, fractions: Sequence[float]) -> str:
    """The split of a recording: a hash of its key alone, cut at the ``fractions``."""
    u = int(hashlib.sha256(f"split\x1f{key}".encode()).hexdigest()[:16], 16) / 2.0**64
    cumulative = 0.0
    for split, fraction in zip(SPLITS, fractions):
        cumulative += fraction
        if u < cumulative:
            return split
    return SPLITS[-1]


def segment_bounds(n_samples: int, sample_rate: int, seconds: tuple[float, float],
                   rng) -> list[tuple[int, int]]:
    """Cut ``n_samples`` into consecutive segments of ``seconds`` (min, max) in length.

    Each length is drawn uniformly from the range; a tail shorter than the minimum joins the
    segment before it where that stays within the maximum, else it is dropped. A recording
    between the minimum and the maximum is one segment.

    Returns:
        ``(start, stop)`` sample indices.
    """
    low, high = (int(round(s * sample_rate)) for s in seconds)
    bounds, start = [], 0
    while n_samples - start >= low:
        length = min(int(rng.integers(low, high + 1)), n_samples - start)
        if n_samples - start - length < low and n_samples - start <= high:
            length = n_samples - start
        bounds.append((start, start + length))
        start += length
    return bounds
