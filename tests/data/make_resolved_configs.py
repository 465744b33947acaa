"""Write resolved_configs.json: every ``configs/*.yaml`` of a git commit, resolved to a dict.

    PYTHONPATH=. python tests/data/make_resolved_configs.py 91ea2d4 > tests/data/resolved_configs.json

91ea2d4 is the last commit whose configs were full copies, without ``base:``; the fixture
holds what each of them resolved to, and ``tests/test_config.py`` checks that the configs
that inherit today still resolve to the same values. Each is keyed by its path under
``configs/`` today (the stages of the shipped package live in ``history/``), and the data
locations, which those copies wrote as paths of the machine they ran on, are recorded as
unset: the configs leave them to ``--set``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import yaml

from mirex_vi.config import TrainConfig, from_dict, to_dict

# Fields added after 91ea2d4: left out, as that commit's configs had no such key.
ADDED_SINCE = ("init_sha256", "cls_weight", "label_smoothing", "memory_size", "augment")
ADDED_FEATURES_SINCE = ("tempo_scales",)
DATA_LOCATIONS = ("features_dir", "train_metadata", "val_metadata")
STAGE = re.compile(r"vinet-mirex-synth-(cpu|gpu)")  # a stage's file: under configs/history/


def resolved_at(rev: str) -> dict[str, dict]:
    """``{path under configs/ today: to_dict(TrainConfig)}`` of every config under
    ``configs/`` at ``rev``, its data locations unset."""
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:configs"],
                           capture_output=True, text=True, check=True).stdout.split()
    out = {}
    for name in sorted(n for n in names if n.endswith(".yaml")):
        text = subprocess.run(["git", "show", f"{rev}:configs/{name}"],
                              capture_output=True, text=True, check=True).stdout
        resolved = to_dict(from_dict(TrainConfig, yaml.safe_load(text)))
        key = f"history/{name}" if STAGE.match(name) else name
        resolved["features"] = {k: v for k, v in resolved["features"].items()
                                if k not in ADDED_FEATURES_SINCE}
        out[key] = {k: "" if k in DATA_LOCATIONS else v
                    for k, v in resolved.items() if k not in ADDED_SINCE}
    return out


if __name__ == "__main__":
    print(json.dumps({"commit": sys.argv[1], "configs": resolved_at(sys.argv[1])},
                     indent=1, sort_keys=True))
