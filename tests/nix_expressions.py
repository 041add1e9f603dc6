"""Python values as Nix expressions, for the tests that call default.nix through
`nix-instantiate -E`."""

from __future__ import annotations

import json
from typing import Any


class NixPath(str):
    """A path literal in the Nix call (`./x`); the engine's spec has its store path."""


def nix(value: Any) -> str:
    """A Python value as the Nix expression of the same value."""
    if isinstance(value, NixPath):
        return f"./{value}"
    if value is None or isinstance(value, (bool, int)):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value).replace("${", "\\${")
    if isinstance(value, list):
        return "[ " + " ".join(f"({nix(v)})" for v in value) + " ]"
    return "{ " + " ".join(f"{k} = {nix(v)};" for k, v in value.items()) + " }"
