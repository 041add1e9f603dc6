"""The command wrapper: failures name the step, the command and its stderr."""

from __future__ import annotations

import logging

import pytest

from make_disk_image.process import CommandError, run


def test_success_returns_output_and_logs_the_command(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="make_disk_image")
    proc = run(["sh", "-c", "echo out; echo err >&2"], step="demo", env={"X": "1"})
    assert proc.stdout == b"out\n"
    assert "[demo] $ X=1 sh -c 'echo out; echo err >&2'" in caplog.text


def test_failure_names_step_command_and_stderr() -> None:
    with pytest.raises(CommandError) as err:
        run(["sh", "-c", "echo 'no space left' >&2; exit 3"], step="root filesystem")
    message = str(err.value)
    assert message.startswith("root filesystem: command failed (exit 3): sh -c")
    assert "no space left" in message
    assert err.value.returncode == 3 and err.value.step == "root filesystem"


def test_missing_program_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="no-such-tool: not found on PATH") as err:
        run(["no-such-tool", "--version"], step="x")
    assert err.value.returncode == 127


def test_timeout_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="timed out after 0.2 s"):
        run(["sleep", "5"], step="slow", timeout=0.2)


def test_input_reaches_stdin() -> None:
    assert run(["cat"], step="cat", input=b"abc").stdout == b"abc"


def test_a_long_command_logs_its_time_and_peak_rss() -> None:
    """In a fresh process (ru_maxrss of children is a high-water mark for the process):
    a 1.2 s command holding 300 MiB, run behind a wrapper's `--`, is logged by its own
    name with both; a short one is not logged at all."""
    import subprocess
    import sys

    script = (
        "import logging, sys\n"
        "from make_disk_image.process import run\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        "run(['true'], step='short')\n"
        "run(['env', '--', sys.executable, '-c', 'import time; b = bytearray(300 << 20); "
        "b[::4096] = b\"x\" * len(b[::4096]); time.sleep(1.2)'], step='long')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    lines = [line for line in out.splitlines() if " ran " in line]
    assert len(lines) == 1, out
    name = sys.executable.rsplit("/", 1)[-1]
    assert lines[0].startswith(f"[long] {name} ran 1."), lines
    rss = int(lines[0].split("peak RSS ")[1].split()[0])
    assert 300 <= rss < 400, lines
