"""New versions of a kept corpus's works, rendered by the current generator.

A corpus kept as features (../shared/corpus/synth-vi-4000: generator version 1) cannot
grow in place, but its cliques can gain versions that the current generator draws (sung
melodies, bands, codecs, changed forms): versions that change texture, which the kept
versions lack. Each clique keeps its id and its split; a new version's index continues
after the clique's highest, so its id never collides with a kept one.
"""
from __future__ import annotations

from pathlib import Path

from ..atomic import remove_stale_temporaries
from . import soundfonts
from .catalogue import youtube_id
from .driver import check_rendered, check_tools, default_mix, parallel_map, render_tasks, write_json
from .render import Task
from .rerender import load_works, read_records, version_index
from .scores import Work
from .versions import Mix


def added_version_id(clique: str, version: int) -> str:
    """The ``version_id`` of an added version: its clique and its 1-based index."""
    return f"{clique}-V{version + 1}"


def extension_tasks(cliques: dict[str, list[dict]], works: dict[str, Work], versions_per_work: int,
                    out_dir: Path, seed: int, seconds: float, soundfont_dir: Path, overwrite: bool,
                    mix: Mix) -> list[Task]:
    """The tasks that bring every clique up to ``versions_per_work`` versions.

    Raises ValueError if a record is not a version of its work under ``seed``, or if no
    clique has fewer than ``versions_per_work`` versions.
    """
    tasks = []
    for clique, versions in cliques.items():
        work = works[versions[0]["source"]]
        if any(v["source"] != work.ref.source for v in versions):
            raise ValueError(f"clique {clique} holds versions of more than one work")
        top = max(version_index(seed, work, v["youtube_id"]) for v in versions)
        for k in range(top + 1, top + 1 + versions_per_work - len(versions)):
            tasks.append(Task(work, k, clique, added_version_id(clique, k), youtube_id(seed, work.ref.key, k),
                              seed, seconds, out_dir, soundfont_dir, overwrite, mix))
    if not tasks:
        raise ValueError(f"every clique already has {versions_per_work} or more versions: "
                         "give a larger --versions-per-work")
    return tasks


def extend(metadata: Path, out_dir: Path, versions_per_work: int, seed: int, seconds: float,
           jobs: int = 1, mix: Mix | None = None, soundfont_dir: Path = soundfonts.SOUNDFONT_ROOT,
           overwrite: bool = False, quiet: bool = False) -> dict[str, list[dict]]:
    """Render new versions of the cliques that ``metadata`` lists into ``out_dir``.

    Every clique is brought up to ``versions_per_work`` versions, drawn by this generator
    with ``mix`` (default: the training mix) under ``seed`` (the seed that made the corpus,
    checked against every kept version's id). The extended metadata (each clique's kept
    records, then its added ones) is written to ``out_dir`` under ``metadata``'s file name,
    which must not be ``metadata`` itself; only the added versions' audio is in ``out_dir``.
    ValueError for bad options, RuntimeError if a version fails to render (the others are
    kept). Returns the extended metadata.
    """
    out_meta = out_dir / metadata.name
    if out_meta.exists() and out_meta.resolve() == metadata.resolve():
        raise ValueError(f"{out_meta} would replace the metadata it extends: choose another OUT_DIR")
    cliques = read_records(metadata)
    mix = mix or default_mix("train")
    check_tools(mix, "train", soundfont_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    with parallel_map(jobs) as mapper:
        works = load_works(cliques, mapper)
        tasks = extension_tasks(cliques, works, versions_per_work, out_dir, seed, seconds,
                                soundfont_dir, overwrite, mix)
        records = render_tasks(tasks, mapper, quiet)
    check_rendered(tasks, records)
    extended = {clique: list(versions) for clique, versions in cliques.items()}
    for task, record in zip(tasks, records):
        extended[task.clique_id].append(record)
    write_json(out_meta, extended)
    return extended
