"""The stand-in's closureInfo builder: nixpkgs' closure-info.nix does the same with jq.

Reads the `closure` graph that Nix exported (exportReferencesGraph with structured
attributes) and writes store-paths, registration (nix-store --load-db format) and
total-nar-size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def main() -> None:
    build_top = Path(os.environ.get("NIX_BUILD_TOP", "."))
    attrs_file = Path(os.environ.get("NIX_ATTRS_JSON_FILE", build_top / ".attrs.json"))
    attrs = json.loads(attrs_file.read_text())
    out = Path(attrs["outputs"]["out"])
    closure = sorted(attrs.get("closure", []), key=lambda info: str(info["path"]))

    out.mkdir()
    (out / "total-nar-size").write_text(f"{sum(int(info['narSize']) for info in closure)}\n")
    (out / "store-paths").write_text("".join(f"{info['path']}\n" for info in closure))
    registration: list[str] = []
    for info in closure:
        registration += [info["path"], info["narHash"], str(info["narSize"]), ""]
        registration += [str(len(info["references"]))] + sorted(info["references"])
    (out / "registration").write_text("".join(f"{line}\n" for line in registration))


if __name__ == "__main__":
    main()
