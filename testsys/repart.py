"""systemd-repart as nixpkgs runs it, for the comparison tests and the bench.

Debian 12's systemd-repart is 252; the peer is 254 from bookworm-backports, unpacked by
.ci/setup into PEER_ROOT (never installed: the host's systemd stays). On Debian 13 the
system's own systemd-repart (257) is used when no unpacked 254 exists.

`definitions` writes repart.d from the engine's JSON input as nixpkgs' module does: one
`[Partition]` file per partition, its repartConfig, then a `CopyFiles=` line per
`contents` entry and per store path of the closure (amend-repart-definitions.py's job).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEER_ROOT = Path("/var/cache/make-disk-image/systemd-repart-254")
LIBRARY_DIR = "usr/lib/x86_64-linux-gnu/systemd"


@dataclass(frozen=True)
class Peer:
    binary: Path
    env: Mapping[str, str]
    version: str


def find_peer() -> Peer | None:
    unpacked = PEER_ROOT / "bin/systemd-repart"
    if unpacked.exists():
        env = {"LD_LIBRARY_PATH": str(PEER_ROOT / LIBRARY_DIR)}
        return Peer(unpacked, env, "254")
    system = shutil.which("systemd-repart")
    if system is None:
        return None
    out = subprocess.run([system, "--version"], capture_output=True, text=True).stdout
    version = out.split()[1] if len(out.split()) > 1 else "0"
    return Peer(Path(system), {}, version) if version.isdigit() and int(version) >= 254 else None


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def definitions(spec: Mapping[str, Any], dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name, partition in spec["partitions"].items():
        lines = ["[Partition]"]
        lines += [f"{k}={_value(v)}" for k, v in partition["repartConfig"].items()]
        for target, entry in (partition.get("contents") or {}).items():
            lines.append(f"CopyFiles={entry['source']}:{target}")
        closure = partition.get("closureInfo")
        if closure:
            prefix = partition.get("nixStorePrefix", "/nix/store").rstrip("/")
            for path in sorted(Path(closure, "store-paths").read_text().split()):
                lines.append(f"CopyFiles={path}:{prefix}/{os.path.basename(path)}")
        (dest / f"{name}.conf").write_text("\n".join(lines) + "\n")
    return dest


def run_peer(peer: Peer, spec: Mapping[str, Any], work: Path) -> tuple[Path, float]:
    """The image repart makes of `spec` in WORK/peer.raw, and the seconds it took."""
    defs = definitions(spec, work / "repart.d")
    image = work / "peer.raw"
    image.unlink(missing_ok=True)
    argv = ["unshare", "--map-root-user", "fakeroot", str(peer.binary),
            f"--architecture={spec.get('architecture', 'x86-64')}", "--dry-run=no",
            "--size=auto", f"--seed={spec['seed']}", f"--definitions={defs}",
            "--empty=create", "--json=pretty", "--offline=yes",
            f"--sector-size={spec.get('sectorSize', 512)}", str(image)]
    env = {**os.environ, **peer.env,
           **{f"SYSTEMD_REPART_MKFS_OPTIONS_{k.upper()}": " ".join(v)
              for k, v in (spec.get("mkfsOptions") or {}).items()}}
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=work)
    if proc.returncode != 0:
        raise RuntimeError(f"systemd-repart failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    (work / "peer-output.json").write_text(proc.stdout)
    return image, time.monotonic() - started
