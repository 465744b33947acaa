"""Which scores make a corpus: music21's collections, the demo pool, ids and the work order.

A work is one score of music21's bundled corpus (one tune of an ABC collection); every
choice here is a hash of the work's key and the seed, so the same options give the same
works, ids and order on any machine.

Three pools of works: "train" (training corpora), "demo" (1 in 16 works of every collection,
by hash, reserved for the demo and never trained on) and "ood" (the held-out collection's
share of the demo pool: works that no corpus of any generator version has trained on, from
a collection that training corpora no longer draw).
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import re
from pathlib import Path
from typing import Iterable, Sequence

# Collection -> share of the selected works (renormalised over the collections present).
# ryansMammoth is reserved for independent evaluation and is never listed here.
# HELD_OUT_COLLECTION stays listed so that the demo pool (and the bundled demo) keeps its works.
COLLECTION_WEIGHTS = {
    "essenFolksong": 24.0, "oneills1850": 12.0, "airdsAirs": 5.0, "miscFolk": 3.0,
    "bach": 18.0, "palestrina": 13.0, "trecento": 5.0, "monteverdi": 4.0, "josquin": 2.0,
    "beethoven": 3.0, "mozart": 3.0, "haydn": 3.0, "schumann_robert": 1.0,
    "schumann_clara": 1.0, "schubert": 0.5, "chopin": 0.5, "corelli": 0.5, "handel": 0.5,
    "joplin": 0.5, "verdi": 0.5, "weber": 0.5, "cpebach": 0.5, "beach": 0.5, "luca": 0.5,
    "lusitano": 0.5, "ciconia": 0.5, "liliuokalani": 0.5, "johnson_j_r": 0.5,
}
EXCLUDED_FILES = re.compile(r"(^|/)(test[^/]*|variant[^/]*)\.abc$")  # Essen test sets, variants
SCORE_EXTENSIONS = (".mxl", ".xml", ".musicxml", ".krn", ".abc")  # preference order per stem
DEMO_MODULUS = 16  # works whose key hashes to 0 mod this are reserved for --demo
# Kept out of training corpora from generator version 2 on. music21's nottingham-dataset,
# the first choice, holds 2 tunes; the unused collections all together fewer than 30. Of
# O'Neill's 1850 Irish tunes, version 1's corpora trained on some, but never on the 120 of
# the demo pool, and those make the out-of-distribution set.
HELD_OUT_COLLECTION = "oneills1850"


@dataclasses.dataclass(frozen=True)
class WorkRef:
    """A score in music21's corpus: a file, and for ABC collections the tune's block index."""

    path: str  # relative to music21's corpus root, e.g. "bach/bwv66.6.mxl"
    number: int | None = None

    @property
    def key(self) -> str:
        return self.path if self.number is None else f"{self.path}#{self.number}"

    @property
    def collection(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def source(self) -> str:
        """The ``source`` field of its versions' metadata records."""
        return f"music21:{self.key}"

    @classmethod
    def from_source(cls, source: str) -> "WorkRef":
        """The work a ``source`` field names; ValueError if it is not ``music21:PATH[#N]``."""
        match = re.fullmatch(r"music21:([^#]+)(?:#(\d+))?", source)
        if match is None:
            raise ValueError(f"source {source!r} is not a music21 score (music21:PATH[#N])")
        return cls(match[1], None if match[2] is None else int(match[2]))


def stable_int(*parts: object) -> int:
    """A 64-bit integer hashed from ``parts`` (stable across runs, unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def youtube_id(seed: int, work_key: str, version: int) -> str:
    """An 11-character id over [A-Za-z0-9_-], hashed from the seed, work and version."""
    digest = hashlib.sha256(f"{seed}\x1f{work_key}\x1f{version}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:11]


def is_demo_work(ref: WorkRef) -> bool:
    """Whether a work belongs to the demo pool (disjoint from every training corpus)."""
    return stable_int("demo-pool", ref.key) % DEMO_MODULUS == 0


def corpus_root() -> Path:
    """Folder of music21's bundled corpus."""
    from music21 import corpus

    return Path(corpus.__file__).resolve().parent


def split_abc(text: str) -> tuple[str, list[str]]:
    """Split ABC text into its file header and its tunes (each starting at ``X:``)."""
    blocks = re.split(r"(?m)^(?=X:)", text)
    return blocks[0], [b for b in blocks[1:] if b.strip()]


def read_text(path: Path) -> str:
    """Read a score file as text (UTF-8, else Latin-1)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def pool_collections(pool: str, collections: Iterable[str] = COLLECTION_WEIGHTS) -> set[str]:
    """The music21 folders that ``pool`` ("train", "demo" or "ood") draws from.

    ``collections`` limits "train" and "demo" (to a subset of COLLECTION_WEIGHTS); "train"
    never includes the held-out collection, and "ood" is only that collection.

    Raises:
        ValueError: a name outside COLLECTION_WEIGHTS, or "train" left with no collection.
    """
    if pool == "ood":
        return {HELD_OUT_COLLECTION}
    unknown = sorted(set(collections) - set(COLLECTION_WEIGHTS))
    if unknown:
        raise ValueError(f"collections {', '.join(unknown)}: not among the generator's "
                         f"({', '.join(COLLECTION_WEIGHTS)})")
    allowed = set(collections) - ({HELD_OUT_COLLECTION} if pool == "train" else set())
    if not allowed:
        raise ValueError(f"collections: {HELD_OUT_COLLECTION} is held out of training corpora "
                         "(it makes the out-of-distribution set, --ood)")
    return allowed


def list_candidates(root: Path, pool: str, collections: Iterable[str] = COLLECTION_WEIGHTS) -> list[WorkRef]:
    """All usable works under ``root``, sorted, from the ``pool`` "train", "demo" or "ood".

    One file per stem (``x.mxl`` wins over ``x.krn``); ABC files expand into their tunes.
    ``collections`` limits the source folders (see ``pool_collections``).
    """
    allowed = pool_collections(pool, collections)
    stems: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if (path.suffix not in SCORE_EXTENSIONS or rel.split("/", 1)[0] not in allowed
                or EXCLUDED_FILES.search(rel)):
            continue
        stem = rel[: -len(path.suffix)]
        if stem not in stems or SCORE_EXTENSIONS.index(path.suffix) < SCORE_EXTENSIONS.index(
                stems[stem].suffix):
            stems[stem] = path
    refs: list[WorkRef] = []
    for stem in sorted(stems):
        path = stems[stem]
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".abc":
            refs.extend(WorkRef(rel, i) for i in range(len(split_abc(read_text(path))[1])))
        else:
            refs.append(WorkRef(rel))
    want_demo = pool != "train"
    return [r for r in refs if is_demo_work(r) == want_demo]


def order_candidates(refs: Sequence[WorkRef], seed: int) -> list[WorkRef]:
    """Weighted random order: each collection's expected share follows COLLECTION_WEIGHTS.

    Weighted sampling without replacement (Efraimidis-Spirakis keys u**(1/w)), with each
    work's weight its collection's weight divided by the collection's size.
    """
    sizes: dict[str, int] = {}
    for ref in refs:
        sizes[ref.collection] = sizes.get(ref.collection, 0) + 1
    keyed = []
    for ref in refs:
        weight = COLLECTION_WEIGHTS[ref.collection] / sizes[ref.collection]
        u = (stable_int("order", seed, ref.key) + 1) / 2.0**64
        keyed.append((math.log(u) / weight, ref.key, ref))
    return [ref for _, _, ref in sorted(keyed, key=lambda item: item[:2], reverse=True)]

