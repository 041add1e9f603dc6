"""Ways to fill an ext4 filesystem with `mke2fs -d`: from a directory, from a tar
stream (a file, a pipe, the engine's tarstream, Python's tarfile), and without checksums
then `tune2fs -O metadata_csum`; each timed and checked with `e2fsck -fn`."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from engine_cli import REPO
from measuring import run, stopwatch

# Fixed so runs are comparable and mke2fs output is reproducible.
FS_UUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"
SOURCE_DATE_EPOCH = "1"


def mkfs_variants(
    root: Path, img: Path, size_mib: int, tar_path: Path
) -> dict[str, Callable[[], None]]:
    """Each way to make `img` an ext4 filesystem of `size_mib` holding `root` (or its tar
    file at `tar_path`), by what it runs."""
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    common = ["-q", "-F", "-t", "ext4", "-b", "4096", "-U", FS_UUID, "-E", f"hash_seed={FS_UUID}"]
    mkfs_dir = ["mke2fs", *common, "-d", str(root), str(img), f"{size_mib}M"]
    mkfs_stdin = ["mke2fs", *common, "-d", "-", str(img), f"{size_mib}M"]

    def from_dir() -> None:
        run(mkfs_dir, env=env)

    def from_tar_file() -> None:
        with open(tar_path, "rb") as stream:
            run(mkfs_stdin, stdin=stream, env=env)

    def from_tar_pipe() -> None:
        tar_cmd = subprocess.Popen(["tar", "-C", root, "-cf", "-", "."], stdout=subprocess.PIPE)
        run(mkfs_stdin, stdin=tar_cmd.stdout, env=env)
        tar_cmd.wait()

    def from_engine_stream() -> None:
        # What the engine does: tarstream (tarfile headers, sendfile bodies) into a pipe.
        import threading

        sys.path.insert(0, str(REPO))
        from make_disk_image.staging import Tree
        from make_disk_image.tarstream import write_tar

        tree = Tree()
        tree.add_host(root, "")
        entries = tree.ordered()
        read_fd, write_fd = os.pipe()

        def feed() -> None:
            try:
                write_tar(entries, write_fd)
            finally:
                os.close(write_fd)

        feeder = threading.Thread(target=feed)
        feeder.start()
        with os.fdopen(read_fd, "rb") as stdin:
            run(mkfs_stdin, stdin=stdin, env=env)
        feeder.join()

    def from_python_tar() -> None:
        # The engine's stream before tarstream: Python's tarfile copying file bodies.
        proc = subprocess.Popen(mkfs_stdin, stdin=subprocess.PIPE, env=env)
        assert proc.stdin is not None
        with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(root, arcname=".")
        proc.stdin.close()
        if proc.wait() != 0:
            raise RuntimeError("mke2fs -d - failed")

    def without_csum_then_tune2fs() -> None:
        run(["mke2fs", *common, "-O", "^metadata_csum", "-d", root, img, f"{size_mib}M"], env=env)
        run(["tune2fs", "-O", "metadata_csum", img], env=env)
        subprocess.run(["e2fsck", "-fyD", img], capture_output=True, check=False, env=env)

    return {
        "mke2fs -d DIR": from_dir,
        "mke2fs -d - < tar file": from_tar_file,
        "tar -c DIR | mke2fs -d -": from_tar_pipe,
        "engine's tarstream (sendfile) | mke2fs -d -": from_engine_stream,
        "python tarfile | mke2fs -d - (the engine's stream before)": from_python_tar,
        "mke2fs -O ^metadata_csum -d DIR; tune2fs -O metadata_csum; e2fsck -fyD": (
            without_csum_then_tune2fs
        ),
    }


def bench_mkfs(work: Path, root: Path, size_mib: int, repeat: int) -> None:
    """Each variant `repeat` times, best time shown (page cache warm for all)."""
    img = work / "mkfs.img"
    tar_path = work / "root.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname=".")
    for name, variant in mkfs_variants(root, img, size_mib, tar_path).items():
        times = []
        for _ in range(repeat):
            img.unlink(missing_ok=True)
            with stopwatch() as elapsed:
                variant()
            times.append(elapsed())
        verdict = subprocess.run(["e2fsck", "-fn", img], capture_output=True, check=False)
        fsck = "clean" if verdict.returncode == 0 else f"e2fsck -fn exit {verdict.returncode}"
        print(f"  {name:<72} {min(times):6.1f} s  ({fsck})", flush=True)
    img.unlink(missing_ok=True)
    tar_path.unlink()
