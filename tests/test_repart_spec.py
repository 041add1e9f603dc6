"""The module's JSON: options read as nixpkgs names them, errors naming the option."""

from __future__ import annotations

import uuid

import pytest

from make_disk_image.repart import spec
from make_disk_image.repart.spec import SpecError

PART = {"10-root": {"repartConfig": {"Type": "root"}}}


def test_defaults_and_names() -> None:
    s = spec.from_json({"name": "img", "version": "1.2", "seed": str(uuid.UUID(int=7)),
                        "partitions": {**PART, "20-s": {"repartConfig": {"Type": "usr"},
                                                        "stripNixStorePrefix": True}},
                        "mkfsOptions": {"vfat": ["-S 512", "-c"]}})
    assert s.image_file_basename == "img_1.2" and s.sector_size == 512
    assert s.partitions["10-root"].nix_store_prefix == "/nix/store"
    assert s.partitions["20-s"].nix_store_prefix == "/"
    assert s.mkfs_options == {"vfat": ("-S", "512", "-c")}


@pytest.mark.parametrize(("data", "message"), [
    ({"partitions": PART}, "image.repart.name"),
    ({"name": "x", "partitions": {}}, "image.repart.partitions"),
    ({"name": "x", "seed": "nope", "partitions": PART}, "image.repart.seed"),
    ({"name": "x", "format": "iso", "partitions": PART}, "makeDiskImage.repart.format"),
    ({"name": "x", "compression": {"enable": True, "algorithm": "lz4"}, "partitions": PART},
     "compression.algorithm"),
    ({"name": "x", "partitions": {"a": {"repartConfig": {"Type": "root"},
                                        "contents": {"rel": {"source": "/x"}}}}},
     "contents.\"rel\""),
])
def test_errors_name_the_option(data: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec.from_json(data)
