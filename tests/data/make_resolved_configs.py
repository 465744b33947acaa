"""Write resolved_configs.json: every ``configs/*.yaml`` of a git commit, resolved to a dict.

    PYTHONPATH=. python tests/data/make_resolved_configs.py 91ea2d4 > tests/data/resolved_configs.json

91ea2d4 is the last commit whose configs were full copies, without ``base:``; the fixture
holds what each of them resolved to, and ``tests/test_config.py`` checks that the configs
that inherit today still resolve to the same values.
"""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from mirex_vi.config import TrainConfig, from_dict, to_dict

# TrainConfig fields added after 91ea2d4: left out, as that commit's configs had no such key.
ADDED_SINCE = ("init_sha256",)


def resolved_at(rev: str) -> dict[str, dict]:
    """``{file name: to_dict(TrainConfig)}`` of every config under ``configs/`` at ``rev``."""
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:configs"],
                           capture_output=True, text=True, check=True).stdout.split()
    out = {}
    for name in sorted(n for n in names if n.endswith(".yaml")):
        text = subprocess.run(["git", "show", f"{rev}:configs/{name}"],
                              capture_output=True, text=True, check=True).stdout
        resolved = to_dict(from_dict(TrainConfig, yaml.safe_load(text)))
        out[name] = {k: v for k, v in resolved.items() if k not in ADDED_SINCE}
    return out


if __name__ == "__main__":
    print(json.dumps({"commit": sys.argv[1], "configs": resolved_at(sys.argv[1])},
                     indent=1, sort_keys=True))
