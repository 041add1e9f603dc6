"""Fault injection with real faults: full filesystems, signals, unreadable files, a
failing bootloader installation, qemu dying, a failing postVM.

Each fault must end the phase with exit status 1 and one `error:` line naming the step
(and the command with its stderr where a command failed), and leave no image, partial
image or products file in `$out`. The tests go through the public interface only (the
CLI phases and `make-disk-image build`, the files in `$out` and the build directory),
so they hold whichever phase makes the root filesystem.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    REPO,
    UNPRIVILEGED_USER,
    Closure,
    Engine,
    base_spec,
    world_readable_dir,
)
from faultcheck import assert_no_output, error_line, wait_for_child

MIB = 1024 * 1024


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Any]:
    """Small tmpfs mounts, owned by the build user, unmounted afterwards."""
    mounts: list[Path] = []

    def mount(name: str, size: str) -> Path:
        point = world_readable_dir(f"mdi-fault-{name}-") / name
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(point)], check=True)
        mounts.append(point)
        shutil.chown(point, UNPRIVILEGED_USER, UNPRIVILEGED_USER)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], check=True)
        # Only now, with nothing mounted there, is the directory removed.
        assert subprocess.run(["findmnt", str(point)], capture_output=True).returncode == 1
        shutil.rmtree(point.parent)


@pytest.fixture(scope="module")
def blob_dir() -> Iterator[Path]:
    """8 MiB that compress to nothing less: a full filesystem must see real data."""
    src = world_readable_dir("mdi-fault-blob-")
    (src / "blob").write_bytes(os.urandom(8 * MIB))
    (src / "blob").chmod(0o644)
    yield src
    shutil.rmtree(src)


def blob_spec(closure: Closure, blob_dir: Path, **kw: Any) -> dict[str, Any]:
    kw.setdefault("installBootLoader", False)
    return base_spec(closure, additionalSpace="16M",
                     contents=[{"source": str(blob_dir / "blob"), "target": "/blob"}], **kw)


def new_build_on(build_dir: Path, out: Path) -> tuple[Path, Path]:
    for path in (build_dir, out):
        path.mkdir(exist_ok=True)
        shutil.chown(path, UNPRIVILEGED_USER, UNPRIVILEGED_USER)
    return build_dir, out


def test_build_dir_filling_while_the_root_filesystem_is_made(
        closure: Closure, engine: Engine, blob_dir: Path, tmpfs: Any) -> None:
    # Room for the Nix database and the image's metadata, not for the 8 MiB of data.
    build_dir, out = new_build_on(tmpfs("build", "4m"), tmpfs("out", "1m"))
    spec = blob_spec(closure, blob_dir)
    result = engine.run("prepare", spec, build_dir=build_dir, out=out)
    if result.returncode == 0:
        # A flow where the final root filesystem is made by finish (the guest phase has
        # nothing to do for this spec).
        result = engine.run("finish", spec, build_dir=build_dir, out=out)
    else:
        assert list(build_dir.glob("nixos.raw*")) == []
    line = error_line(result.stderr)
    assert result.returncode == 1, result.stderr
    # ext4: mke2fs makes it empty, the engine's writer fills it (ext4_fill).
    assert "root filesystem: writing the tree into " in line, line
    assert "No space left on device" in line
    assert "raise diskSize" not in result.stderr  # a bigger image would not help
    assert list(build_dir.glob("*.partial")) == []
    assert_no_output(out)


@pytest.fixture(scope="module")
def prepared(closure: Closure, unprivileged_pkg: Path, blob_dir: Path) -> Iterator[Path]:
    """A prepared build directory (nixos.raw and xchg/; the guest has no work), for finish."""
    engine = Engine(unprivileged_pkg, world_readable_dir("mdi-fault-prepared-"))
    result = engine.run("prepare", blob_spec(closure, blob_dir))
    assert result.returncode == 0, result.stderr
    yield result.build_dir
    shutil.rmtree(engine.workdir)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_out_filling_during_finish(closure: Closure, engine: Engine, blob_dir: Path,
                                   prepared: Path, tmpfs: Any, fmt: str) -> None:
    build_dir, _ = engine.new_build(f"finish-{fmt}")
    shutil.copytree(prepared, build_dir, dirs_exist_ok=True)
    for path in [build_dir, *build_dir.rglob("*")]:
        os.chown(path, pwd.getpwnam(UNPRIVILEGED_USER).pw_uid, -1, follow_symlinks=False)
    out = new_build_on(build_dir, tmpfs("out", "4m"))[1]
    result = engine.run("finish", blob_spec(closure, blob_dir, format=fmt),
                        build_dir=build_dir, out=out)
    line = error_line(result.stderr)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""  # no image path for a driver to pick up
    if fmt == "raw":
        # A raw image is made in place in $out: its root filesystem does not fit there.
        assert line.startswith("error: finish: root filesystem: writing the tree"), line
        assert "No space left on device" in result.stderr
        # The build VM's disk is untouched.
        assert (build_dir / "nixos.raw").read_bytes() == (prepared / "nixos.raw").read_bytes()
    else:
        assert line.startswith("error: finish: command failed (exit 1): qemu-img convert "), line
        assert "No space left on device" in result.stderr
    assert_no_output(out)


def start_prepare(spec: dict[str, Any], base: Path,
                  path_first: Path | None = None) -> tuple[subprocess.Popen[str], Path, Path]:
    build_dir, out = base / "build", base / "out"
    build_dir.mkdir()
    (base / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(REPO), "out": str(out)}
    if path_first is not None:
        env["PATH"] = f"{path_first}:{env['PATH']}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "make_disk_image", "prepare", str(base / "spec.json")],
        cwd=build_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, build_dir, out


def slow_mke2fs(bin_dir: Path) -> Path:
    """mke2fs that waits before it runs: prepare's mke2fs (an almost empty filesystem
    since the build VM's root holds no closure) would otherwise often end before the
    test sees it. The waiting process is named mke2fs, as the real one would be."""
    bin_dir.mkdir()
    real = shutil.which("mke2fs")
    assert real is not None
    wrapper = bin_dir / "mke2fs"
    wrapper.write_text(f"#!/bin/sh\nsleep 30\nexec {real} \"$@\"\n")
    wrapper.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_mke2fs(closure: Closure, blob_dir: Path, tmp_path: Path,
                              signum: signal.Signals) -> None:
    # With the bootloader to install, prepare makes the build VM's root filesystem.
    proc, build_dir, out = start_prepare(blob_spec(closure, blob_dir, installBootLoader=True),
                                         tmp_path, slow_mke2fs(tmp_path / "bin"))
    mke2fs = wait_for_child(proc, "mke2fs")
    # Held in the middle of its work, so the signal surely finds it running.
    os.kill(mke2fs, signal.SIGSTOP)
    try:
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if Path(f"/proc/{mke2fs}").exists():
            os.kill(mke2fs, signal.SIGKILL)
    line = error_line(stderr)
    assert proc.returncode == 1, stderr
    assert line == f"error: prepare: interrupted by {signum.name}; what it had written is removed"
    # Killed by prepare; after SIGINT, subprocess leaves the reaping to whoever inherits
    # the child, so allow for that.
    for _ in range(200):
        if not Path(f"/proc/{mke2fs}").exists():
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{mke2fs}").exists(), "mke2fs outlived prepare"
    assert list(build_dir.glob("nixos.raw*")) == []
    assert [p.name for p in build_dir.iterdir() if p.name.startswith("mdi-")] == []
    assert_no_output(out)


def test_traceback_only_with_mdi_debug(closure: Closure, unprivileged_pkg: Path) -> None:
    """An unexpected exception (here: the build directory is not writable) is one line."""
    tmp_path = world_readable_dir("mdi-fault-ro-")
    spec = base_spec(closure, installBootLoader=False)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    build_dir = tmp_path / "ro"
    build_dir.mkdir()
    build_dir.chmod(0o555)
    # The package as the build user can read it (a checkout under /root it cannot).
    argv = ["runuser", "-u", UNPRIVILEGED_USER, "--", "env", f"PYTHONPATH={unprivileged_pkg}",
            f"out={tmp_path / 'out'}", "/usr/bin/python3", "-m", "make_disk_image", "prepare",
            str(tmp_path / "spec.json")]
    (tmp_path / "spec.json").chmod(0o644)
    quiet = subprocess.run(argv, cwd=build_dir, capture_output=True, text=True)
    line = error_line(quiet.stderr)
    assert quiet.returncode == 1
    assert line.startswith("error: prepare: Permission denied (") and str(build_dir) in line
    debug = subprocess.run([*argv[:5], "MDI_DEBUG=1", *argv[5:]], cwd=build_dir,
                           capture_output=True, text=True)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    # The same one line last (but for the temporary directory's random name).
    assert debug.stderr.splitlines()[-1].rsplit("/", 1)[0] == line.rsplit("/", 1)[0]
    shutil.rmtree(tmp_path)


@pytest.fixture
def unreadable_store_path(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A store path of its own (so no other test sees it) with one file made unreadable."""
    expr = tmp_path / "path.nix"
    expr.write_text(f'''derivation {{
      name = "mdi-fault-unreadable";
      system = builtins.currentSystem;
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      args = [ "-c" "mkdir -p $out/share; echo data > $out/share/file; echo {uuid.uuid4()}" ];
    }}''')
    path = subprocess.run(["nix-build", "--no-out-link", str(expr)], check=True,
                          capture_output=True, text=True).stdout.strip()
    victim = Path(path) / "share/file"
    victim.chmod(0)
    yield path, victim
    victim.chmod(0o444)
    subprocess.run(["nix-store", "--delete", path], capture_output=True, check=False)


