"""Where an identification run spends its time, against the bound of the cores it has.

    python -m benchmarks.speed.identify --tracks 40 --seconds 180 [--repeats 3] [--json F]

Makes N synthetic tracks (``mirex_vi.synth.write_tracks``: harmonic melodies + noise,
22.05 kHz mono 16-bit WAV, as MIREX provides) once under --data, then, in one run:

1. **The authors' recipe**, serially in this process, on every track: load, librosa CQT,
   a batch-1 forward pass of their model class at one tempo (CQT-Net in the NCHW layout of
   their code; the package's own is channels-last), then all-pairs scoring and a
   plain-Python writer. Its decode, CQT and model times are the stage costs.
2. **The package's model at its own tempi** (the shipped default) and at one tempo, on
   ``--stage-tracks`` of the tracks, on torch's threads; with a scoring recipe in the
   package, also what the recipe adds per track: its extras (segment embeddings on torch's
   threads, chroma) and ``min(rerank, N - 1)`` alignments of a query on one core, timed
   on pairs of those tracks.
3. **``mirex-vi identify``** in a fresh process and workdir (nothing cached), with the
   package and with a plain copy of it at one tempo (no recipe: the authors' scoring),
   ``--repeats`` times each (medians); wall and CPU seconds of its whole process tree
   (workers included: this process adopts the orphans as a child subreaper and reaps them
   all).

The bound of a recipe on C usable cores is ``C / (decode + CQT + threads x model + recipe)``
tracks/s: decode and CQT on one core each, the model's wall time on ``threads`` torch
threads, the recipe's extras likewise and its alignments on one core, every core busy with
nothing else; its share is what a pipeline makes of it. Those are wall
times, which other processes on a loaded machine stretch, so the same is also given in CPU
seconds: the CPU bound ``C / (decode + CQT + model)`` from the stages' CPU seconds, the CPU
share (the stages' CPU seconds per track over the pipeline's: the work it adds) and the
utilisation (the pipeline's CPU seconds over C x wall: the cores it leaves idle, or that
other processes take). On a quiet machine both bounds agree within the model's threading
loss, and share = CPU share x utilisation. The share after start-up ("no start") leaves
out of identify's wall the start-up that a run of one 3-s track takes (imports, workers,
weights), which any collection pays once; the serial recipe is timed after its imports.
The figures are printed and, with ``--json``, written. ``--matrix-size`` also times the
matrix writer on an N x N matrix.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# As identify does: idle OpenMP threads sleep instead of spinning, so the stages' CPU
# seconds are work, and measured as identify's are.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import plain_one_pass, sync  # noqa: E402

from mirex_vi.config import FeatureConfig  # noqa: E402
from mirex_vi.core.runtime import resolve_device  # noqa: E402
from mirex_vi.features.frontend import compute_cqt, preprocess  # noqa: E402
from mirex_vi.features.workers import default_workers  # noqa: E402
from mirex_vi.inference.cache import EmbeddingCache  # noqa: E402
from mirex_vi.inference import align, segments  # noqa: E402
from mirex_vi.inference.embed import embed_batch  # noqa: E402
from mirex_vi.inference.recipe import Recipe  # noqa: E402
from mirex_vi.inference.settings import EmbedSettings  # noqa: E402
from mirex_vi.io.audio import file_identity, load_audio  # noqa: E402
from mirex_vi.io.matrix import write_distance_matrix  # noqa: E402
from mirex_vi.model.weights import LoadedWeights, load_weights  # noqa: E402
from mirex_vi.synth import write_tracks  # noqa: E402

CFG = FeatureConfig()
_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def authors_model(loaded: LoadedWeights, device: torch.device) -> torch.nn.Module:
    """The package's weights in the authors' model class as their code runs it: NCHW."""
    return copy.deepcopy(loaded.model).to(device, memory_format=torch.contiguous_format).eval()


def serial_reference(paths: list[Path], weights: str | None, device: torch.device, out: Path,
                     tempo_scales: tuple[float, ...] = (1.0,)):
    """The authors' recipe, one track at a time (their model class at ``tempo_scales``);
    returns ``(N, D)`` embeddings and the stage seconds, wall and CPU (``*_cpu``)."""
    model = authors_model(load_weights(weights), device)
    names = ["decode+resample", "cqt", "model"]
    stages = dict.fromkeys(names + [f"{n}_cpu" for n in names] + ["scoring", "writing"], 0.0)
    compute_cqt(np.zeros(CFG.sample_rate, dtype=np.float32) + 1e-3, CFG)  # first-call costs
    embeddings = []
    for path in paths:
        marks = [(time.perf_counter(), time.process_time())]
        audio = load_audio(path, CFG.sample_rate)
        marks.append((time.perf_counter(), time.process_time()))
        x = preprocess(compute_cqt(audio, CFG), CFG)
        marks.append((time.perf_counter(), time.process_time()))
        with torch.inference_mode():
            emb = embed_batch(model, torch.from_numpy(x)[None, None].to(device), tempo_scales)
        embeddings.append(emb[0].float().cpu().numpy())
        marks.append((time.perf_counter(), time.process_time()))
        for name, (w0, c0), (w1, c1) in zip(names, marks, marks[1:]):
            stages[name] += w1 - w0
            stages[f"{name}_cpu"] += c1 - c0
    t0 = time.perf_counter()
    emb = np.stack(embeddings)
    dist = np.sqrt(np.clip(2 - 2 * emb @ emb.T, 0, None))
    np.fill_diagonal(dist, 0)
    stages["scoring"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(out, "w") as f:
        f.write("serial reference\n")
        f.writelines(f"{i}\t{p}\n" for i, p in enumerate(paths, 1))
        f.write("Q/R\t" + "\t".join(map(str, range(1, len(paths) + 1))) + "\n")
        for i, row in enumerate(dist, 1):
            f.write(f"{i}\t" + "\t".join(f"{d:.6f}" for d in row) + "\n")
    stages["writing"] = time.perf_counter() - t0
    return emb, stages


def model_inputs(paths: list[Path]) -> list[np.ndarray]:
    """``(F, T')`` model input of each of ``paths``, as the package's model reads it."""
    return [preprocess(compute_cqt(load_audio(p, CFG.sample_rate), CFG), CFG) for p in paths]


def model_cost(loaded: LoadedWeights, inputs: list[np.ndarray], device: torch.device,
               tempo_scales: tuple[float, ...]) -> tuple[np.ndarray, float, float]:
    """The package's model (its own class and layout) at ``tempo_scales`` on each of
    ``inputs`` (``model_inputs``): embeddings, wall and CPU seconds per track."""
    model = loaded.model.to(device).eval()
    batches = [torch.from_numpy(x)[None, None] for x in inputs]
    out, wall, cpu = [], 0.0, 0.0
    with torch.inference_mode():
        embed_batch(model, batches[0].to(device), tempo_scales)  # first-call costs
        for x in batches:
            w0, c0 = time.perf_counter(), time.process_time()
            emb = embed_batch(model, x.to(device), tempo_scales)
            sync(device)
            wall, cpu = wall + time.perf_counter() - w0, cpu + time.process_time() - c0
            out.append(emb[0].float().cpu().numpy())
    return np.stack(out), wall / len(inputs), cpu / len(inputs)


def recipe_cost(loaded: LoadedWeights, inputs: list[np.ndarray], device: torch.device,
                n_collection: int) -> tuple[float, float, float]:
    """What the package's scoring recipe adds per track in a collection of ``n_collection``:
    model wall seconds of its extras (segment windows, on torch's threads; segments read
    off the track pass's map cost only their columns), wall seconds on
    one core (chroma, reading it for the alignment once, and a query's alignments) and CPU
    seconds of both; zeros for plain scoring. Timed on ``inputs`` (``model_inputs``)."""
    recipe = Recipe.of(loaded.model.to(device).eval(), loaded.features, None, device, False)
    if not recipe.needs_extras or len(inputs) < 2:
        return 0.0, 0.0, 0.0
    with torch.inference_mode():  # a recipe reading the map is handed the pass's own
        maps = [segments.feature_map(recipe.model, x, device) if recipe.wants_map else None
                for x in inputs]
        recipe.extras(inputs[0], maps[0])  # first-call costs
        w0, c0 = time.perf_counter(), time.process_time()
        extras = [recipe.extras(x, fmap) for x, fmap in zip(inputs, maps)]
        extras_wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    k = min(recipe.scoring.rerank, n_collection - 1)
    if k == 0:
        return extras_wall / len(inputs), 0.0, cpu / len(inputs)
    pairs = [(a, b) for a in range(len(inputs)) for b in range(len(inputs)) if a != b]
    align.load_kernels()  # first-call costs, untimed
    w0, c0 = time.perf_counter(), time.process_time()
    read = [align.Aligned.of(e["chroma"], recipe.scoring.chroma_stack) for e in extras]
    read_wall, read_cpu = time.perf_counter() - w0, time.process_time() - c0
    w0, c0 = time.perf_counter(), time.process_time()
    for a, b in pairs:
        align.aligned_score(read[a], read[b], recipe.scoring)
    per_pair_wall = (time.perf_counter() - w0) / len(pairs)
    cpu += read_cpu + len(inputs) * k * (time.process_time() - c0) / len(pairs)
    align_wall = k * per_pair_wall + read_wall / len(inputs)
    return extras_wall / len(inputs), align_wall, cpu / len(inputs)


@dataclass
class Row:
    """One pipeline's figures (see the module's docstring); rates in tracks/s."""

    pipeline: str
    tracks_per_s: float
    bound: float
    share: float
    cpu_bound: float
    cpu_share: float
    utilisation: float
    share_after_startup: float


def row(pipeline: str, n: int, wall: float, cpu: float, stage_wall: float, stage_cpu: float,
        cores: int, startup: float = 0.0) -> Row:
    """``wall`` and ``cpu`` seconds for ``n`` tracks; ``stage_wall``: decode + CQT +
    threads x model wall seconds per track, the bound's core-seconds; ``stage_cpu``: the
    same stages' CPU seconds per track; ``startup``: the wall seconds of ``wall`` that any
    number of tracks costs (none for the serial recipe, timed after its imports); NaN for
    the share after it when a run took no longer than its start-up (a loaded machine)."""
    rate, bound = n / wall, cores / stage_wall
    steady = n / (wall - startup) / bound if wall > startup else float("nan")
    return Row(pipeline, rate, bound, rate / bound, cores / stage_cpu, stage_cpu * n / cpu,
               cpu / (cores * wall), steady)


def adopt_orphans() -> None:
    """Make this process the reaper of its descendants' orphans (Linux), so that their CPU
    time reaches ``RUSAGE_CHILDREN`` once :func:`reap_all` has waited for them."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_all(deadline_s: float = 10.0) -> None:
    """Wait for every child (adopted orphans included) to end, for up to ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.02)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_identify(paths: list[Path], weights: str | None, args, work: Path) -> tuple[float, float]:
    """``mirex-vi identify`` of the tracks against themselves in a fresh process and
    workdir: wall and CPU seconds of its process tree."""
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    lst = work / "collection.txt"
    lst.write_text("".join(f"{p}\n" for p in paths))
    cmd = [sys.executable, "-m", "mirex_vi", "identify", str(lst), str(lst), str(work / "out.txt"),
           "--workdir", str(work / "cache"), "--device", args.device, "--quiet"]
    cmd += ["--weights", weights] if weights else []
    cmd += ["--workers", str(args.workers)] if args.workers else []
    reap_all()
    cpu0, t0 = children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"identify failed ({done.returncode}): {done.stderr[-2000:]}")
    reap_all()
    return wall, children_cpu() - cpu0


def cached_embeddings(paths: list[Path], weights: str | None, device: torch.device,
                      work: Path) -> np.ndarray:
    loaded = load_weights(weights)
    cache = EmbeddingCache(work / "cache" / "embeddings", loaded.sha256, loaded.features,
                           loaded.model.cfg.embedding_dim, EmbedSettings.resolve(device))
    return np.stack([cache.get(p, file_identity(p)) for p in paths])


def time_writer(n: int, folder: Path) -> float:
    rng = np.random.default_rng(0)
    rows = (rng.random(n, dtype=np.float32) * 2 for _ in range(n))
    paths = [Path(f"/data/track{i:05d}.wav") for i in range(n)]
    t0 = time.perf_counter()
    write_distance_matrix(folder / "big.txt", "writer benchmark", paths, list(range(n)), rows)
    seconds = time.perf_counter() - t0
    (folder / "big.txt").unlink()
    return seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--data", type=Path, default=Path("/tmp/mirex-vi-bench"))
    parser.add_argument("--weights", default=None, help="package [default: the shipped one]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="identify runs per package")
    parser.add_argument("--stage-tracks", type=int, default=8,
                        help="tracks the package's model is timed on")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--matrix-size", type=int, default=0,
                        help="also time writing an N x N matrix")
    return parser.parse_args(argv)


def _median_run(paths, weights, args, work) -> tuple[float, float]:
    runs = [run_identify(paths, weights, args, work) for _ in range(args.repeats)]
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b, axis=1).min())


def measure(args: argparse.Namespace, one_pass: str) -> dict:
    """Every figure of the run (see the module's docstring)."""
    paths = write_tracks(args.data / f"audio-{int(args.seconds)}s", args.tracks, args.seconds)
    short = write_tracks(args.data / "audio-3s", 1, 3.0)
    work = args.data / "work"
    work.mkdir(parents=True, exist_ok=True)
    device, n = resolve_device(args.device), len(paths)
    cores, threads = default_workers(), torch.get_num_threads()
    loaded = load_weights(args.weights)
    scales = tuple(loaded.features.tempo_scales)
    figures: dict = dict(tracks=n, seconds=args.seconds, device=str(device), cores=cores,
                         torch_threads=threads, repeats=args.repeats,
                         load_before=os.getloadavg()[0])

    t0, c0 = time.perf_counter(), time.process_time()
    ref_emb, stages = serial_reference(paths, args.weights, device, work / "serial.txt")
    serial = time.perf_counter() - t0, time.process_time() - c0
    sample = paths[: args.stage_tracks]
    inputs = model_inputs(sample)
    shipped_emb, shipped_wall, shipped_cpu = model_cost(loaded, inputs, device, scales)
    _, one_wall, one_cpu = model_cost(loaded, inputs, device, (1.0,))
    extras_wall, align_wall, recipe_cpu = recipe_cost(loaded, inputs, device, n)
    per_track = {k: v / n for k, v in stages.items()}
    per_track.update({f"model {scales}": shipped_wall, f"model {scales}_cpu": shipped_cpu,
                      "model (1.0,)": one_wall, "model (1.0,)_cpu": one_cpu,
                      "recipe": extras_wall + align_wall, "recipe_cpu": recipe_cpu})
    front = per_track["decode+resample"] + per_track["cqt"]
    front_cpu = per_track["decode+resample_cpu"] + per_track["cqt_cpu"]

    runs = {"startup": run_identify(short, args.weights, args, work / "startup"),
            "startup one pass": run_identify(short, one_pass, args, work / "startup-one-pass"),
            "shipped": _median_run(paths, args.weights, args, work / "shipped"),
            "one pass": _median_run(paths, one_pass, args, work / "one-pass")}
    rows = [row(f"identify, the package at tempi {scales}", n, *runs["shipped"],
                front + threads * (shipped_wall + extras_wall) + align_wall,
                front_cpu + shipped_cpu + recipe_cpu, cores, runs["startup"][0]),
            row("identify, the package at tempo 1, plain", n, *runs["one pass"],
                front + threads * one_wall, front_cpu + one_cpu, cores,
                runs["startup one pass"][0]),
            row("serial, the authors' recipe (their class, tempo 1)", n, *serial,
                front + threads * per_track["model"], front_cpu + per_track["model_cpu"], cores)]
    figures.update(stages_per_track=per_track, rows=[asdict(r) for r in rows],
                   startup=dict(zip(("wall", "cpu"), runs["startup"])),
                   startup_one_pass=dict(zip(("wall", "cpu"), runs["startup one pass"])),
                   speedup_over_authors=rows[0].tracks_per_s / rows[2].tracks_per_s,
                   share_of_authors_bound=rows[0].tracks_per_s / rows[2].bound,
                   agreement=dict(
                       one_pass_vs_authors=_min_cosine(
                           cached_embeddings(paths, one_pass, device, work / "one-pass"), ref_emb),
                       shipped_vs_model=_min_cosine(cached_embeddings(
                           sample, args.weights, device, work / "shipped"), shipped_emb)),
                   load_after=os.getloadavg()[0])
    return figures


def report(f: dict) -> None:
    print(f"device {f['device']}, {f['tracks']} tracks of {f['seconds']:.0f} s, {f['cores']} "
          f"usable cores, torch threads {f['torch_threads']}, identify medians of "
          f"{f['repeats']}; load average {f['load_before']:.1f} before, {f['load_after']:.1f} after")
    print(f"{'stage, per track':<40}{'wall s':>9}{'CPU s':>9}")
    stages = f["stages_per_track"]
    for name in [k for k in stages if not k.endswith("_cpu") and f"{k}_cpu" in stages]:
        print(f"{'  ' + name:<40}{stages[name]:>9.3f}{stages[name + '_cpu']:>9.3f}")
    for name, key in (("the package", "startup"), ("tempo 1, plain", "startup_one_pass")):
        print(f"identify on one 3-s track (start-up), {name}: {f[key]['wall']:.2f} s wall, "
              f"{f[key]['cpu']:.2f} s CPU")
    head = ("pipeline", "tracks/s", "bound", "share", "CPU bnd", "CPU shr", "util", "no start")
    print(f"{head[0]:<54}" + "".join(f"{h:>9}" for h in head[1:]))
    for r in f["rows"]:
        values = list(r.values())
        print(f"{values[0]:<54}" + "".join(f"{v:>9.3f}" for v in values[1:]))
    agreement = f["agreement"]
    print(f"identify with the package against the authors' serial recipe: "
          f"{f['speedup_over_authors']:.2f}x; {f['share_of_authors_bound']:.0%} of its bound")
    print(f"agreement (min cosine): identify at tempo 1 vs the authors' recipe "
          f"{agreement['one_pass_vs_authors']:.6f}; identify vs the package's model "
          f"{agreement['shipped_vs_model']:.6f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    adopt_orphans()
    with tempfile.TemporaryDirectory(prefix="one-pass-") as tmp:
        figures = measure(args, str(plain_one_pass(args.weights, Path(tmp) / "one-pass")))
    if args.matrix_size:
        seconds = time_writer(args.matrix_size, args.data / "work")
        figures["matrix_writer_s"] = seconds
    report(figures)
    if args.matrix_size:
        print(f"writing a {args.matrix_size} x {args.matrix_size} matrix: {seconds:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    low = min(figures["agreement"].values())
    if low < 0.9999:
        sys.exit(f"embeddings disagree: min cosine {low:.6f} < 0.9999")


if __name__ == "__main__":
    main()
