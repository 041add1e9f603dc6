"""Timing and printing helpers every benchmark shares."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024


@dataclass(frozen=True)
class Measured:
    seconds: float
    detail: str = ""


def run(argv: Sequence[str | Path], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, **kwargs)  # type: ignore[call-overload, no-any-return]


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    start = time.monotonic()
    end: list[float] = []
    yield lambda: (end[0] if end else time.monotonic()) - start
    end.append(time.monotonic())


def timed(argv: Sequence[str | Path], **kwargs: object) -> float:
    with stopwatch() as elapsed:
        run(argv, **kwargs)
    return elapsed()


def human(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"
