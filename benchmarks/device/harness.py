"""What every prepared device run shares: the options (``--out``, ``--device``, ``--smoke``,
``--work``), the device check, the JSON report rewritten after each step (a run stopped at
its time limit keeps the steps it finished), and the inputs of a smoke run (synthetic tracks,
a tiny model with random weights).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from mirex_vi.config import MODEL_SIZES, FeatureConfig
from mirex_vi.core.runtime import resolve_device
from mirex_vi.model.cqtnet import CQTNet
from mirex_vi.model.packaging import write_package
from mirex_vi.synth import random_melody, write_audio


class Report:
    """The JSON report at ``path``: run facts (``sizes``, the run's dataclass of sizes,
    among them), then one entry per step, rewritten after each."""

    def __init__(self, path: Path, device: torch.device, sizes: object, smoke: bool):
        self.path = path
        self.data = dict(started=dt.datetime.now().isoformat(timespec="seconds"),
                         device=str(device), smoke=smoke, sizes=asdict(sizes), steps={})
        self.t0 = time.perf_counter()

    def run(self, name: str, step: Callable[..., dict], *args) -> None:
        t0 = time.perf_counter()
        try:
            result = dict(ok=True, **step(*args))
        except Exception as err:  # noqa: BLE001 - a failed step is a finding; the others still run
            result = dict(ok=False, error=f"{type(err).__name__}: {err}",
                          traceback=traceback.format_exc()[-3000:])
        result["seconds"] = round(time.perf_counter() - t0, 1)
        self.data["steps"][name] = result
        self.data["total_s"] = round(time.perf_counter() - self.t0, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        print(f"{name}: {'ok' if result['ok'] else 'FAILED ' + result['error']} "
              f"({result['seconds']} s)", flush=True)

    def finish(self) -> int:
        """Print where the report is and which steps failed; the exit status (1: some did)."""
        failed = [k for k, v in self.data["steps"].items() if not v["ok"]]
        print(f"report: {self.path} ({self.data.get('total_s', 0)} s); failed steps: "
              f"{failed or 'none'}")
        return 1 if failed else 0


def device_run_parser(description: str, smoke_help: str) -> argparse.ArgumentParser:
    """The options of every prepared device run: ``--out``, ``--device``, ``--smoke``,
    ``--work``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, required=True, help="the JSON report")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--work", type=Path, help="scratch folder [default: a temporary one]")
    return parser


def run_device(parser: argparse.ArgumentParser, args: argparse.Namespace,
               what: str) -> torch.device:
    """``--device`` resolved; only ``--smoke`` runs on other than CUDA."""
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.smoke:
        parser.error(f"the full {what} needs a CUDA device; use --smoke elsewhere")
    return device


def write_track(job: tuple[str, int, float]) -> None:
    """Write ``(path, seed, seconds)``'s synthetic melody as 16-bit WAV, unless it exists."""
    path, seed, seconds = job
    if not Path(path).exists():
        write_audio(Path(path), random_melody(seed, seconds), subtype="PCM_16")


def random_tiny_package(work: Path) -> Path:
    """A tiny CQT-Net with random weights (seed 0) as a package in ``work``: the smoke runs'
    stand-in for the shipped weights."""
    torch.manual_seed(0)
    model = CQTNet(MODEL_SIZES["tiny"])
    write_package(work / "tiny-random", model.state_dict(), model.cfg, FeatureConfig(),
                  {"note": "random weights for the smoke run"}, "# tiny-random\n")
    return work / "tiny-random"
