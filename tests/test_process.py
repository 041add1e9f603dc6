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
