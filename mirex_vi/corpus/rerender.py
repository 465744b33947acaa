"""Rendering again the versions a corpus's metadata lists (a corpus kept as features only),
each version checked against its record before anything renders."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from ..core.atomic import remove_stale_temporaries
from . import soundfonts
from .catalogue import WorkRef, corpus_root, youtube_id
from .driver import (check_rendered, check_tools, default_mix, parallel_map, pool_of, render_tasks,
                     write_json)
from .render import Task, plan_version
from .scores import Work, load_work
from .versions import CLASSIC_MIX, DEMO_OVERRIDES, GENERATOR_VERSION, Mix

MAX_VERSIONS = 1024  # a version's index is searched up to here from its youtube_id


def read_records(metadata: Path) -> dict[str, list[dict]]:
    """A light-JSON metadata file (clique -> version records); ValueError if it is not one."""
    try:
        cliques = json.loads(metadata.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{metadata}: not readable as JSON metadata ({err})") from None
    fields = ("youtube_id", "version_id", "source")
    if not (isinstance(cliques, dict) and cliques and all(
            isinstance(vs, list) and all(isinstance(v, dict) and all(f in v for f in fields) for v in vs)
            for vs in cliques.values())):
        raise ValueError(f"{metadata}: not a corpus's light-JSON metadata (clique -> records with "
                         f"{', '.join(fields)})")
    return cliques


def _same_choice(field: str, drawn: object, stored: object) -> bool:
    """Whether a drawn record field matches the stored one (version 1 named soundfonts by
    file name, version 2 by path under the soundfont root)."""
    if field == "generator_version":
        return True
    if field == "soundfont" and isinstance(drawn, str) and isinstance(stored, str):
        return Path(drawn).name == Path(stored).name
    return drawn == stored


def version_index(seed: int, work: Work, yid: str) -> int:
    """The index of the version of ``work`` whose id under ``seed`` is ``yid``; ValueError if none."""
    k = next((k for k in range(MAX_VERSIONS) if youtube_id(seed, work.ref.key, k) == yid), None)
    if k is None:
        raise ValueError(f"{yid}: not a version of {work.ref.source} under --seed {seed}")
    return k


def load_works(cliques: dict[str, list[dict]], mapper, quiet: bool = False) -> dict[str, Work]:
    """Source -> parsed work of every ``source`` in the records, parsed through ``mapper``
    (with a progress bar unless ``quiet``: a corpus of 4,000 works takes minutes).

    Raises ValueError if music21 cannot load one of them here.
    """
    from tqdm import tqdm

    refs = [WorkRef.from_source(s) for s in dict.fromkeys(v["source"] for vs in cliques.values() for v in vs)]
    loaded = list(tqdm(mapper(functools.partial(load_work, root=corpus_root()), refs), total=len(refs),
                       desc="parse", unit="score", disable=quiet, file=sys.stderr))
    works = dict(zip((ref.source for ref in refs), loaded))
    unreadable = [source for source, work in works.items() if work is None]
    if unreadable:
        raise ValueError(f"{unreadable[0]}: music21 cannot load this score here "
                         f"({len(unreadable)} such works)")
    return works


def rerender_tasks(cliques: dict[str, list[dict]], works: dict[str, Work], out_dir: Path, seed: int,
                   seconds: float, soundfont_dir: Path, overwrite: bool, mix: Mix,
                   overrides: tuple) -> list[Task]:
    """The task of every record, each checked against its record before anything renders.

    Raises ValueError naming the first version whose drawn choices differ from its record
    (the corpus was made with other options).
    """
    tasks = []
    for clique, versions in cliques.items():
        for record in versions:
            work, yid = works[record["source"]], record["youtube_id"]
            k = version_index(seed, work, yid)
            task = Task(work, k, clique, record["version_id"], yid, seed, seconds, out_dir,
                        soundfont_dir, overwrite, mix, overrides)
            drawn = plan_version(task).record
            differ = [f for f in record if not _same_choice(f, drawn.get(f), record[f])]
            if differ:
                f = differ[0]
                raise ValueError(f"{yid}: {f} would be {drawn.get(f)!r}, its record says {record[f]!r}: "
                                 "re-render with the options that made the corpus "
                                 "(--seconds, --ood or --demo, --p-*)")
            tasks.append(task)
    return tasks


def rerender(metadata: Path, out_dir: Path, seed: int, seconds: float, jobs: int = 1,
             demo: bool = False, ood: bool = False, mix: Mix | None = None,
             soundfont_dir: Path = soundfonts.SOUNDFONT_ROOT, overwrite: bool = False,
             quiet: bool = False) -> dict[str, list[dict]]:
    """Render again the versions that a corpus's metadata lists, into ``out_dir``.

    For a corpus kept as features only, such as a held-out split whose audio an audio
    baseline needs. Each record names its work (``source``) and, under ``seed``, its version
    (``youtube_id``); records without a ``generator_version`` render as version 1 did. Every
    version's choices are drawn and compared with its record before anything renders, so
    the options must be those that made the corpus (ValueError otherwise). Audio already in
    ``out_dir`` is kept unless ``overwrite``; the metadata is written there under its own
    name. RuntimeError if a version fails to render (the others are kept). Returns the
    metadata.
    """
    cliques = read_records(metadata)
    generators = {v.get("generator_version", 1) for vs in cliques.values() for v in vs}
    if len(generators) > 1 or generators - {1, GENERATOR_VERSION}:
        raise ValueError(f"{metadata}: made by corpus generator version(s) {sorted(generators)}; "
                         f"this one re-renders version 1 or {GENERATOR_VERSION}")
    pool_name = pool_of(demo, ood)
    mix = CLASSIC_MIX if generators == {1} else mix or default_mix(pool_name)
    check_tools(mix, pool_name, soundfont_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    with parallel_map(jobs) as mapper:
        works = load_works(cliques, mapper, quiet)
        tasks = rerender_tasks(cliques, works, out_dir, seed, seconds, soundfont_dir, overwrite,
                               mix, DEMO_OVERRIDES if demo else ())
        check_rendered(tasks, render_tasks(tasks, mapper, quiet))
    write_json(out_dir / metadata.name, cliques)
    return cliques
