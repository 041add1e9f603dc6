"""The engine run from this checkout on a spec file, as the benchmarks call it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from synthetic_closure import Closure

REPO = Path(__file__).resolve().parent.parent


def engine(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> bytes:
    argv = [sys.executable, "-m", "make_disk_image", *map(str, args)]
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = f"{REPO}:{full_env.get('PYTHONPATH', '')}"
    proc = subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr.decode()[-2000:]}")
    return proc.stdout


def write_spec(path: Path, closure: Closure, layout: str, **extra: object) -> Path:
    spec = {
        "toplevel": closure.toplevel,
        "closureInfo": str(closure.closure_info),
        "partitionTableType": layout,
        "copyChannel": False,
        "installBootLoader": False,
        **extra,
    }
    path.write_text(json.dumps(spec, indent=2))
    return path
