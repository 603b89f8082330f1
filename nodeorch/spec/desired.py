"""The desired-state file, desired.toml: loading, validation and its digest.

The file is refused as a whole when anything in it is wrong, with the file, the line or key, and
what is wrong; a running agent keeps its last good desired state. The digest (SHA-256 of the
file's bytes) goes into the node document, so nodes can tell when their files differ.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from nodeorch.spec.service_spec import ServiceSpec, parse_services
from nodeorch.spec.toml_tables import ConfigFileError, find_line, read_config_file
from nodeorch.spec.volume_spec import VolumeSpec, parse_volumes

_TOP_KEYS = {"revision", "service", "volume"}


@dataclass(frozen=True, slots=True)
class DesiredState:
    revision: int
    digest: str
    services: tuple[ServiceSpec, ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()
    """Every volume the cluster keeps, per-slot ones expanded (`db-0`, `db-1`, ...)."""


@dataclass(frozen=True, slots=True)
class DesiredStatus:
    """The desired state in force on a node, and why the file on disk was refused, if it was."""

    state: DesiredState | None
    error: str = ""


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def load_desired(path: Path) -> DesiredState:
    return parse_desired(read_config_file(path), path)


def parse_desired(data: bytes, path: Path | str = "desired.toml") -> DesiredState:
    path = Path(path)
    try:
        text = data.decode()
    except UnicodeDecodeError as error:
        raise ConfigFileError(path, f"not UTF-8 text (byte {error.start})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigFileError(path, f"not valid TOML: {error}") from None
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigFileError(path, f"unknown key (expected {', '.join(sorted(_TOP_KEYS))})",
                                  key=key, line=find_line(text, "", key))
    revision = raw.get("revision")
    if type(revision) is not int or revision < 0:
        raise ConfigFileError(path, "must be a non-negative integer, bumped with every change",
                              key="revision", line=find_line(text, "", "revision"))
    services = raw.get("service", [])
    volumes = raw.get("volume", [])
    for kind, items in (("service", services), ("volume", volumes)):
        if type(items) is not list or any(type(i) is not dict for i in items):
            raise ConfigFileError(path, f"must be an array of tables: [[{kind}]]", key=kind)
    parsed = parse_services(path, text, services)
    return DesiredState(revision, digest_of(data), parsed, parse_volumes(path, text, volumes, parsed))
