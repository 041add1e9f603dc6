"""`compression`: how a store image (fsType erofs, squashfs) is compressed.

The choices are interface.json's (fsTypes' `compressions`, each named as its tool names
it; "none" stores the bytes as they are), checked by Nix and spec.py. Which of them the
installed tool was built with is known only here: each such filesystem's module names
the help command whose output lists its compressors (`compressor_help`), read before
any slow work.
"""

from __future__ import annotations

import re

from make_disk_image import process
from make_disk_image.filesystems import FILESYSTEMS, Filesystem
from make_disk_image.process import StepError

STEP = "compression"
NONE = "none"


def chosen(fs: Filesystem, compression: str | None) -> str | None:
    """`compression`, or the fsType's default when it is None."""
    return compression or fs.interface.default_compression


def available(fs: Filesystem) -> set[str]:
    """The compressions the installed tool for `fs` lists, "none" included."""
    if fs.compressor_help is None:
        return set()
    argv, marker = fs.compressor_help
    result = process.run(list(argv), step=STEP, ok_returncodes=(0, 1))
    text = (result.stdout + result.stderr).decode(errors="replace")
    found = re.search(re.escape(marker) + r"[^:\n]*:(.*)", text, re.I | re.S)
    listed = found.group(1) if found else ""
    return {NONE} | {c for c in fs.interface.compressions
                     if re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", listed)}


def check_available(fs_type: str, compression: str | None) -> None:
    """Refuse a compression the installed tool was built without, before any work
    (None: the fsType's default)."""
    fs = FILESYSTEMS[fs_type]
    wanted = chosen(fs, compression)
    if wanted is None or wanted == NONE:
        return
    have = available(fs)
    if wanted not in have:
        assert fs.compressor_help is not None
        raise StepError(
            STEP,
            f'argument `compression`: "{wanted}" is not among the compressors this '
            f"{fs.compressor_help[0][0]} was built with ({', '.join(sorted(have))}); "
            "choose one of those",
        )
