"""Sizes and durations as operators write them: `512MiB`, `2GiB`, `8s`, `500ms`."""

from __future__ import annotations

import re

from drivers.volumes._errors import VolumeError

_SIZE = re.compile(r"^(\d+)(B|KiB|MiB|GiB|TiB)?$")
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0}
SECTOR = 512


def parse_size(text: str) -> int:
    """Bytes from "10GiB"; a positive multiple of 512 bytes, or VolumeError."""
    match = _SIZE.match(text.strip())
    if not match:
        raise VolumeError(f"{text!r} is not a size (like 512MiB or 2GiB)")
    size = int(match.group(1)) * _UNITS[match.group(2) or "B"]
    if size <= 0 or size % SECTOR:
        raise VolumeError(f"{text!r}: a volume size must be a positive multiple of {SECTOR} bytes")
    return size


def parse_seconds(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise VolumeError(f"{text!r} is not a duration (like 8s or 500ms)")
    return float(match.group(1)) * _SECONDS[match.group(2)]