def test_unreadable_store_file(closure: Closure, engine: Engine,
                               unreadable_store_path: tuple[str, Path]) -> None:
    path, victim = unreadable_store_path
    result = engine.run("prepare", base_spec(closure, installBootLoader=False,
                                             additionalPaths=[path]))
    line = error_line(result.stderr)
    assert result.returncode == 1
    assert line == (f"error: staging: cannot read {victim}: Permission denied; make it "
                    "readable by the build user (or remove it from the image)")
    assert "mke2fs" not in result.stderr  # found before the slow work
    assert list(result.build_dir.glob("nixos.raw*")) == []
    assert_no_output(result.out)


def test_failing_post_vm(closure: Closure, tmp_path: Path) -> None:
    """`build` of a store-only image (no VM): postVM's failure fails it, $out goes."""
    spec = base_spec(closure, partitionTableType="none", onlyNixStore=True,
                     installBootLoader=False, copyChannel=False, additionalSpace="1M",
                     postVM='echo "postVM saw $diskImage" >&2; exit 3')
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "make_disk_image", "build",
                           str(tmp_path / "spec.json"), "--out", str(out)],
                          env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)},
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert error_line(proc.stderr) == "error: postVM: the postVM script exited 3"
    assert f"postVM saw {out}/nixos.img" in proc.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["spec.json"]  # build dir removed too
