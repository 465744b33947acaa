"""New versions and new works for a kept corpus, rendered by the current generator.

A corpus kept as features only (a pooled store with its metadata, such as the 4,000-work
corpus of the shipped weights, rendered by generator version 1) cannot grow in place, but
it can grow in two directions:
- its cliques gain versions that the current generator draws (sung melodies, bands,
  codecs, changed forms): versions that change texture, which the kept versions lack;
- new works join as new cliques: the training pool's works in the seed's order, skipping
  every work the corpus holds and every melody opening it already has.
Each kept clique keeps its id and its split. An added version's index continues after its
clique's highest, and a new clique's number after the corpus's highest, so no id collides
with a kept one.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..core.atomic import remove_stale_temporaries
from . import soundfonts
from .catalogue import (COLLECTION_WEIGHTS, corpus_root, list_candidates, order_candidates,
                        youtube_id)
from .driver import (check_tools, default_mix, group_cliques, parallel_map, pick_works,
                     read_splits, render_tasks, split_cliques, write_json, write_metadata)
from .render import Task
from .rerender import load_works, read_records, version_index
from .scores import Work
from .versions import Mix

MakeTask = Callable[[Work, int, str], Task]  # (work, version index, clique id) -> its Task
LIGHT_SUFFIX = "-light.json"


def added_version_id(clique: str, version: int) -> str:
    """The ``version_id`` of an added version: its clique and its 1-based index."""
    return f"{clique}-V{version + 1}"


def extension_tasks(cliques: dict[str, list[dict]], works: dict[str, Work], versions_per_work: int,
                    seed: int, make_task: MakeTask) -> list[Task]:
    """The tasks that bring every clique up to ``versions_per_work`` versions (maybe none).

    Raises ValueError if a record is not a version of its work under ``seed``.
    """
    tasks = []
    for clique, versions in cliques.items():
        work = works[versions[0]["source"]]
        if any(v["source"] != work.ref.source for v in versions):
            raise ValueError(f"clique {clique} holds versions of more than one work")
        top = max(version_index(seed, work, v["youtube_id"]) for v in versions)
        tasks += [make_task(work, k, clique) for k in range(top + 1, top + 1 + versions_per_work - len(versions))]
    return tasks


def corpus_splits(metadata: Path, cliques: dict[str, list[dict]]) -> dict[str, str]:
    """Clique -> split of a whole corpus, from the split files beside its ``<name>-light.json``.

    New works must be checked against every work of the corpus, held-out ones included, so
    ValueError unless ``metadata`` is such a file and its split files cover all its cliques.
    """
    splits = read_splits(metadata.parent, metadata.name.removesuffix(LIGHT_SUFFIX))
    if not metadata.name.endswith(LIGHT_SUFFIX) or splits.keys() != cliques.keys():
        raise ValueError(f"{metadata}: adding works needs a whole corpus, its <name>{LIGHT_SUFFIX} "
                         f"with the .train/.val/.test split files beside it covering all its "
                         f"{len(cliques)} cliques (so that no new work repeats a held-out one)")
    return splits


def new_work_tasks(kept: Sequence[Work], n_new: int, first_clique: int, versions_per_work: int,
                   seed: int, make_task: MakeTask, mapper, quiet: bool,
                   collections: Iterable[str] = COLLECTION_WEIGHTS) -> list[Task]:
    """``versions_per_work`` tasks for each of ``n_new`` works new to a corpus holding ``kept``,
    drawn from ``collections``, as cliques numbered from ``first_clique`` (fewer works if
    the pool runs out)."""
    root = corpus_root()
    sources = {work.ref.source for work in kept}
    candidates = [ref for ref in order_candidates(list_candidates(root, "train", collections), seed)
                  if ref.source not in sources]
    works = pick_works(candidates, n_new, root, mapper, quiet, taken=kept)
    return [make_task(work, k, f"C-{first_clique + i:07d}")
            for i, work in enumerate(works) for k in range(versions_per_work)]


def next_clique_number(cliques: dict[str, list[dict]]) -> int:
    """One past the highest ``C-<number>`` clique id; ValueError for other ids."""
    try:
        return 1 + max(int(c.removeprefix("C-")) for c in cliques)
    except ValueError:
        raise ValueError("adding works needs the generator's clique ids (C-<number>)") from None


def extend(metadata: Path, out_dir: Path, versions_per_work: int, seed: int, seconds: float,
           jobs: int = 1, mix: Mix | None = None, soundfont_dir: Path = soundfonts.SOUNDFONT_ROOT,
           overwrite: bool = False, quiet: bool = False, works: int = 0,
           fractions: Sequence[float] = (0.8, 0.1, 0.1),
           collections: Iterable[str] = COLLECTION_WEIGHTS) -> dict[str, list[dict]]:
    """Render new versions, and with ``works`` new works, of the corpus ``metadata`` lists.

    Every clique is brought up to ``versions_per_work`` versions, drawn by this generator
    with ``mix`` (default: the training mix) under ``seed`` (the seed that made the corpus,
    checked against every kept version's id). ``works`` above the number of cliques adds that
    many cliques in all, each a new work from ``collections`` with ``versions_per_work``
    versions; they are split by ``fractions`` (kept cliques keep their splits), which needs
    the whole corpus (``corpus_splits``). The result is written to ``out_dir`` under
    ``metadata``'s file name (with the split files when works were added), never over
    ``metadata`` itself; only the added versions' audio is in ``out_dir``; versions that fail
    to render are left out (``merge_rendered``). ValueError for bad options or nothing to
    add. Returns the result.
    """
    out_meta = out_dir / metadata.name
    if out_meta.exists() and out_meta.resolve() == metadata.resolve():
        raise ValueError(f"{out_meta} would replace the metadata it extends: choose another OUT_DIR")
    cliques = read_records(metadata)
    n_new = max(0, works - len(cliques))
    if not n_new and all(len(versions) >= versions_per_work for versions in cliques.values()):
        raise ValueError(f"every clique already has {versions_per_work} or more versions and no "
                         "work is added: give a larger --versions-per-work or --works")
    kept_splits = corpus_splits(metadata, cliques) if n_new else {}
    mix = mix or default_mix("train")
    check_tools(mix, "train", soundfont_dir)
    make_task = functools.partial(_make_task, seed=seed, seconds=seconds, out_dir=out_dir,
                                  soundfont_dir=soundfont_dir, overwrite=overwrite, mix=mix)
    with parallel_map(jobs) as mapper:
        kept = load_works(cliques, mapper, quiet)
        tasks = extension_tasks(cliques, kept, versions_per_work, seed, make_task)
        if n_new:
            tasks += new_work_tasks(list(kept.values()), n_new, next_clique_number(cliques),
                                    versions_per_work, seed, make_task, mapper, quiet, collections)
        if not tasks:
            raise ValueError("the training pool holds no work that the corpus lacks")
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)
        records = render_tasks(tasks, mapper, quiet)
    extended = merge_rendered(cliques, tasks, records)
    if n_new:
        splits = split_cliques(list(extended), fractions, seed, kept_splits)
        write_metadata(out_dir, metadata.name.removesuffix(LIGHT_SUFFIX), extended, splits)
    else:
        write_json(out_meta, extended)
    return extended


def merge_rendered(cliques: dict[str, list[dict]], tasks: Sequence[Task],
                   records: Sequence[dict | None]) -> dict[str, list[dict]]:
    """The kept cliques with their rendered added versions, then the new cliques.

    A version that failed to render (``render_version`` logs it) is left out, and a new
    clique left with fewer than two versions is dropped (``group_cliques``): one bad score
    must not cost the rest of a long render.
    """
    merged = {clique: list(versions) for clique, versions in cliques.items()}
    new_tasks, new_records = [], []
    for task, record in zip(tasks, records):
        if task.clique_id not in cliques:
            new_tasks.append(task)
            new_records.append(record)
        elif record is not None:
            merged[task.clique_id].append(record)
    return merged | group_cliques(new_tasks, new_records)


def _make_task(work: Work, version: int, clique: str, *, seed: int, seconds: float, out_dir: Path,
               soundfont_dir: Path, overwrite: bool, mix: Mix) -> Task:
    return Task(work, version, clique, added_version_id(clique, version),
                youtube_id(seed, work.ref.key, version), seed, seconds, out_dir, soundfont_dir,
                overwrite, mix)
