"""Where the VM runner keeps what it derives from its inputs (initramfs, kernel ELF)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger("make_disk_image")


def write_atomically(target: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    home = Path(os.path.expanduser("~"))
    base = os.environ.get("XDG_CACHE_HOME") or str(home / ".cache")
    wanted = Path(base) / "make-disk-image"
    try:
        # Never create a missing HOME: a Nix builder's /homeless-shelter must stay
        # absent, or every later build on the machine fails.
        if not os.environ.get("XDG_CACHE_HOME") and not home.is_dir():
            raise OSError(f"HOME {home} does not exist")
        wanted.mkdir(parents=True, exist_ok=True)
        if os.access(wanted, os.W_OK):
            return wanted
    except OSError:
        pass
    # Nix builders have HOME=/homeless-shelter; keep the cache per user in TMPDIR then.
    fallback = Path(tempfile.gettempdir()) / f"make-disk-image-cache-{os.getuid()}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    logger.debug("cache directory %s is not writable, using %s", wanted, fallback)
    return fallback
