"""The corpus driver: pick works, render their versions in parallel, write the metadata."""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import multiprocessing
import shutil
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..core.atomic import atomic_open, remove_stale_temporaries
from . import soundfonts
from .catalogue import (COLLECTION_WEIGHTS, WorkRef, corpus_root, list_candidates,
                        order_candidates, youtube_id)
from .render import Task, render_version
from .scores import Work, load_work
from .versions import CLASSIC_MIX, DEMO_OVERRIDES, GENERATOR_VERSION, PREVIOUS_GENERATORS, Mix

log = logging.getLogger(__name__)

def _load(args: tuple[WorkRef, Path]) -> Work | None:
    return load_work(*args)


def pick_works(candidates: Iterable[WorkRef], n_works: int, root: Path, mapper,
               quiet: bool = False, taken: Iterable[Work] = ()) -> list[Work]:
    """The first ``n_works`` candidates that load and whose melody opening is new (also
    against the ``taken`` works of a corpus being grown).

    Candidates are parsed in batches through ``mapper`` (an order-keeping, possibly
    parallel ``map``), so the result does not depend on the number of processes.
    """
    from tqdm import tqdm

    chosen: list[Work] = []
    seen = {work.fingerprint() for work in taken}
    it: Iterator[WorkRef] = iter(candidates)
    while len(chosen) < n_works:
        batch = [(ref, root) for ref in itertools.islice(it, max(8, int((n_works - len(chosen)) * 1.3)))]
        if not batch:
            log.warning("only %d works available", len(chosen))
            break
        for work in tqdm(mapper(_load, batch), total=len(batch), desc="parse", unit="score",
                         disable=quiet, file=sys.stderr):
            if work is None or work.fingerprint() in seen or len(chosen) >= n_works:
                continue
            seen.add(work.fingerprint())
            chosen.append(work)
    return chosen


