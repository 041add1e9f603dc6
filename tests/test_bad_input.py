"""The bad-input corpus (tests/bad_input_corpus.py): one thing wrong in a valid spec, one
clear `error:` line.

Each case runs `make-disk-image prepare` (or `plan`) as the unprivileged build user,
the way the sandbox runs it, and must end with exit status 1 or 2, exactly one line
starting with `error:` that names the argument (and the `contents` index) and what to
change, no traceback, and nothing in `$out` or the build directory. The last tests
are the edge cases the reference accepts, which must stay accepted.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bad_input_corpus import CASES, GONE, Inputs, Overrides, contents, entry, fixed
from conftest import REPO, Closure, Engine, EngineRun, base_spec, world_readable_dir
from imagecheck import e2fsck_clean, fs_spec


@pytest.fixture(scope="module")
def inputs(closure: Closure) -> Iterator[Inputs]:
    root = world_readable_dir("mdi-bad-input-")
    (root / "file").write_text("ok\n")
    (root / "dir").mkdir()
    (root / "dir/a").write_text("a\n")
    # A socket, alone and inside a directory
    for where in (root, root / "sockdir"):
        where.mkdir(exist_ok=True)
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(where / "sock"))
        sock.close()
    # Unreadable for the build user: a file, a directory, a file inside a directory
    (root / "secret").write_text("s\n")
    (root / "secret").chmod(0)
    (root / "closed").mkdir()
    (root / "closed/x").write_text("x\n")
    (root / "closed").chmod(0)
    (root / "opendir").mkdir()
    (root / "opendir/secret").write_text("s\n")
    (root / "opendir/secret").chmod(0)
    # Symlink loops
    os.symlink("loop-b", root / "loop-a")
    os.symlink("loop-a", root / "loop-b")
    # Malformed closureInfo directories, each from the good one with one thing changed
    good = closure.closure_info(closure.toplevel, closure.channel)
    store_paths = (good / "store-paths").read_text()
    registration = (good / "registration").read_text()
    broken = {
        "no-store-paths": {"registration": registration},
        "no-registration": {"store-paths": store_paths},
        "bad-registration": {"store-paths": store_paths, "registration": "not a registration\n"},
        "gone-path": {"store-paths": store_paths + GONE + "\n", "registration": registration},
        "relative-path": {"store-paths": store_paths + "nix/store/x\n",
                          "registration": registration},
    }
    for name, files in broken.items():
        (root / "ci" / name).mkdir(parents=True)
        for file_name, text in files.items():
            (root / "ci" / name / file_name).write_text(text)
    (root / "ci/a-file").write_text("")
    (root / "ci/binary").mkdir()
    (root / "ci/binary/store-paths").write_bytes(b"\xff\xfe\x00garbage")
    (root / "ci/binary/registration").write_text(registration)
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink() and path.name != "closed":
            path.chmod(0o755)
        elif path.is_file() and path.name != "secret":
            path.chmod(0o644)
    yield Inputs(closure, root)
    (root / "closed").chmod(0o755)
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)




def spec_for(inputs: Inputs, overrides: dict[str, Any]) -> Any:
    if "__raw__" in overrides:
        return overrides["__raw__"]
    spec = base_spec(inputs.closure, additionalSpace="8M")
    spec.update(overrides)
    return spec


def check_failure(result: EngineRun, status: int, fragments: tuple[str, ...]) -> str:
    """The contract for a failure: status, one `error:` line, nothing left behind."""
    stderr = result.stderr
    assert "Traceback" not in stderr, stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, stderr
    line = error_lines[0]
    # The error line comes last; what follows it is the failing command's stderr, indented.
    after = stderr.splitlines()[stderr.splitlines().index(line) + 1:]
    assert all(text.startswith("  ") for text in after), stderr
    for fragment in fragments:
        assert fragment in stderr[stderr.index(line):], f"{fragment!r} not in:\n{stderr}"
    assert result.returncode == status, stderr
    assert not result.out.exists() or list(result.out.iterdir()) == []
    left = sorted(p.name for p in result.build_dir.rglob("*"))
    assert not [name for name in left if name.startswith("nixos.raw")], left
    assert "make-disk-image.json" not in left and "nix-db" not in left, left
    # Nothing written beside the build directory and $out either.
    assert sorted(p.name for p in result.build_dir.parent.iterdir()) in (
        ["build", "spec.json"], ["build", "out", "spec.json"])
    return line


@pytest.mark.parametrize(("overrides", "status", "fragments"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_fails_with_one_error_line(
        inputs: Inputs, engine: Engine, overrides: Overrides, status: int,
        fragments: tuple[str, ...]) -> None:
    result = engine.run("prepare", spec_for(inputs, overrides(inputs)))
    check_failure(result, status, fragments)


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len({case[0] for case in CASES}) == len(CASES)


def test_spec_that_is_not_json(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text("{ toplevel = ./.; }")
    proc = subprocess.run([sys.executable, "-m", "make_disk_image", "plan", str(spec)],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.splitlines()[0]], proc.stderr
    assert proc.stderr.startswith("error: argument `SPEC.json`: ")
    assert "not valid JSON" in proc.stderr


def test_plan_fails_like_prepare(inputs: Inputs, engine: Engine) -> None:
    result = engine.run("plan", spec_for(inputs, contents(entry(inputs.path("sock")))))
    check_failure(result, 1, ("contents[0].source", "socket"))
    assert result.stdout == ""


# What the reference accepts stays accepted.

def test_fifos_and_device_nodes_in_contents_are_copied(inputs: Inputs, engine: Engine) -> None:
    """rsync -a copies fifos and device nodes; tar and mke2fs -d hold them."""
    src = world_readable_dir("mdi-special-")
    try:
        (src / "spool").mkdir()
        os.mkfifo(src / "spool/fifo")
        os.mknod(src / "spool/null", stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(src / "spool/loop9", stat.S_IFBLK, os.makedev(7, 9))
        for name, mode in (("fifo", 0o620), ("null", 0o666), ("loop9", 0o660)):
            (src / "spool" / name).chmod(mode)
        (src / "spool").chmod(0o755)
        spec = spec_for(inputs, contents(entry(str(src / "spool"), "/var/spool/x"),
                                         entry(str(src / "spool/fifo"), "/run-fifo")))
        result = engine.run("prepare", spec)
        assert result.returncode == 0, result.stderr
        image = result.build_dir / "nixos.raw"
        offset = 2048 * 512  # legacy: the root partition starts at 1 MiB

        def inode(path: str) -> str:
            return subprocess.run(["debugfs", "-R", f"stat {path}", fs_spec(image, offset)],
                                  capture_output=True, text=True, check=True).stdout
        fifo = inode("/var/spool/x/fifo")
        assert "Type: FIFO" in fifo and "Mode:  0620" in fifo, fifo
        assert "Type: FIFO" in inode("/run-fifo")
        null = inode("/var/spool/x/null")
        assert "Type: character special" in null and "Device major/minor number: 01:03" in null
        loop = inode("/var/spool/x/loop9")
        assert "Type: block special" in loop and "Device major/minor number: 07:09" in loop
        fsck = e2fsck_clean(image, offset)
        assert fsck.returncode == 0, fsck.stdout
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(src)], check=False)


ACCEPTED: list[tuple[str, Overrides]] = [
    # The reference writes to $root/$target: a relative target is the same place.
    ("relative-target", lambda i: contents(entry(i.path("file"), "etc/relative"))),
    ("target-with-double-slash", lambda i: contents(entry(i.path("file"), "/etc//x/"))),
    # rsync -a copies a symlink as a symlink, whether it leads anywhere or not.
    ("contents-symlink-loop", lambda i: contents(entry(i.path("loop-a"), "/etc/loop"))),
    # A directory at /nix/store merges with the store, as rsync then nix copy do.
    ("contents-dir-at-nix-store", lambda i: contents(entry(i.path("dir"), "/nix/store"))),
    ("baseName-dots", fixed(baseName="..")),
    ("empty-label", fixed(label="")),
    ("zero-additionalSpace", fixed(additionalSpace="0")),
    ("fraction-size", fixed(additionalSpace="7.25M")),
]


@pytest.mark.parametrize("overrides", [case[1] for case in ACCEPTED],
                         ids=[case[0] for case in ACCEPTED])
def test_what_the_reference_accepts_is_accepted(
        inputs: Inputs, engine: Engine, overrides: Overrides) -> None:
    result = engine.run("plan", spec_for(inputs, overrides(inputs)))
    assert result.returncode == 0, result.stderr
    assert "error:" not in result.stderr
