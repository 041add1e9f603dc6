"""The image's Nix database: the closure registered as valid, as nixos-install leaves it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from make_disk_image import process
from make_disk_image.process import StepError

STEP = "nix database"
# Files of nix/var/nix/db that belong in the image. `big-lock` and the 8 MiB `reserved`
# file are recreated by Nix when it opens the store.
IMAGE_DB_FILES = ("db.sqlite", "schema")


def make_db(closure_info: Path, work: Path, *, registration_time: int | None) -> dict[str, Path]:
    """Load closureInfo's registration into a fresh store under `work`, return its db files.

    `nix-store --store DIR --load-db` is the same registration nixos-install performs
    with `nix-env --store`. When `registration_time` is set, every path's registration
    time is set to it so that the database, and the image, are reproducible.
    """
    registration = closure_info / "registration"
    if not registration.is_file():
        raise StepError(
            STEP,
            f"closureInfo: {closure_info} has no registration file; pass the "
            "output of pkgs.closureInfo",
        )
    store_root = work / "nix-db-root"
    store_root.mkdir(parents=True, exist_ok=True)
    with registration.open("rb") as reg:
        process.run(
            ["nix-store", "--store", store_root, "--load-db"],
            # A registration that does not load is closureInfo's fault: name it.
            step=f"{STEP} from closureInfo {registration}",
            stdin=reg,
            env={"HOME": str(work), "NIX_REMOTE": ""},
        )
    db_dir = store_root / "nix/var/nix/db"
    db_path = db_dir / "db.sqlite"
    if registration_time is not None:
        _fix_registration_time(db_path, registration_time)
    return {name: db_dir / name for name in IMAGE_DB_FILES}


def _fix_registration_time(db_path: Path, when: int) -> None:
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            conn.execute("UPDATE ValidPaths SET registrationTime = ?", (when,))
        # Fold the write-ahead log back so the image holds one self-contained file.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        leftover = db_path.with_name(db_path.name + suffix)
        if leftover.exists() and leftover.stat().st_size == 0:
            leftover.unlink()
