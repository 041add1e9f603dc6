"""The one wrapper through which every external command runs, is logged and fails."""

from __future__ import annotations

import logging
import os
import resource
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

logger = logging.getLogger("make_disk_image")

Arg = str | Path


class StepError(Exception):
    """A build step failed; the message names the step and what to do."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


class CommandError(StepError):
    """An external command exited non-zero (or could not start)."""

    def __init__(self, step: str, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        detail = stderr.strip()
        tail = "\n".join(detail.splitlines()[-20:])
        super().__init__(
            step,
            f"command failed (exit {returncode}): {shlex.join(self.argv)}"
            + (f"\n{tail}" if tail else ""),
        )


def run(
    argv: Sequence[Arg],
    *,
    step: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    stdin: IO[bytes] | int | None = None,
    stdout: IO[bytes] | int | None = None,
    timeout: float | None = None,
    ok_returncodes: Sequence[int] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    """Run one command, logging it; raise CommandError on failure.

    `env` entries are added to the current environment (not a replacement), so PATH
    set by the driver (Nix's binPath) still applies. stdout is captured unless a
    destination is given; stderr is always captured so failures can quote it.
    """
    args = [str(a) for a in argv]
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    logger.info("[%s] $ %s%s", step, prefix + " " if prefix else "", shlex.join(args))
    peak_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args,
            env=full_env,
            cwd=cwd,
            input=input,
            stdin=stdin if input is None else None,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(step, args, 127, f"{args[0]}: not found on PATH ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise CommandError(step, args, -1, f"timed out after {timeout} s\n{err}") from exc
    # A wrapper's own command follows its last "--" (storeview, namespaces).
    program = args[len(args) - args[::-1].index("--")] if "--" in args[:-1] else args[0]
    log_cost(step, program, time.monotonic() - started, peak_before)
    stderr = proc.stderr.decode(errors="replace") if proc.stderr else ""
    if stderr.strip():
        logger.debug("[%s] stderr: %s", step, stderr.strip())
    if proc.returncode not in ok_returncodes:
        raise CommandError(step, args, proc.returncode, stderr)
    return proc


# Commands shorter than this are not worth a line of their own.
COST_LOG_SECONDS = 1.0


def log_cost(step: str, program: str, seconds: float, peak_before_kib: int) -> None:
    """A long command's time and, where it set a new high for this process's children,
    its peak RSS: what a phase's figures owe to the tools it ran."""
    if seconds < COST_LOG_SECONDS:
        return
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rss = f", peak RSS {peak // 1024} MiB" if peak > peak_before_kib else ""
    logger.info("[%s] %s ran %.1f s%s", step, os.path.basename(program), seconds, rss)
