"""make_disk_image.guestinit without a VM: the command line the guest's init runs.
(Real boots through it: tests/test_runner.py.)"""

from __future__ import annotations

from make_disk_image import guestinit


def test_command_runs_the_roots_program_by_path_with_exactly_its_env() -> None:
    snippet = guestinit.command_snippet(["sh", "-c", "echo $0"], {"A": "b c"}, "/tmp")
    assert "which sh" in snippet and "env -i" in snippet and "'A=b c'" in snippet
    assert "/usr/bin/env" not in snippet
    absolute = guestinit.command_snippet(["/x/bin/prog"], {}, "/")
    assert "which" not in absolute
