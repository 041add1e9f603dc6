"""What the fault tests share: the one `error:` line a fault must end with, an empty
`$out`, and a phase's child process by name."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def error_line(stderr: str) -> str:
    """The one `error:` line, which is the last line not quoting a command's stderr."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    after = stderr.splitlines()[stderr.splitlines().index(lines[0]) + 1:]
    assert all(line.startswith("  ") for line in after), stderr
    return lines[0]


def assert_no_output(out: Path) -> None:
    """Nothing of an image in $out: no image, no partial, no products file."""
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert left == [], left


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended while we looked
        found += [int(child) for child in text]
    return found


def wait_for_child(proc: subprocess.Popen[str], name: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for child in children(proc.pid):
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == name:
                    return child
            except (FileNotFoundError, ProcessLookupError):
                # A short-lived child (sfdisk, du, ...) ended between the listing and
                # the read: /proc answers ENOENT or, for a zombie being reaped, ESRCH.
                continue
        time.sleep(0.005)
    raise AssertionError(f"no {name} child of {proc.pid} within {timeout} s")
