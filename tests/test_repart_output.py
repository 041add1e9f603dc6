"""Split names (repart.d's SplitName= specifiers) and repart-output.json's records."""

from __future__ import annotations

import uuid
from pathlib import Path

from make_disk_image.repart import definitions, output, placement
from make_disk_image.repart.build import Built, Partition


def _partition(**config: str) -> Partition:
    d = definitions.parse("20-root", {"Type": "root", **config}, "x86-64")
    return Partition(d, 2, uuid.UUID(int=5), "root", uuid.UUID(int=6),
                     placement.Placed(1 << 20, 8 << 20), None)


def test_split_names() -> None:
    assert output.split_name(_partition()) == "root-x86-64"
    assert output.split_name(_partition(SplitName="-")) is None
    assert output.split_name(_partition(SplitName="%t.%n.%l")) == "root-x86-64.2.root"
    assert output.split_name(_partition(SplitName="%U")) == str(uuid.UUID(int=5))


def test_record_fields_as_repart_writes_them() -> None:
    p = _partition()
    built = Built(Path("/x/img.raw"), uuid.UUID(int=1), 512, (p,))
    record = output._record(built, p, Path("/out/img.raw"), None)
    assert record == {
        "type": "root-x86-64", "label": "root", "uuid": str(uuid.UUID(int=5)),
        "file": "repart.d/20-root.conf", "node": "img.raw2", "offset": 1 << 20,
        "old_size": 0, "raw_size": 8 << 20, "old_padding": 0, "raw_padding": 0,
        "activity": "create"}
