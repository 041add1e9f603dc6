"""Small pure helpers: size parsing and the reference's rounding."""

from __future__ import annotations

import math
import re

_IEC_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([KMGTPEZY]?)\s*$")
_IEC_POWER = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6, "Z": 7, "Y": 8}


def parse_iec(value: str | int) -> int:
    """Bytes for a size as `numfmt --from=iec` reads it ("512M", "1.5K", "100").

    Like numfmt: one upper-case suffix, powers of 1024, fractions rounded away from zero.
    """
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value
    match = _IEC_RE.match(value)
    if not match:
        raise ValueError(
            f'"{value}" is not a size numfmt --from=iec reads; write it like "512M" or "2G" '
            "(suffixes K, M, G, T; no 'i', no lower case)"
        )
    number, suffix = match.groups()
    factor: int = 1024 ** _IEC_POWER[suffix]
    if "." in number:
        return math.ceil(float(number) * factor)
    return int(number) * factor


def round_up_one_unit(value: int, unit: int) -> int:
    """The reference's round_to_nearest: (x / m + 1) * m, one unit up even when aligned."""
    return (value // unit + 1) * unit
