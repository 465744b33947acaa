"""Training across nodes on the CPU: two ``torchrun`` agents that rendezvous over 127.0.0.1 as
two nodes of one process each (gloo), and a run that loses a node and is resumed on both."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mirex_vi.train.checkpoint import LAST, METRICS
from test_train import _free_port, _write_split

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).parent / "torchrun"
EPOCHS = 12  # long enough for node 1 to be lost midway (an epoch takes about 0.5 s)
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multinode")
    rng = np.random.default_rng(0)
    _write_split(root, "light.json.train", 10, 4, rng)
    _write_split(root, "light.json.val", 4, 2, rng, offset=100)
    return root


def _start_nodes(dataset: Path, run_dir: Path, epochs: int, resume: bool = False,
                 rendezvous: str = "static") -> list[subprocess.Popen]:
    """Node ranks 0 and 1 of a 2-node rendezvous: ``static`` (node 0 at a master address
    and port) or ``c10d`` (torchrun's elastic one at an endpoint)."""
    endpoint = f"127.0.0.1:{_free_port()}"
    where = (["--master-addr", "127.0.0.1", "--master-port", endpoint.split(":")[1]]
             if rendezvous == "static" else
             ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "test"])
    train = ["-m", "mirex_vi", "train", "--config", "configs/tiny.yaml", "--device", "cpu",
             "--quiet", "--set", f"train_metadata={dataset / 'light.json.train'}",
             "--set", f"val_metadata={dataset / 'light.json.val'}",
             "--set", f"features_dir={dataset / 'features'}",
             "--set", f"output_dir={run_dir}", "--set", f"epochs={epochs}",
             *(["--resume"] if resume else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [subprocess.Popen(
        [str(TORCHRUN), "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
         *where, *train],
        cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for node in (0, 1)]


def _wait(nodes: list[subprocess.Popen], timeout: float = 120) -> tuple[list[int], str]:
    """The nodes' exit codes (one killed after ``timeout`` s) and their stderr, joined."""
    codes, errors = [], ""
    for node in nodes:
        try:
            errors += node.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:
            _lose_node(node)
            errors += node.communicate()[1]
        codes.append(node.returncode)
    return codes, errors


def _lose_node(node: subprocess.Popen) -> None:
    """SIGKILL a node's agent and its workers, as a machine that goes down (the workers run
    in sessions of their own, out of reach of the agent's process group)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree = {node.pid}
    while grown := {pid for pid, ppid in parents.items() if ppid in tree} - tree:
        tree |= grown
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(pid, signal.SIGKILL)


def _epochs(run_dir: Path) -> list[int]:
    path = run_dir / METRICS
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] \
        if path.exists() else []


@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_two_nodes_train_one_epoch_and_rank_0_writes_the_run_folder(dataset, tmp_path,
                                                                    rendezvous):
    run_dir = tmp_path / "run"
    codes, errors = _wait(_start_nodes(dataset, run_dir, epochs=1, rendezvous=rendezvous))
    assert codes == [0, 0], errors
    assert _epochs(run_dir) == [1]
    assert torch.load(run_dir / LAST, weights_only=True)["epoch"] == 1


def test_a_lost_node_is_resumed_on_both_from_the_last_checkpoint(dataset, tmp_path):
    run_dir = tmp_path / "run"
    nodes = _start_nodes(dataset, run_dir, epochs=EPOCHS)
    deadline = time.time() + 120
    while time.time() < deadline and not _epochs(run_dir) and nodes[1].poll() is None:
        time.sleep(0.05)
    _lose_node(nodes[1])  # after the first epoch
    # Node 0's worker fails on its next collective; its agent would then wait for node 1 at
    # torchrun's exit barrier, so the scheduler stops it, as a job that lost a node is.
    codes, _ = _wait(nodes, timeout=15)
    assert codes[1] == -signal.SIGKILL and codes[0] != 0
    done = _epochs(run_dir)
    assert 1 <= len(done) < EPOCHS, done

    codes, errors = _wait(_start_nodes(dataset, run_dir, epochs=EPOCHS, resume=True))
    assert codes == [0, 0], errors
    assert _epochs(run_dir) == list(range(1, EPOCHS + 1))  # each epoch once
    assert torch.load(run_dir / LAST, weights_only=True)["epoch"] == EPOCHS