def split_cliques(clique_ids: Sequence[str], fractions: Sequence[float], seed: int,
                  kept: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Shuffle cliques with the seed and cut them into train/val/test by ``fractions``.

    ``kept`` (clique -> split, from an earlier run into the same folder) pins those cliques
    to their split; only the others are shuffled and cut, so growing a corpus never moves a
    held-out clique into training. With three or more new cliques, val and test get at least
    one of them each.
    """
    present = set(clique_ids)
    kept = {c: s for c, s in (kept or {}).items() if c in present}
    ids = [c for c in clique_ids if c not in kept]
    np.random.default_rng([seed, 1]).shuffle(ids)
    n = len(ids)
    n_val, n_test = (round(n * f) for f in fractions[1:3])
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    n_train = max(0, n - n_val - n_test)
    cuts = {"train": ids[:n_train], "val": ids[n_train:n_train + n_val],
            "test": ids[n_train + n_val:]}
    for clique, split in kept.items():
        cuts[split].append(clique)
    return {name: sorted(part) for name, part in cuts.items()}


def existing_splits(out_dir: Path, name: str, sources: dict[str, str]) -> dict[str, str]:
    """Clique -> split of an earlier corpus in ``out_dir`` (empty if there is none).

    ``sources`` maps the clique ids about to be made to their ``music21:`` sources. Raises
    ValueError if an earlier clique id now names another work: the folder was made with other
    options, and keeping its splits would mix works across them.
    """
    previous_path = out_dir / f"{name}-light.json"
    if not previous_path.exists():
        return {}
    previous = json.loads(previous_path.read_text(encoding="utf-8"))
    for clique in sorted(previous.keys() & sources.keys()):
        if previous[clique][0]["source"] != sources[clique]:
            raise ValueError(f"{previous_path}: clique {clique} is {previous[clique][0]['source']} "
                             f"there but {sources[clique]} now; the folder was made with other "
                             "options (seed, collections): use a new one")
    return read_splits(out_dir, name)


def read_splits(folder: Path, name: str) -> dict[str, str]:
    """Clique -> split from the ``<name>-light.json.<split>`` files in ``folder`` (those present)."""
    splits = {}
    for split in ("train", "val", "test"):
        path = folder / f"{name}-light.json.{split}"
        if path.exists():
            splits.update(dict.fromkeys(json.loads(path.read_text(encoding="utf-8")), split))
    return splits


def check_generator_version(out_dir: Path, name: str) -> None:
    """Refuse a folder whose metadata another generator version wrote.

    Growing it would mix renders of two generators under one seed. Records without a
    ``generator_version`` field count as version 1. Raises ValueError (a one-line message).
    """
    path = out_dir / f"{name}-light.json"
    if not path.exists():
        return
    previous = json.loads(path.read_text(encoding="utf-8"))
    found = {v.get("generator_version", 1) for versions in previous.values() for v in versions}
    other = sorted(found - {GENERATOR_VERSION})
    if other:
        older = PREVIOUS_GENERATORS.get(other[0], "that version")
        raise ValueError(f"{path}: made by corpus generator version {other[0]}, this is version "
                         f"{GENERATOR_VERSION}; grow it with {older} or use a new folder")


def pool_of(demo: bool, ood: bool) -> str:
    """The pool of works the flags choose; ValueError for both."""
    if demo and ood:
        raise ValueError("--demo and --ood draw from different pools: choose one")
    return "demo" if demo else "ood" if ood else "train"


def default_mix(pool: str) -> Mix:
    """The mix of a pool: the demo renders as generator version 1 did (the bundled demo stays
    reproducible), the out-of-distribution set with the held-out soundfont."""
    return {"demo": CLASSIC_MIX, "ood": Mix(soundfonts.HELD_OUT)}.get(pool, Mix())


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """What ``build_corpus`` makes: the works, their versions, the splits and how it runs.

    ``mix`` (None: the pool's, see ``default_mix``) sets the soundfonts and the
    probabilities of the version-2 features; ``fractions`` are the train/val/test shares of
    cliques; ``collections`` limits the music21 folders drawn from. ValueError for both
    ``demo`` and ``ood``.
    """

    n_works: int = 360
    versions_per_work: int = 4
    seconds: float = 60.0  # mean clip length (±15 %)
    seed: int = 27
    fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
    jobs: int = 1
    name: str = "Synth-VI-YT"  # metadata file prefix
    demo: bool = False
    ood: bool = False
    mix: Mix | None = None
    collections: tuple[str, ...] = tuple(COLLECTION_WEIGHTS)
    soundfont_dir: Path = soundfonts.SOUNDFONT_ROOT
    overwrite: bool = False  # re-render existing audio files
    quiet: bool = False  # no progress bars

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", tuple(self.fractions))
        object.__setattr__(self, "collections", tuple(self.collections))
        pool_of(self.demo, self.ood)  # both: refused here

    @property
    def pool(self) -> str:
        """The pool of works: "demo", "ood" or "train"."""
        return pool_of(self.demo, self.ood)

    @property
    def render_mix(self) -> Mix:
        """``mix``, or the pool's when it is None."""
        return self.mix or default_mix(self.pool)


def check_tools(mix: Mix, pool: str, soundfont_dir: Path) -> None:
    """Raise RuntimeError for a missing program or soundfont, and ValueError if a corpus
    other than the out-of-distribution set would render with the held-out soundfont."""
    if shutil.which("fluidsynth") is None:
        raise RuntimeError("fluidsynth not found: apt-get install fluidsynth")
    if mix.p_codec > 0 and shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg not found (for the codec pass): apt-get install ffmpeg")
    packages = soundfonts.missing(mix.soundfonts, soundfont_dir)
    if packages:
        raise RuntimeError(f"soundfonts missing under {soundfont_dir}: apt-get install {' '.join(packages)}")
    if pool != "ood":
        soundfonts.check_not_held_out(mix.soundfonts, soundfont_dir)


def write_json(path: Path, obj: object, lines: bool = False) -> None:
    """Write JSON (or JSON lines from a list) atomically (``atomic_open``)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        if lines:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in obj)
        else:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))


def write_metadata(out_dir: Path, name: str, cliques: dict[str, list[dict]],
                   splits: dict[str, list[str]]) -> None:
    """``<name>-light.json`` (+ split files) and ``<name>.jsonl`` in the Discogs-VI-YT format."""
    write_json(out_dir / f"{name}-light.json", cliques)
    for split, ids in splits.items():
        write_json(out_dir / f"{name}-light.json.{split}", {c: cliques[c] for c in ids})
    rows = [{"clique_id": c, "versions": [
        {"version_id": v["version_id"],
         "tracks": [{"track_title": v["track_title"], "artists": [v["composer"]], "source": v["source"]}],
         "youtube_video": [{"url": f"https://www.youtube.com/watch?v={v['youtube_id']}",
                            "source": "synthetic"}]} for v in versions]}
        for c, versions in cliques.items()]
    write_json(out_dir / f"{name}.jsonl", rows, lines=True)


def write_demo_lists(out_dir: Path, cliques: dict[str, list[dict]]) -> None:
    """collection.txt, queries.txt (same tracks) and labels.tsv, paths relative to out_dir."""
    rows = [(v["audio_path"], c) for c, versions in cliques.items() for v in versions]
    paths = "".join(f"{p}\n" for p, _ in rows)
    texts = {"collection.txt": paths, "queries.txt": paths,
             "labels.tsv": "".join(f"{p}\t{c}\n" for p, c in rows)}
    for list_name, text in texts.items():
        with atomic_open(out_dir / list_name, "w", encoding="utf-8") as f:
            f.write(text)


def group_cliques(tasks: Sequence[Task], records: Sequence[dict | None]) -> dict[str, list[dict]]:
    """Clique -> rendered version records; cliques left with fewer than two are dropped."""
    cliques: dict[str, list[dict]] = {}
    for task, record in zip(tasks, records):
        if record is not None:
            cliques.setdefault(task.clique_id, []).append(record)
    small = [c for c, versions in cliques.items() if len(versions) < 2]
    if small:
        log.warning("dropping %d cliques with fewer than 2 versions", len(small))
    return {c: v for c, v in cliques.items() if len(v) >= 2}


@contextlib.contextmanager
def parallel_map(jobs: int) -> Iterator:
    """An order-keeping ``map`` over ``jobs`` processes (the built-in ``map`` for one)."""
    if jobs <= 1:
        yield map
        return
    pool = multiprocessing.Pool(jobs)
    try:
        yield pool.imap
    finally:
        pool.close()
        pool.join()


def check_rendered(tasks: Sequence[Task], records: Sequence[dict | None]) -> None:
    """RuntimeError naming the first of ``tasks`` whose version failed to render."""
    failed = [t.youtube_id for t, r in zip(tasks, records) if r is None]
    if failed:
        raise RuntimeError(f"{len(failed)} versions failed to render (first: {failed[0]}); "
                           "the others are in place")


def render_tasks(tasks: Sequence[Task], mapper, quiet: bool) -> list[dict | None]:
    """Render ``tasks`` through ``mapper`` with a progress bar; their records (None: failed)."""
    from tqdm import tqdm

    return list(tqdm(mapper(render_version, tasks), total=len(tasks), desc="render", unit="clip",
                     disable=quiet, file=sys.stderr))


def build_corpus(out_dir: Path, spec: CorpusSpec) -> dict[str, list[dict]]:
    """Make the corpus ``spec`` describes in ``out_dir``; returns the clique -> versions
    mapping that was written (RuntimeError, and no metadata, if no work kept two rendered
    versions).

    Cliques keep at least two rendered versions (others are dropped and logged). A demo
    spec draws from the reserved demo pool, renders as generator version 1 did at 22.05 kHz
    mono without added noise, and writes the MIREX-style lists. An ``ood`` spec draws the
    held-out collection's works that no corpus trained on and renders them with the held-out
    soundfont.
    """
    mix = spec.render_mix
    check_tools(mix, spec.pool, spec.soundfont_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_generator_version(out_dir, spec.name)
    remove_stale_temporaries(out_dir)
    root = corpus_root()
    candidates = order_candidates(list_candidates(root, spec.pool, spec.collections), spec.seed)
    log.info("%d candidate works in the %s pool", len(candidates), spec.pool)
    n = spec.versions_per_work
    with parallel_map(spec.jobs) as mapper:
        works = pick_works(candidates, spec.n_works, root, mapper, spec.quiet)
        clique_ids = [f"C-{i + 1:07d}" for i in range(len(works))]
        kept = existing_splits(out_dir, spec.name,
                               {c: work.ref.source for c, work in zip(clique_ids, works)})
        tasks = [Task(work, k, clique_ids[i], f"V-{i * n + k + 1:07d}",
                      youtube_id(spec.seed, work.ref.key, k), spec.seed, spec.seconds, out_dir,
                      spec.soundfont_dir, spec.overwrite, mix, DEMO_OVERRIDES if spec.demo else ())
                 for i, work in enumerate(works) for k in range(n)]
        records = render_tasks(tasks, mapper, spec.quiet)
    cliques = group_cliques(tasks, records)
    if not cliques:
        raise RuntimeError(f"no work kept two rendered versions (the warnings say why): no "
                           f"metadata written to {out_dir}")
    write_metadata(out_dir, spec.name, cliques,
                   split_cliques(list(cliques), spec.fractions, spec.seed, kept))
    if spec.demo:
        write_demo_lists(out_dir, cliques)
    return cliques
